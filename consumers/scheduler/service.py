"""The ``scheduler``: schedules on JetStream's own message scheduler, and nothing of its own
that keeps time.

- **Managing** (``cronium.ctl.schedules.<role>.<requester>.<action>``, request-reply): a user
  adds, pauses, resumes, removes, lists and shows their own schedules, an admin anyone's. Each
  change is an event (``schedule.created`` …) and the schedule message nats-server fires from
  (``cronium.sched.def.<owner>.<name>`` in ``CRONIUM_SCHED``) is written or purged to match.
- **Firing** (durable ``scheduler`` on ``cronium.sched.fire.>``): each fire nats-server appends
  becomes an ``execution.requested`` whose id is the schedule's id and the fire's second, plus
  ``schedule.fired`` — or ``schedule.fire_skipped`` with the reason (the previous run still
  runs, a missed fire, paused, past its end) or ``schedule.fire_queued``. The schedule pauses
  itself at ``max_runs``. A redelivered fire, two schedulers or a restart never start one fire
  twice: the run's request is looked up before it is published, and every event of a fire has
  a message id of its own.
- **Runs ending** (durable ``scheduler-runs`` on terminal events of ``sch-*`` executions):
  ``schedule.run_ended`` (the counters), and the next queued fire starts.

Missed fires: after downtime nats-server fires a schedule **once** for everything it missed, as
soon as it is back (measured: an ``@every 1s`` schedule down 6 s fired once on restart, then on
its interval). ``missed: once`` (the default) runs that fire; ``missed: skip`` skips it, seen as
late against the previous fire's ``Nats-Schedule-Next``. Fires that waited while no scheduler
ran are late against the clock: ``once`` runs only the newest of them, ``skip`` none.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from consumers.deadletter import dead_letter
from consumers.dispatcher.validate import validate_request
from consumers.scheduler.snapshots import ScheduleStore
from cronium_bus.authentic import decode_on
from cronium_bus.bus import Bus
from cronium_bus.codec import check_depth
from cronium_bus.errors import CroniumError, EventDecodeError
from cronium_bus.events import (
    ErrorInfo,
    Event,
    Requested,
    ScheduleCreated,
    ScheduleDeleted,
    ScheduleFired,
    ScheduleFireQueued,
    ScheduleFireSkipped,
    SchedulePaused,
    ScheduleRef,
    ScheduleResumed,
    ScheduleRunEnded,
    ScheduleSpec,
    ScheduleUpdated,
    utcnow,
)
from cronium_bus.health import Heartbeat
from cronium_bus.history import execution_state
from cronium_bus.ids import is_valid_id, new_id
from cronium_bus.lifecycle import Stopper
from cronium_bus.provision import provision
from cronium_bus.schedules import spec as specs
from cronium_bus.schedules.spec import ScheduleError
from cronium_bus.schedules.state import Fire, ScheduleState
from cronium_bus.subjects import EXEC_STREAM, SCHED_STREAM, exec_subject

log = structlog.get_logger(__name__)
DURABLE: Final = "scheduler"
RUNS_DURABLE: Final = "scheduler-runs"
CTL: Final = "cronium.ctl.schedules.>"
FIRES: Final = "cronium.sched.fire.>"
ENDINGS: Final = ("rejected", "succeeded", "failed", "timed_out", "cancelled", "lost", "partial")
MAX_QUEUED: Final = 10
MAX_BODY: Final = 1024 * 1024
MAX_SCHEDULES_LISTED: Final = 1000
MAX_CTL_AT_ONCE: Final = 16
"""Management requests served at once (one user's long list does not hold up the others;
changes to one schedule are serialized by its lock)."""


class _Add(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    spec: ScheduleSpec
    owner: str | None = None
    replace: bool = False


class _Named(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    owner: str | None = None


class _Owner(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    owner: str | None = None


class _FireBody(msgspec.Struct, frozen=True, kw_only=True):
    schedule_id: str
    version: str
    arm: bool = False


def _permission(message: str, hint: str = "") -> ScheduleError:
    error = ScheduleError(message, hint=hint)
    error.kind = "permission"
    return error


def _ms_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime.fromtimestamp(float(value), UTC)


class Scheduler:
    """Manages schedules, turns fires into runs and counts their outcomes."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.settings = bus.settings
        self._max = bus.settings.streams.max_msg_size
        self._locks: dict[str, asyncio.Lock] = {}
        self.store = ScheduleStore(bus.js, max_bytes=self._max)
        self._ctl_slots = asyncio.Semaphore(MAX_CTL_AT_ONCE)
        self._ctl_tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ reading

    async def state(self, owner: str, name: str) -> ScheduleState | None:
        """The schedule's state (``None`` when it never existed): its snapshot and the events
        after it (:mod:`consumers.scheduler.snapshots`)."""
        return await self.store.state(owner, specs.schedule_id(owner, name))

    def _envelope(self, owner: str, sid: str) -> dict[str, Any]:
        return {
            "event_id": new_id("ev"),
            "time": utcnow(),
            "execution_id": sid,
            "correlation_id": sid,
            "producer": self.bus.producer,
            "user": owner,
        }

    # ------------------------------------------------------------------ managing

    async def manage(self, subject: str, data: bytes) -> Any:
        """One management request; raises :class:`CroniumError` saying why when refused."""
        tokens = subject.split(".")
        if len(tokens) != 6 or tokens[3] not in ("user", "admin") or not is_valid_id(tokens[4]):
            raise ScheduleError(
                f"{subject[:200]!r} is not cronium.ctl.schedules.<user|admin>.<requester>.<action>"
            )
        role, requester, action = tokens[3], tokens[4], tokens[5]
        if len(data) > MAX_BODY:
            raise ScheduleError(f"request is {len(data):,} bytes, over {MAX_BODY:,}")
        try:
            check_depth(data)
        except EventDecodeError as exc:
            raise ScheduleError(exc.message, hint=exc.hint) from exc

        def owner_of(asked: str | None) -> str:
            if asked is None or asked == requester:
                return requester
            if role != "admin":
                raise _permission(
                    f"{requester} manages only their own schedules, not {asked[:64]}'s",
                    "drop --user",
                )
            if not is_valid_id(asked):
                raise ScheduleError(f"{asked[:64]!r} is not a user name")
            return asked

        try:
            if action == "add":
                add = msgspec.json.decode(data, type=_Add)
                return await self._add(owner_of(add.owner), add.spec, replace=add.replace)
            if action in ("pause", "resume", "rm", "show"):
                named = msgspec.json.decode(data, type=_Named)
                owner = owner_of(named.owner)
                handlers: dict[str, Callable[[str, str], Awaitable[Any]]] = {
                    "pause": self._pause,
                    "resume": self._resume,
                    "rm": self._rm,
                    "show": self._show,
                }
                return await handlers[action](owner, named.name)
            if action == "list":
                asked = msgspec.json.decode(data or b"{}", type=_Owner)
                everyone = role == "admin" and asked.owner == "*"
                return await self._list(None if everyone else owner_of(asked.owner))
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise ScheduleError(f"malformed {action} request: {exc}") from exc
        raise ScheduleError(
            f"unknown action {action[:40]!r}", hint="use add, pause, resume, rm, list or show"
        )

    def _lock(self, owner: str, name: str) -> asyncio.Lock:
        return self._locks.setdefault(f"{owner}/{name}", asyncio.Lock())

    @contextlib.asynccontextmanager
    async def _changing(self, owner: str, name: str) -> AsyncIterator[None]:
        """The schedule's lock; on leaving it, what was published meanwhile goes into the
        schedule's snapshot at once (not at the next read, which may come after the events
        aged out: a monthly cron, an ``--at`` far ahead, a removal)."""
        async with self._lock(owner, name):
            try:
                yield
            finally:
                try:
                    await self.state(owner, name)
                except (nats.errors.Error, OSError) as exc:
                    log.warning("schedule snapshot not brought up to date", owner=owner,
                                name=name, error=str(exc))  # fmt: skip

    async def _add(self, owner: str, spec: ScheduleSpec, *, replace: bool) -> dict[str, Any]:
        now = utcnow()
        specs.check(spec, now)
        request = validate_request(spec.request, self.settings)
        if isinstance(request, ErrorInfo):
            raise ScheduleError(f"the request is invalid: {request.message}", hint=request.hint)
        if spec.request.workflow is not None or spec.request.schedule is not None:
            raise ScheduleError("the request sets workflow or schedule (the service's)")
        # one owner's adds one at a time (here): the cap is counted with the previous one in
        async with self._lock(owner, "*"), self._changing(owner, spec.name):
            current = await self.state(owner, spec.name)
            sid = specs.schedule_id(owner, spec.name)
            live = current is not None and current.status != "deleted"
            if live and not replace:
                raise ScheduleError(
                    f"schedule {spec.name} exists",
                    hint="pass --replace to change it, or `cronium schedule rm` it first",
                )
            if not live:
                await self._below_cap(owner)
            ran = current.runs if live and current is not None else 0
            if spec.max_runs is not None and ran >= spec.max_runs:
                raise ScheduleError(
                    f"schedule {spec.name} ran {ran} runs already, max_runs is {spec.max_runs}",
                    hint="ask for a higher --max-runs, or `cronium schedule rm` it first",
                )
            env = self._envelope(owner, sid)
            event: Event = (
                ScheduleUpdated(**env, spec=spec) if live else ScheduleCreated(**env, spec=spec)
            )
            # the schedule message first: if nats-server refuses it, nothing was recorded
            try:
                await self._arm(owner, spec, event.event_id, start_now=False)
            except nats.js.errors.BadRequestError as exc:
                raise ScheduleError(
                    f"nats-server refused the schedule: {exc.description}",
                    hint="see `cronium schedule add --help` for the forms it takes",
                ) from exc
            await self.bus.publish(event)
        log.info("schedule saved", owner=owner, name=spec.name, replaced=live)
        return {"schedule_id": sid, "name": spec.name, "owner": owner, "replaced": live}

    async def _below_cap(self, owner: str) -> None:
        """Refuse a new schedule past ``limits.max_schedules_per_user`` for its owner."""
        cap = self.settings.limits.max_schedules_per_user
        live = await self._live_count(owner)
        if live >= cap:
            raise ScheduleError(
                f"{owner} has {live} schedules, the most a user may have",
                hint="remove one first (`cronium schedule rm`); the cap is "
                "limits.max_schedules_per_user",
            )

    async def _live_count(self, owner: str) -> int:
        """How many of ``owner``'s schedules exist (one look-up of the snapshot bucket)."""
        return len(await self._schedule_ids(owner))

    async def _schedule_ids(self, owner: str | None) -> set[tuple[str, str]]:
        """(owner, schedule id) of each schedule of ``owner`` (``None``: everyone's) that may
        exist: those with a snapshot, and those whose ``schedule.created`` is in the stream
        but not yet in a snapshot (made before snapshots were kept)."""
        ids = set(await self.store.live(owner))
        created = await self._subject_counts(f"cronium.exec.{owner or '*'}.*.schedule_created")
        deleted = await self._subject_counts(f"cronium.exec.{owner or '*'}.*.schedule_deleted")
        for subject, n in created.items():
            if n > deleted.get(subject.removesuffix("created") + "deleted", 0):
                tokens = subject.split(".")
                ids.add((tokens[2], tokens[3]))
        return ids

    async def _subject_counts(self, subjects: str) -> dict[str, int]:
        info = await self.bus.js.stream_info(EXEC_STREAM, subjects_filter=subjects)
        return dict(info.state.subjects or {})

    async def _arm(self, owner: str, spec: ScheduleSpec, version: str, *, start_now: bool) -> None:
        """Write the schedule message nats-server fires from (replacing the previous one)."""
        now = utcnow()
        before_start = spec.start is not None and spec.start > now and not start_now
        headers = specs.nats_headers(
            spec, specs.fire_subject(owner, spec.name), start_now=not before_start
        )
        body = _FireBody(
            schedule_id=specs.schedule_id(owner, spec.name), version=version, arm=before_start
        )
        await self.bus.js.publish(
            specs.def_subject(owner, spec.name), msgspec.json.encode(body), headers=headers
        )

    async def _disarm(self, owner: str, name: str) -> None:
        await self.bus.js.purge_stream(SCHED_STREAM, subject=specs.def_subject(owner, name))

    async def _existing(self, owner: str, name: str) -> ScheduleState:
        state = await self.state(owner, name) if is_valid_id(name) else None
        if state is None or state.status == "deleted":
            raise ScheduleError(f"no schedule {name[:64]!r}", hint="see `cronium schedule list`")
        return state

    async def _pause(self, owner: str, name: str, reason: str = "paused on request") -> str:
        async with self._changing(owner, name):
            state = await self._existing(owner, name)
            if state.status == "paused":
                return "already paused"
            await self._disarm(owner, name)
            await self.bus.publish(
                SchedulePaused(**self._envelope(owner, state.schedule_id), reason=reason)
            )
        return "paused"

    async def _resume(self, owner: str, name: str) -> str:
        async with self._changing(owner, name):
            state = await self._existing(owner, name)
            if state.status == "active":
                return "already active"
            spec = state.spec
            if spec.max_runs is not None and state.runs >= spec.max_runs:
                raise ScheduleError(
                    f"schedule {name} ran its {spec.max_runs} runs",
                    hint="replace it with a higher --max-runs (`schedule add --replace`)",
                )
            if spec.end is not None and spec.end <= utcnow():
                raise ScheduleError(f"schedule {name} ended at {spec.end.isoformat()}")
            if spec.at is not None and (state.runs > 0 or spec.at <= utcnow()):
                raise ScheduleError(
                    f"schedule {name} fires once, at {spec.at.isoformat()}, and that is past",
                    hint="add it again with a new --at (`schedule add --replace`)",
                )
            await self.bus.publish(ScheduleResumed(**self._envelope(owner, state.schedule_id)))
            await self._arm(owner, spec, state.version, start_now=False)
        return "resumed"

    async def _rm(self, owner: str, name: str) -> str:
        async with self._changing(owner, name):
            state = await self._existing(owner, name)
            await self._disarm(owner, name)
            await self.bus.publish(
                ScheduleDeleted(**self._envelope(owner, state.schedule_id), reason="removed")
            )
        return "removed"

    async def _show(self, owner: str, name: str) -> dict[str, Any]:
        return summary(await self._existing(owner, name), fires=True)

    async def _list(self, owner: str | None) -> list[dict[str, Any]]:
        out = []
        for who, sid in sorted(await self._schedule_ids(owner))[:MAX_SCHEDULES_LISTED]:
            state = await self.store.state(who, sid)
            if state is not None and state.status != "deleted":
                out.append(summary(state, fires=False))
        return sorted(out, key=lambda r: (r["owner"], r["name"]))

    # ------------------------------------------------------------------ firing

    async def on_fire(self, msg: Msg) -> None:
        """One fire nats-server appended; ack once its outcome is stored."""
        tokens = msg.subject.split(".")
        if len(tokens) != 5 or not (is_valid_id(tokens[3]) and is_valid_id(tokens[4])):
            await dead_letter(self.bus.js, DURABLE, msg, f"not a fire: {msg.subject[:200]!r}")
            return
        owner, name = tokens[3], tokens[4]
        try:
            body = msgspec.json.decode(msg.data, type=_FireBody)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            await dead_letter(self.bus.js, DURABLE, msg, f"not a fire body: {exc}")
            return
        fire_at = _ms_time(msg.metadata.timestamp)
        next_at = _next_header(msg)
        async with self._changing(owner, name):
            state = await self.state(owner, name)
            if (
                state is None
                or state.schedule_id != body.schedule_id
                or state.version != body.version
                or state.status == "deleted"
            ):
                await msg.ack()  # a fire of a removed or replaced schedule
                return
            if body.arm:  # its start came: from now on, fire as the spec says
                if state.status == "active":
                    await self._arm(owner, state.spec, state.version, start_now=True)
                await msg.ack()
                return
            await self._decide(msg, owner, state, fire_at, next_at)
        await msg.ack()

    async def _decide(
        self,
        msg: Msg,
        owner: str,
        state: ScheduleState,
        fire_at: datetime,
        next_at: datetime | None,
    ) -> None:
        spec = state.spec
        env = self._envelope(owner, state.schedule_id)
        key = int(fire_at.timestamp() * 1000)
        if state.decided(key):
            return  # this fire was handled (a redelivery)

        async def skip(reason: str) -> None:
            await self.bus.publish(
                ScheduleFireSkipped(**env, fire_at=fire_at, reason=reason, next_at=next_at)
            )
            log.info("fire skipped", schedule=spec.name, owner=owner, reason=reason)

        if state.status == "paused":
            await skip(f"paused ({state.reason})")
            return
        if spec.end is not None and fire_at > spec.end:
            await self._disarm(owner, spec.name)
            await self.bus.publish(SchedulePaused(**env, reason=f"ended at {spec.end.isoformat()}"))
            await skip("past the schedule's end")
            return
        late = await self._late(msg, state, fire_at)
        if late is not None:
            if spec.missed == "skip":
                await skip(f"missed ({late}); missed: skip")
                return
            if await self._newer_fire(msg, owner, spec.name):
                await skip(f"missed ({late}); missed: once runs only the latest")
                return
        previous = state.last_run()
        if (
            previous is not None
            and spec.overlap != "allow"
            and await self._running(previous, owner)
        ):
            if spec.overlap == "skip":
                await skip(f"the previous run {previous.run_id} is still running")
                return
            if len(state.queued()) >= MAX_QUEUED:
                await skip(f"{MAX_QUEUED} fires are already queued")
                return
            await self.bus.publish(ScheduleFireQueued(**env, fire_at=fire_at, next_at=next_at))
            return
        await self._start(owner, state, fire_at, next_at, queued=False)

    async def _late(self, msg: Msg, state: ScheduleState, fire_at: datetime) -> str | None:
        """Why a fire is late, if it is: it waited while no scheduler ran, or nats-server fired
        it when it came back (later than the previous fire's ``Nats-Schedule-Next`` said)."""
        spec = state.spec
        step = spec.every_s or 60.0
        # our own lag (a busy machine, a redelivery) is forgiven more than the server's,
        # which fires within milliseconds of when it said it would
        lag = timedelta(seconds=max(5.0, min(step / 2, 60.0)))
        drift = timedelta(seconds=max(1.5, min(step / 2, 60.0)))
        waited = utcnow() - fire_at
        if waited > lag:
            return f"fired at {fire_at:%H:%M:%S} UTC, seen {waited.total_seconds():.0f} s later"
        due = state.next_at
        if due is not None and fire_at - due > drift:
            return f"due at {due:%H:%M:%S} UTC, fired at {fire_at:%H:%M:%S} UTC"
        return None

    async def _newer_fire(self, msg: Msg, owner: str, name: str) -> bool:
        try:
            last = await self.bus.js.get_last_msg(SCHED_STREAM, specs.fire_subject(owner, name))
        except nats.js.errors.NotFoundError:
            return False
        return (last.seq or 0) > msg.metadata.sequence.stream

    async def _running(self, fire: Fire, owner: str) -> bool:
        if fire.status is not None or fire.run_id is None:
            return False
        state = await execution_state(self.bus.js, fire.run_id, max_bytes=self._max, owner=owner)
        return state is not None and not state.final

    async def _start(
        self,
        owner: str,
        state: ScheduleState,
        fire_at: datetime,
        next_at: datetime | None,
        *,
        queued: bool,
    ) -> None:
        spec = state.spec
        run = specs.run_id(state.schedule_id, fire_at, state.version)
        env = self._envelope(owner, state.schedule_id)
        subject = exec_subject(owner, run, "execution.requested")
        try:
            await self.bus.js.get_last_msg(EXEC_STREAM, subject)
        except nats.js.errors.NotFoundError:
            ref = ScheduleRef(name=spec.name, schedule_id=state.schedule_id, fire_at=fire_at)
            request = msgspec.structs.replace(spec.request, schedule=ref)
            await self.bus.publish(
                Requested(
                    **{**env, "execution_id": run, "correlation_id": run},
                    request=request,
                )
            )
        await self.bus.publish(
            ScheduleFired(**env, fire_at=fire_at, run_id=run, next_at=next_at, queued=queued)
        )
        log.info("fired", schedule=spec.name, owner=owner, run_id=run)
        if spec.at is not None:  # a one-shot: done once it fired
            await self._disarm(owner, spec.name)
            await self.bus.publish(
                SchedulePaused(**env, reason="fired once (--at)"),
                msg_id=f"{state.schedule_id}:at-done:{state.version}",
            )
        elif spec.max_runs is not None and state.runs + 1 >= spec.max_runs:
            await self._disarm(owner, spec.name)
            await self.bus.publish(
                SchedulePaused(**env, reason=f"max_runs {spec.max_runs} reached"),
                msg_id=f"{state.schedule_id}:max_runs:{state.version}",
            )

    # ------------------------------------------------------------------ runs ending

    async def on_ended(self, msg: Msg) -> None:
        """A terminal event: if a schedule started that run, count it and start a queued fire."""
        tokens = msg.subject.split(".")
        if len(tokens) != 5 or not tokens[3].startswith("sch-"):
            await msg.ack()
            return
        owner, execution_id = tokens[2], tokens[3]
        subject = exec_subject(owner, execution_id, "execution.requested")
        try:
            stored = await self.bus.js.get_last_msg(EXEC_STREAM, subject)
            requested = decode_on(subject, stored.data or b"", max_bytes=self._max)
        except (nats.js.errors.NotFoundError, EventDecodeError):
            await msg.ack()
            return
        ref = requested.request.schedule if isinstance(requested, Requested) else None
        if ref is None:
            await msg.ack()
            return
        run = await execution_state(self.bus.js, execution_id, max_bytes=self._max, owner=owner)
        if run is None or not run.final:
            await msg.ack()  # a retry follows
            return
        async with self._changing(owner, ref.name):
            state = await self.state(owner, ref.name)
            started = state is not None and any(
                f.run_id == execution_id for f in state.fires.values()
            )
            if not started or state is None or state.schedule_id != ref.schedule_id:
                await msg.ack()  # a request that names a schedule which did not start it
                return
            await self.bus.publish(
                ScheduleRunEnded(
                    **self._envelope(owner, ref.schedule_id), run_id=execution_id, status=run.status
                )
            )
            if (
                state is not None
                and state.status == "active"
                and state.schedule_id == ref.schedule_id
            ):
                waiting = state.queued()
                if waiting:
                    await self._start(owner, state, waiting[0].fire_at, None, queued=True)
        await msg.ack()

    # ------------------------------------------------------------------ the loops

    async def run(self, stopper: Stopper) -> None:
        """Serve management requests, fires and run endings until stopped."""
        await provision(self.bus.js, self.settings)
        ctl = await self.bus.nc.subscribe(CTL, queue="scheduler", cb=self._on_ctl)
        fires = ConsumerConfig(
            durable_name=DURABLE,
            filter_subject=FIRES,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.settings.runner.ack_wait,
            max_deliver=self.settings.runner.max_deliver + 1,
        )
        runs = ConsumerConfig(
            durable_name=RUNS_DURABLE,
            filter_subjects=[f"cronium.exec.*.*.{kind}" for kind in ENDINGS],
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.NEW,
            ack_wait=self.settings.runner.ack_wait,
            max_deliver=self.settings.runner.max_deliver + 1,
        )
        try:
            async with Heartbeat(self.bus.js, "scheduler", self.settings.runner.heartbeat):
                await asyncio.gather(
                    self._loop(stopper, SCHED_STREAM, fires, self.on_fire),
                    self._loop(stopper, EXEC_STREAM, runs, self.on_ended),
                )
        finally:
            with contextlib.suppress(nats.errors.Error):
                await ctl.unsubscribe()
            if self._ctl_tasks:  # the requests being served get their answers
                await asyncio.wait(self._ctl_tasks, timeout=10)

    async def _loop(
        self,
        stopper: Stopper,
        stream: str,
        config: ConsumerConfig,
        handle: Callable[[Msg], Awaitable[None]],
    ) -> None:
        assert config.durable_name is not None
        sub = await self._subscribe(stream, config)
        while not stopper.stopping:
            try:
                msgs = await sub.fetch(32, timeout=1.0)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            except nats.errors.ConnectionClosedError:
                break
            except (nats.errors.Error, nats.js.errors.Error) as exc:
                log.warning("fetch failed; retrying", error=str(exc), durable=config.durable_name)
                await asyncio.sleep(0.5)
                with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                    sub = await self._subscribe(stream, config)
                continue
            for msg in msgs:
                try:
                    await handle(msg)
                except Exception as exc:  # noqa: BLE001 - no failure may stop the scheduler
                    reason = f"{type(exc).__name__}: {exc}"
                    if msg.metadata.num_delivered >= self.settings.runner.max_deliver:
                        await dead_letter(self.bus.js, config.durable_name, msg, reason)
                    else:
                        log.warning(
                            "handling failed; will retry", subject=msg.subject, error=reason
                        )
                        await msg.nak(delay=min(2.0**msg.metadata.num_delivered, 30.0))

    async def _subscribe(
        self, stream: str, config: ConsumerConfig
    ) -> JetStreamContext.PullSubscription:
        assert config.durable_name is not None
        await self.bus.js.add_consumer(stream, config)
        return await self.bus.js.pull_subscribe_bind(config.durable_name, stream=stream)

    async def _on_ctl(self, msg: Msg) -> None:
        """Serve a management request in a task of its own, at most MAX_CTL_AT_ONCE at once
        (past that, the subscription waits: nats-server holds what comes meanwhile)."""
        await self._ctl_slots.acquire()
        task = asyncio.create_task(self._serve_ctl(msg))
        self._ctl_tasks.add(task)
        task.add_done_callback(self._ctl_done)

    def _ctl_done(self, task: asyncio.Task[None]) -> None:
        self._ctl_tasks.discard(task)
        self._ctl_slots.release()

    async def _serve_ctl(self, msg: Msg) -> None:
        tokens = msg.subject.split(".")
        # answer a user only in their own inbox (the server does not check reply subjects)
        mine = f"_INBOX_{tokens[4]}." if len(tokens) == 6 else ""
        if tokens[3:4] == ["user"] and msg.reply is not None and not msg.reply.startswith(mine):
            log.warning("request with a foreign reply subject dropped", subject=msg.subject)
            return
        try:
            reply: dict[str, Any] = {"ok": True, "result": await self.manage(msg.subject, msg.data)}
        except CroniumError as exc:
            reply = {"ok": False, "kind": exc.kind, "error": exc.message, "hint": exc.hint}
        except Exception as exc:  # a bug must not stop the service; the requester is told
            log.exception("schedule request failed", subject=msg.subject)
            reply = {"ok": False, "kind": "infrastructure", "error": type(exc).__name__}
        if msg.reply:
            with contextlib.suppress(nats.errors.Error):
                await msg.respond(msgspec.json.encode(reply, enc_hook=_enc))


