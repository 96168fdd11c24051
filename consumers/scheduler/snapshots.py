"""Schedules' folded state, kept as snapshots in the ``cronium_schedules`` bucket.

A schedule's events live in ``CRONIUM_EXEC`` like every execution's, and that stream ages them
out (``streams.exec_max_age``, 30 days): folding a schedule from its events alone would forget
a schedule once its ``schedule.created`` aged out, and would read every fire it ever had on
each new one. So the scheduler keeps, per schedule, the fold and the stream sequence it
reaches (key ``<owner>.<schedule id>``), and folds only the events after it
(:func:`cronium_bus.schedules.state.fold_schedule` resumes from a state).

A snapshot is a cache of a deterministic fold: any snapshot of any prefix of the events is
correct, so two schedulers writing at once need no coordination beyond not writing over a
newer one (``update`` with the revision read). The scheduler brings the snapshot up to date
after every change it publishes (not at the next read: a monthly cron's events would age out
first). A removed schedule's key is purged, so the bucket's subjects are the live schedules:
counting them is one request; a key created just after a removal purged it is found and
purged again by the same read. A snapshot that cannot be read is folded from the events left;
when nothing is left its key is purged (it could be neither shown nor removed). Only services write
the bucket (users have no JetStream API; admins are denied ``$KV.cronium_schedules.>``).
"""

from __future__ import annotations

import contextlib
from typing import Final

import msgspec
import nats.js.errors
import structlog
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from cronium_bus.events import AnyEvent
from cronium_bus.history import event_of, read_messages
from cronium_bus.schedules.state import ScheduleState, fold_schedule
from cronium_bus.subjects import EXEC_STREAM, SCHEDULES_BUCKET, exec_events

log = structlog.get_logger(__name__)
FORMAT: Final = 1
_PREFIX: Final = f"$KV.{SCHEDULES_BUCKET}."


class Snapshot(msgspec.Struct, kw_only=True):
    """The fold of a schedule's events up to stream sequence ``seq``."""

    format: int = FORMAT
    seq: int
    state: ScheduleState


class ScheduleStore:
    """Reads a schedule's state (snapshot, then the events after it) and keeps it current."""

    def __init__(self, js: JetStreamContext, *, max_bytes: int) -> None:
        self.js = js
        self.max_bytes = max_bytes
        self._kv: KeyValue | None = None

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.js.key_value(SCHEDULES_BUCKET)
        return self._kv

    async def state(self, owner: str, sid: str) -> ScheduleState | None:
        """The state of ``owner``'s schedule ``sid`` now (``None`` when it never existed); the
        snapshot is brought up to date when events came after it."""
        kv, key = await self._bucket(), f"{owner}.{sid}"
        entry = None
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            entry = await kv.get(key)
        snap = _decode(key, entry.value) if entry is not None and entry.value else None
        revision = entry.revision if entry is not None else None
        state = snap.state if snap is not None else None
        seq = snap.seq if snap is not None else 0
        for _ in range(3):  # bounded: a create may have raced a removal (see below)
            events, last = await self._after(owner, sid, seq)
            if last == seq:
                break
            state = fold_schedule(events, start=state)
            if state is None:
                break
            if state.status == "deleted":
                if revision is not None:  # a removed schedule keeps no key: keys are the live
                    await self.js.purge_stream(_stream(), subject=_PREFIX + key)
                break
            created, revision = revision is None, await self._save(kv, key, revision, last, state)
            seq = last
            if not created or revision is None:
                break
            # a key created where there was none may have landed just after another scheduler
            # removed the schedule (and purged its key): look once more past what it folded
        if state is None and snap is None and revision is not None:
            await self.js.purge_stream(_stream(), subject=_PREFIX + key)  # unreadable, unfoldable
        return state

    async def _after(self, owner: str, sid: str, seq: int) -> tuple[list[AnyEvent], int]:
        """The schedule's decodable events after stream sequence ``seq``, and the last
        sequence read (``seq`` when there are none)."""
        events: list[AnyEvent] = []
        last = seq
        subject = exec_events(sid, owner)
        async for msg in read_messages(self.js, EXEC_STREAM, subject, start_seq=seq + 1):
            last = msg.metadata.sequence.stream
            event = event_of(msg, max_bytes=self.max_bytes)
            if event is not None:
                events.append(event)
        return events, last

    async def _save(
        self, kv: KeyValue, key: str, revision: int | None, seq: int, state: ScheduleState
    ) -> int | None:
        """Write the snapshot over ``revision`` (``None``: where there is none); its new
        revision, or ``None`` when another scheduler wrote first (its snapshot is as good)."""
        value = msgspec.json.encode(Snapshot(seq=seq, state=state))
        try:
            if revision is None:
                return await kv.create(key, value)
            return await kv.update(key, value, last=revision)
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError):
            return None

    async def live(self, owner: str | None) -> list[tuple[str, str]]:
        """(owner, schedule id) of every schedule with a snapshot: ``owner``'s, or everyone's."""
        info = await self.js.stream_info(_stream(), subjects_filter=f"{_PREFIX}{owner or '*'}.*")
        out = []
        for subject in info.state.subjects or {}:
            who, _, sid = subject.removeprefix(_PREFIX).partition(".")
            out.append((who, sid))
        return sorted(out)


def _stream() -> str:
    return f"KV_{SCHEDULES_BUCKET}"


def _decode(key: str, value: bytes) -> Snapshot | None:
    """The snapshot in ``value``; ``None`` (fold from the events still in the stream) when it
    cannot be read. A change of :class:`ScheduleState` that old snapshots do not decode into
    must bump :data:`FORMAT` and read the old format here: a schedule whose events aged out
    lives only in its snapshot."""
    try:
        snap = msgspec.json.decode(value, type=Snapshot)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        reason = str(exc)
    else:
        reason = ""
    if reason:
        log.error("unreadable schedule snapshot: folding from the events", key=key, reason=reason)
        return None
    if snap.format != FORMAT:
        log.error("schedule snapshot of another format", key=key, format=snap.format)
        return None
    return snap
