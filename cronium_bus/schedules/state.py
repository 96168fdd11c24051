"""The fold of a schedule's events into what is known of it: its spec, whether it fires, its
fires (started, skipped with the reason, queued) and the counters, which come from the events
(runs, successes, failures, skipped fires).

Safe on an at-least-once stream: one outcome per fire (the first event of a fire wins, a
queued fire may then be started), one end per run.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Literal

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
    """By fire time in milliseconds, in order of arrival."""
    next_at: datetime | None = None

    def _ended(self, status: str) -> int:
        return sum(1 for f in self.fires.values() if f.status == status)

    @property
    def runs(self) -> int:
        """Fires that started a run."""
        return sum(1 for f in self.fires.values() if f.run_id is not None)

    @property
    def successes(self) -> int:
        """Runs that succeeded."""
        return self._ended("succeeded")

    @property
    def failures(self) -> int:
        """Runs that ended otherwise."""
        return sum(1 for f in self.fires.values() if f.status not in (None, "succeeded"))

    @property
    def skipped(self) -> int:
        """Fires that started nothing."""
        return sum(1 for f in self.fires.values() if f.skipped is not None)

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


def fold_schedule(events: Iterable[Event]) -> ScheduleState | None:
    """Fold one schedule's events (stream order); ``None`` if it was never created."""
    state: ScheduleState | None = None
    run_status: dict[str, str] = {}
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
            run_status.setdefault(event.run_id, event.status)
    if state is not None:
        for fire in state.fires.values():
            if fire.run_id is not None:
                fire.status = run_status.get(fire.run_id)
    return state


def _fire(
    state: ScheduleState, event: ScheduleFired | ScheduleFireSkipped | ScheduleFireQueued
) -> None:
    key = _key(event.fire_at)
    fire = state.fires.get(key)
    if event.next_at is not None:
        state.next_at = event.next_at
    if fire is None:
        fire = state.fires[key] = Fire(fire_at=event.fire_at)
    elif not (fire.queued and fire.run_id is None and isinstance(event, ScheduleFired)):
        return  # one outcome per fire (a queued one may still start)
    if isinstance(event, ScheduleFired):
        fire.run_id = event.run_id
    elif isinstance(event, ScheduleFireSkipped):
        fire.skipped = event.reason
    else:
        fire.queued = True