def _enc(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise NotImplementedError(type(value))


def _next_header(msg: Msg) -> datetime | None:
    value = (msg.headers or {}).get("Nats-Schedule-Next")
    if not value or value == "purge":
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


def summary(state: ScheduleState, *, fires: bool) -> dict[str, Any]:
    """What ``schedule list`` and ``show`` print (JSON-ready)."""
    spec = state.spec
    now = utcnow()
    last = state.last_run()
    upcoming: list[datetime] = []
    if state.status == "active":
        anchor = last.fire_at if last is not None and spec.every_s else state.created_at
        upcoming = specs.next_fires(spec, now, 5 if fires else 1, anchor=anchor)
    when = (
        f"every {spec.every_s:g}s"
        if spec.every_s
        else f"cron {spec.cron}" + (f" ({spec.tz})" if spec.tz else "")
        if spec.cron
        else f"at {spec.at.isoformat() if spec.at else '?'}"
    )
    out: dict[str, Any] = {
        "name": spec.name,
        "owner": state.user,
        "schedule_id": state.schedule_id,
        "when": when,
        "state": state.status,
        "reason": state.reason,
        "overlap": spec.overlap,
        "missed": spec.missed,
        "max_runs": spec.max_runs,
        "next_fires": [t.astimezone(specs.zone(spec)).isoformat() for t in upcoming],
        "runs": state.runs,
        "successes": state.successes,
        "failures": state.failures,
        "skipped": state.skipped,
        "last_outcome": state.last_outcome(),
        "last_run": last.run_id if last else None,
        "spec": msgspec.to_builtins(spec),
    }
    if fires:
        out["fires"] = [
            {
                "fire_at": f.fire_at.isoformat(),
                "run_id": f.run_id,
                "status": f.status or ("running" if f.run_id else None),
                "skipped": f.skipped,
                "queued": f.queued,
            }
            for f in list(state.fires.values())[-100:]
        ]
    return out
