"""The fold of a schedule's events into what is known of it: its spec, whether it fires, its
fires (started, skipped with the reason, queued) and the counters, which come from the events
(runs, successes, failures, skipped fires).

Safe on an at-least-once stream: one outcome per fire (the first event of a fire wins, a
queued fire may then be started), one end per run.

**Resumable and bounded**: ``fold_schedule(later, start=fold_schedule(earlier))`` is
``fold_schedule(earlier + later)``, so the scheduler keeps the fold as a snapshot and folds
only what came after it (the stream's events age out; a schedule lives on). The counters are
kept as numbers, and only the latest :data:`MAX_FIRES` settled fires are kept (with every fire
still queued or running); a fire at or before the newest one let go counts as decided.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Final, Literal

import msgspec

from cronium_bus.events import (
    Event,
    ScheduleCreated,
    ScheduleDeleted,
    ScheduleFired,
    ScheduleFireQueued,
    ScheduleFireSkipped,
    SchedulePaused,
    ScheduleResumed,
    ScheduleRunEnded,
    ScheduleSpec,
    ScheduleUpdated,
)

ScheduleStatus = Literal["active", "paused", "deleted"]
MAX_FIRES: Final = 200
"""Settled fires kept in a schedule's state (``schedule show`` lists the latest 100)."""
MAX_KEPT: Final = 2000
"""Fires kept at most, queued and running ones included (``overlap: allow`` runs at once)."""


class Fire(msgspec.Struct, kw_only=True):
    """One fire: what it started, or why not."""

    fire_at: datetime
    run_id: str | None = None
    skipped: str | None = None
    queued: bool = False
    status: str | None = None
    """The run's final status, once it ended."""


class ScheduleState(msgspec.Struct, kw_only=True):
    """What is known of one schedule."""

    schedule_id: str
    user: str
    spec: ScheduleSpec
    version: str
    """The event id of the spec in force (fires of an older spec are ignored)."""
    created_at: datetime
    status: ScheduleStatus = "active"
    reason: str = ""
    changed_at: datetime | None = None
    fires: dict[int, Fire] = msgspec.field(default_factory=dict)
    """By fire time in milliseconds, in order of arrival (the latest; see ``let_go``)."""
    let_go: int = 0
    """The newest fire time (ms) no longer kept: a fire at or before it was decided."""
    ends: dict[str, str] = msgspec.field(default_factory=dict)
    """Run ends seen before the fire that started the run (run id → status)."""
    next_at: datetime | None = None
    runs: int = 0
    """Fires that started a run."""
    successes: int = 0
    """Runs that succeeded."""
    failures: int = 0
    """Runs that ended otherwise."""
    skipped: int = 0
    """Fires that started nothing."""

    def decided(self, key: int) -> bool:
        """Whether the fire at ``key`` (ms) has an outcome already."""
        return key in self.fires or key <= self.let_go

    def queued(self) -> list[Fire]:
        """Fires waiting for the previous run (oldest first)."""
        return [f for f in self.fires.values() if f.queued and f.run_id is None]

    def last_run(self) -> Fire | None:
        """The latest fire that started a run."""
        runs = [f for f in self.fires.values() if f.run_id is not None]
        return runs[-1] if runs else None

    def last_outcome(self) -> str:
        """The latest run's status (running while it has not ended), or ``-``."""
        last = self.last_run()
        if last is None:
            return "-"
        return last.status or "running"


def _key(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def fold_schedule(
    events: Iterable[Event], start: ScheduleState | None = None
) -> ScheduleState | None:
    """Fold one schedule's events (stream order) onto ``start`` (the fold of the events before
    them; it is changed in place); ``None`` if it was never created."""
    state = start
    for event in events:
        if isinstance(event, ScheduleCreated):
            if state is None or state.status == "deleted":
                state = ScheduleState(
                    schedule_id=event.execution_id,
                    user=event.user,
                    spec=event.spec,
                    version=event.event_id,
                    created_at=event.time,
                )
            continue
        if state is None or event.user != state.user:
            continue
        if isinstance(event, ScheduleUpdated):
            state.spec, state.version, state.changed_at = event.spec, event.event_id, event.time
            state.status, state.reason = "active", ""
        elif isinstance(event, SchedulePaused) and state.status == "active":
            state.status, state.reason, state.changed_at = "paused", event.reason, event.time
        elif isinstance(event, ScheduleResumed) and state.status == "paused":
            state.status, state.reason, state.changed_at = "active", "", event.time
        elif isinstance(event, ScheduleDeleted):
            state.status, state.reason, state.changed_at = "deleted", event.reason, event.time
        elif isinstance(event, ScheduleFired | ScheduleFireSkipped | ScheduleFireQueued):
            _fire(state, event)
        elif isinstance(event, ScheduleRunEnded):
            _ended(state, event.run_id, event.status)
    return state


def _fire(
    state: ScheduleState, event: ScheduleFired | ScheduleFireSkipped | ScheduleFireQueued
) -> None:
    key = _key(event.fire_at)
    fire = state.fires.get(key)
    if event.next_at is not None:
        state.next_at = event.next_at
    if fire is None:
        if key <= state.let_go:
            return  # decided long ago (a late duplicate)
        fire = state.fires[key] = Fire(fire_at=event.fire_at)
    elif not (fire.queued and fire.run_id is None and isinstance(event, ScheduleFired)):
        return  # one outcome per fire (a queued one may still start)
    if isinstance(event, ScheduleFired):
        fire.run_id = event.run_id
        state.runs += 1
        early = state.ends.pop(event.run_id, None)
        if early is not None:
            _settle(state, fire, early)
    elif isinstance(event, ScheduleFireSkipped):
        fire.skipped = event.reason
        state.skipped += 1
    else:
        fire.queued = True
    _trim(state)


def _ended(state: ScheduleState, run_id: str, status: str) -> None:
    started = [fire for fire in state.fires.values() if fire.run_id == run_id]
    for fire in started:  # (two fires in one second share a run id)
        if fire.status is None:  # the first end of a run counts
            _settle(state, fire, status)
    if not started and run_id not in state.ends:
        state.ends[run_id] = status
        while len(state.ends) > MAX_FIRES:
            del state.ends[next(iter(state.ends))]


def _settle(state: ScheduleState, fire: Fire, status: str) -> None:
    fire.status = status
    if status == "succeeded":
        state.successes += 1
    else:
        state.failures += 1


def _trim(state: ScheduleState) -> None:
    """Let the oldest settled fires go past MAX_FIRES (and any past MAX_KEPT)."""
    if len(state.fires) <= MAX_FIRES:
        return
    excess = len(state.fires) - MAX_FIRES
    for key, fire in list(state.fires.items()):
        if excess <= 0:
            break
        waiting = fire.run_id is None and fire.queued
        running = fire.run_id is not None and fire.status is None
        if (waiting or running) and len(state.fires) <= MAX_KEPT:
            continue
        del state.fires[key]
        state.let_go = max(state.let_go, key)
        excess -= 1
