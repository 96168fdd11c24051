"""The claim loop shared by runners: slots, priority lanes, leases, limits, delays, retries,
cancellation, redelivery and dead letters.

A subclass says how to run one queued attempt (:meth:`LaneWorker.execute`) and how to cancel one
(:meth:`LaneWorker.cancel`). A job message is held as a lease while its attempt runs
(``in_progress`` every ``ack_wait / 3``) and acknowledged only after the terminal event is stored,
so a runner killed at any instant loses nothing: the job is redelivered, and the next runner ends
the attempt ``lost`` (``runner_lost``) instead of running it a second time at the same attempt —
unless the runner that started it is still alive (its heartbeat is fresh, e.g. it only lost its
lease while NATS restarted), in which case the job is looked at again later.

A job is not run yet, and goes back to its lane with a delay (``nak``), while its ``not_before``
is in the future or its user's or event's concurrency limit is reached (:mod:`consumers.limits`).
After the attempt ends, the request's retry policy may queue the next attempt
(:mod:`consumers.retries`). A job whose handling keeps raising is dead-lettered after
``runner.max_deliver`` tries and its attempt ends ``failed`` (``infrastructure``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Final

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg

from consumers.deadletter import dead_letter
from consumers.lanes import LaneClaimer, durable_name, ensure_lane_consumers, lane_order
from consumers.limits import Gate
from consumers.retries import schedule_retry
from cronium_bus import durables
from cronium_bus.authentic import decode_on
from cronium_bus.bus import Bus
from cronium_bus.errors import EventDecodeError
from cronium_bus.events import (
    PRIORITIES,
    Cancelled,
    CancelRequested,
    ErrorInfo,
    Failed,
    Lost,
    Queued,
    RunnerKind,
    Started,
    follow_up,
    make_terminal,
    utcnow,
)
from cronium_bus.health import Beat, Gauge, Heartbeat
from cronium_bus.history import execution_state, read_messages
from cronium_bus.lifecycle import Stopper, drain_tasks
from cronium_bus.provision import kv_value, provision
from cronium_bus.retry import should_retry
from cronium_bus.state import AttemptState, ExecutionState
from cronium_bus.subjects import CANCELS, EXEC_STREAM, HEARTBEAT_BUCKET, JOBS_STREAM, exec_subject

log = structlog.get_logger(__name__)
_IDLE_WAIT_S: Final = 1.0
_MIN_DELAY_S: Final = 0.02
_CANCEL_STORE_CHECKS: Final = 50  # × 100 ms: how long a live cancel may precede its stored copy
_CANCEL_STORE_WAIT_S: Final = 0.1
_CANCEL_SCAN_LIMIT: Final = 1000  # stored messages read on one cancel subject, at most


class LaneWorker:
    """Claims jobs of one runner kind and runs up to ``slots`` of them at a time."""

    kind: RunnerKind

    def __init__(self, bus: Bus, slots: int) -> None:
        self.bus = bus
        self.settings = bus.settings
        self.slots = slots
        self.heartbeat = Heartbeat(bus.js, self.kind, self.settings.runner.heartbeat)
        self.heartbeat.sampler = self._gauges
        self.runner_id = self.heartbeat.instance
        self.claimer = LaneClaimer(bus.nc, self.kind)
        self.gate = Gate(bus.js, self.settings)
        self._claims = 0
        self._doorbell = asyncio.Event()
        self._cancel_checks: set[asyncio.Task[None]] = set()
        self._failures: dict[tuple[str, int], int] = {}

    # -- hooks ---------------------------------------------------------------------------------

    async def on_start(self) -> None:
        """Called once before claiming (e.g. reap leftovers)."""

    async def on_stop(self) -> None:
        """Called once after the last job ended."""

    async def execute(self, queued: Queued) -> None:
        """Run the attempt and publish its terminal event."""
        raise NotImplementedError

    def cancel(self, execution_id: str) -> bool:
        """Cancel a running execution held here; whether it was held."""
        raise NotImplementedError

    def is_running(self, execution_id: str) -> bool:
        """Whether this process is running the execution right now."""
        raise NotImplementedError

    async def on_lost(self, queued: Queued, previous: AttemptState) -> None:
        """Called after an attempt started by a dead runner was ended ``lost``."""

    async def gauges(self) -> list[Gauge]:
        """The runner's own numbers for its heartbeat (``cronium metrics`` exports them)."""
        return []

    async def _gauges(self) -> list[Gauge]:
        return [Gauge(name="runner_slots", value=float(self.slots)), *await self.gauges()]

    # -- the loop --------------------------------------------------------------------------------

    async def run(self, stopper: Stopper) -> None:
        """Claim and run jobs until stopped, then finish work in flight within a grace."""
        r = self.settings.runner
        await provision(self.bus.js, self.settings)
        await ensure_lane_consumers(self.bus.js, self.kind, ack_wait=r.ack_wait)
        await self.on_start()
        bell = await self.bus.nc.subscribe(f"cronium.jobs.{self.kind}.>", cb=self._ring)
        cancels = await self.bus.nc.subscribe(CANCELS, cb=self._on_cancel)
        tasks: set[asyncio.Task[None]] = set()
        free = asyncio.Semaphore(self.slots)
        lanes = asyncio.create_task(self._keep_lanes(stopper))
        try:
            async with self.heartbeat:
                while not stopper.stopping:
                    await free.acquire()
                    msg = await self._claim_next(stopper)
                    if msg is None:
                        free.release()
                        continue
                    task = asyncio.create_task(self._run_job(msg))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    task.add_done_callback(lambda _t: free.release())
                await drain_tasks(tasks, self.settings.limits.stop_grace + 10)
        finally:
            lanes.cancel()
            for check in list(self._cancel_checks):
                check.cancel()
            with contextlib.suppress(nats.errors.Error):
                await bell.unsubscribe()
                await cancels.unsubscribe()
                await self.claimer.close()
            await self.on_stop()

    async def _keep_lanes(self, stopper: Stopper) -> None:
        """Once per heartbeat interval: recreate lane consumers someone deleted (see
        :mod:`cronium_bus.durables`); the heartbeat says so until they are back."""
        r = self.settings.runner
        while not await stopper.wait(r.heartbeat):
            gone = [
                name
                for priority in PRIORITIES
                if await durables.missing(
                    self.bus.js, JOBS_STREAM, name := durable_name(self.kind, priority)
                )
            ]
            durables.report(self.heartbeat, gone)
            if gone:
                with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                    await ensure_lane_consumers(self.bus.js, self.kind, ack_wait=r.ack_wait)

    async def _ring(self, _msg: Msg) -> None:
        self._doorbell.set()

    async def _on_cancel(self, msg: Msg) -> None:
        """Honour a cancel only when it is an authentic ``cancel_requested`` the stream stored."""
        try:
            event = decode_on(msg.subject, msg.data)
        except EventDecodeError as exc:
            log.warning("ignoring a cancel that is not one", subject=msg.subject, reason=str(exc))
            return
        if not isinstance(event, CancelRequested) or not self.is_running(event.execution_id):
            return
        # checked off the subscription's callback, so one slow store never delays other cancels
        task = asyncio.create_task(self._cancel_when_stored(event, msg.data))
        self._cancel_checks.add(task)
        task.add_done_callback(self._cancel_checks.discard)

    async def _cancel_when_stored(self, event: CancelRequested, data: bytes) -> None:
        """Cancel once this very event is on the stream (polled for a bounded time: the live copy
        can arrive before the stream has stored it, longer so on a replicated stream)."""
        subject = exec_subject(event.user, event.execution_id, event.type)
        for _ in range(_CANCEL_STORE_CHECKS):
            try:
                async for msg in read_messages(
                    self.bus.js, EXEC_STREAM, subject, limit=_CANCEL_SCAN_LIMIT
                ):
                    if msg.data == data:
                        if self.cancel(event.execution_id):
                            log.info("cancelling", execution_id=event.execution_id, by=event.user)
                        return
            except nats.errors.Error as exc:
                log.warning("cannot read the cancel subject", subject=subject, error=str(exc))
            await asyncio.sleep(_CANCEL_STORE_WAIT_S)
        log.warning("ignoring a cancel the stream did not store", subject=subject)

    async def _claim_next(self, stopper: Stopper) -> Msg | None:
        """Scan the lanes in policy order; wait for the doorbell when all are empty."""
        while not stopper.stopping:
            self._doorbell.clear()
            for priority in lane_order(self._claims):
                try:
                    msg = await self.claimer.try_claim(priority)
                except nats.errors.Error as exc:
                    log.warning("claim failed", lane=priority, error=str(exc))
                    msg = None
                if msg is not None:
                    self._claims += 1
                    return msg
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._doorbell.wait(), _IDLE_WAIT_S)
        return None

    async def _run_job(self, msg: Msg) -> None:
        try:
            queued = decode_on(msg.subject, msg.data)
        except EventDecodeError as exc:
            await dead_letter(self.bus.js, self.kind, msg, f"undecodable job: {exc}")
            return
        if not isinstance(queued, Queued):  # authentic on a lane means Queued; kept for types
            await dead_letter(self.bus.js, self.kind, msg, f"{queued.type} on a job lane")
            return
        structlog.contextvars.bind_contextvars(
            execution_id=queued.execution_id, correlation_id=queued.correlation_id
        )
        key = (queued.execution_id, queued.attempt)
        lease = asyncio.create_task(self._hold_lease(msg, queued))
        try:
            first = msg.metadata.num_delivered == 1
            delay = await self._settle(queued, first_delivery=first)
            if delay is None:
                await msg.ack_sync()
            else:
                await msg.nak(delay=delay)
            self._failures.pop(key, None)
        except Exception as exc:
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            if failures >= self.settings.runner.max_deliver:
                self._failures.pop(key, None)
                await self._give_up(msg, queued, f"{type(exc).__name__}: {exc}")
            else:
                log.exception("job failed in the runner; it will be redelivered", error=str(exc))
                with contextlib.suppress(nats.errors.Error):
                    await msg.nak(delay=min(2.0**failures, 30.0))
        finally:
            lease.cancel()
            structlog.contextvars.unbind_contextvars("execution_id", "correlation_id")

    async def _give_up(self, msg: Msg, queued: Queued, reason: str) -> None:
        """Dead-letter a job that keeps failing; its attempt ends failed so nothing waits."""
        log.error("job keeps failing; dead-lettering it", reason=reason)
        await self.gate.release(queued)
        await self.bus.publish(
            make_terminal(
                Failed,
                follow_up(queued, self.bus.producer),
                runner=self.runner_id,
                error=ErrorInfo(
                    kind="infrastructure",
                    message=f"the runner failed {self.settings.runner.max_deliver} times: {reason}"[
                        :1000
                    ],
                    hint="see `cronium dlq list`; `cronium dlq retry` runs it again",
                ),
            )
        )
        await dead_letter(self.bus.js, self.kind, msg, reason)
        await self._after_end(queued)  # retried if the policy says so

    async def _settle(self, queued: Queued, *, first_delivery: bool = False) -> float | None:
        """Run the attempt unless the streams say it is settled, cancelled, held elsewhere or was
        lost; ``None`` to acknowledge the job, else seconds until it is looked at again.

        On a job's first delivery, two direct reads — the last ``cancel_requested`` and the last
        ``started`` of the execution — stand in for folding the whole execution when neither
        exists for this attempt (the common path stays cheap for NATS and the runner); anything
        else (a duplicate job, a cancel, a redelivery) takes the full path."""
        if first_delivery and await self._untouched(queued):
            return await self._admit_and_run(queued)
        state = await self._state(queued)
        current = state.attempt_state(queued.attempt) if state else None
        if state is not None and current is not None and current.terminal:
            log.info("attempt already settled; acknowledging", status=current.status)
            await self._after_end(queued, state)
            return None
        if state is not None and current is not None and current.status == "started":
            held_here = current.runner == self.runner_id
            if (held_here and self.is_running(queued.execution_id)) or (
                not held_here and current.runner and await self._alive(current.runner)
            ):
                log.info("attempt held by a live runner; looking again later", by=current.runner)
                return self.settings.runner.ack_wait
            await self.bus.publish(
                Lost(
                    **follow_up(queued, self.bus.producer),
                    runner=self.runner_id,
                    error=ErrorInfo(
                        kind="runner_lost",
                        message=f"runner {current.runner} stopped while running it",
                        hint="run it again; the attempt did not complete",
                    ),
                )
            )
            await self.on_lost(queued, current)
            await self.gate.release(queued)
            await self._after_end(queued)
            return None
        if state is not None and state.cancel_requested:
            await self.bus.publish(
                Cancelled(
                    **follow_up(queued, self.bus.producer),
                    runner=self.runner_id,
                    error=ErrorInfo(kind="cancelled", message="cancelled before it started"),
                )
            )
            await self.gate.release(queued)
            return None
        return await self._admit_and_run(queued)

    async def _admit_and_run(self, queued: Queued) -> float | None:
        """Run now, or say how long to wait (``not_before``, concurrency limits)."""
        if queued.not_before is not None:
            wait = (queued.not_before - utcnow()).total_seconds()
            if wait > _MIN_DELAY_S:
                return wait
        if not await self.gate.acquire(queued):
            return self.settings.runner.limit_wait
        try:
            await self.execute(queued)
        finally:
            await self.gate.release(queued)
        await self._after_end(queued)
        return None

    async def _untouched(self, queued: Queued) -> bool:
        """No cancel was requested and no runner started this attempt (or a later one)."""
        eid, js = queued.execution_id, self.bus.js
        try:
            await js.get_last_msg(
                EXEC_STREAM, exec_subject(queued.user, eid, "execution.cancel_requested")
            )
        except nats.js.errors.NotFoundError:
            pass
        else:
            return False  # something is there: the fold decides, believing authentic cancels only
        try:
            last = await js.get_last_msg(
                EXEC_STREAM, exec_subject(queued.user, eid, "execution.started")
            )
        except nats.js.errors.NotFoundError:
            return True
        try:
            started = decode_on(
                exec_subject(queued.user, eid, "execution.started"), last.data or b""
            )
        except EventDecodeError:
            return False
        if not isinstance(started, Started):
            return False
        return started.attempt < queued.attempt

    async def _state(self, queued: Queued) -> ExecutionState | None:
        max_bytes = self.settings.streams.max_msg_size
        return await execution_state(self.bus.js, queued.execution_id, max_bytes=max_bytes)

    async def _after_end(self, queued: Queued, state: ExecutionState | None = None) -> None:
        """Queue the next attempt when the policy says so (idempotent: once per attempt).
        The streams are read only when the request could be retried at all."""
        retry = queued.request.retry
        if retry is None or queued.attempt >= retry.max_attempts:
            return
        state = state or await self._state(queued)
        if state is None or state.cancel_requested:
            return
        ended = state.attempt_state(queued.attempt)
        if ended is None or not should_retry(queued.request, ended):
            return
        if state.attempt_state(queued.attempt + 1) is not None:
            return  # already queued (by us before a crash, or by another runner)
        at = await schedule_retry(self.bus, queued, ended)
        log.info("retry scheduled", next_attempt=queued.attempt + 1, at=at.isoformat())

    async def _alive(self, instance: str) -> bool:
        """Whether another runner instance's heartbeat is fresh (it may still run the job)."""
        value = await kv_value(self.bus.js, HEARTBEAT_BUCKET, instance)
        if value is None:
            return False
        beat = msgspec.json.decode(value, type=Beat)
        grace = max(3 * beat.interval, self.settings.runner.ack_wait)
        return beat.status == "ok" and time.time() - beat.beat_at <= grace

    async def _hold_lease(self, msg: Msg, queued: Queued) -> None:
        interval = max(1.0, self.settings.runner.ack_wait / 3)
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(nats.errors.Error):
                await msg.in_progress()
            with contextlib.suppress(nats.errors.Error):
                await self.gate.renew(queued)
