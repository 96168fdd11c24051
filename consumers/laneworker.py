"""The claim loop shared by runners: slots, priority lanes, leases, cancellation, redelivery.

A subclass says how to run one queued attempt (:meth:`LaneWorker.execute`) and how to cancel one
(:meth:`LaneWorker.cancel`). A job message is held as a lease while its attempt runs
(``in_progress`` every ``ack_wait / 3``) and acknowledged only after the terminal event is stored,
so a runner killed at any instant loses nothing: the job is redelivered, and the next runner ends
the attempt ``lost`` (``runner_lost``) instead of running it a second time at the same attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

import nats.errors
import structlog
from nats.aio.msg import Msg

from consumers.deadletter import dead_letter
from consumers.lanes import LaneClaimer, ensure_lane_consumers, lane_order
from cronium_bus.bus import Bus
from cronium_bus.codec import decode_as
from cronium_bus.errors import EventDecodeError
from cronium_bus.events import Cancelled, ErrorInfo, Lost, Queued, RunnerKind, follow_up
from cronium_bus.health import Heartbeat
from cronium_bus.history import execution_state
from cronium_bus.lifecycle import Stopper, drain_tasks
from cronium_bus.provision import provision
from cronium_bus.state import AttemptState
from cronium_bus.subjects import CANCELS

log = structlog.get_logger(__name__)
_IDLE_WAIT_S: Final = 1.0


class LaneWorker:
    """Claims jobs of one runner kind and runs up to ``slots`` of them at a time."""

    kind: RunnerKind

    def __init__(self, bus: Bus, slots: int) -> None:
        self.bus = bus
        self.settings = bus.settings
        self.slots = slots
        self.heartbeat = Heartbeat(bus.js, self.kind, self.settings.runner.heartbeat)
        self.runner_id = self.heartbeat.instance
        self.claimer = LaneClaimer(bus.nc, self.kind)
        self._claims = 0
        self._doorbell = asyncio.Event()

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

    async def on_lost(self, queued: Queued, previous: AttemptState) -> None:
        """Called after an attempt started by a dead runner was ended ``lost``."""

    # -- the loop --------------------------------------------------------------------------------

    async def run(self, stopper: Stopper) -> None:
        """Claim and run jobs until stopped, then finish work in flight within a grace."""
        r = self.settings.runner
        await provision(self.bus.js, self.settings)
        await ensure_lane_consumers(
            self.bus.js, self.kind, ack_wait=r.ack_wait, max_deliver=r.max_deliver + 1
        )
        await self.on_start()
        bell = await self.bus.nc.subscribe(f"cronium.jobs.{self.kind}.>", cb=self._ring)
        cancels = await self.bus.nc.subscribe(CANCELS, cb=self._on_cancel)
        tasks: set[asyncio.Task[None]] = set()
        free = asyncio.Semaphore(self.slots)
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
            with contextlib.suppress(nats.errors.Error):
                await bell.unsubscribe()
                await cancels.unsubscribe()
                await self.claimer.close()
            await self.on_stop()

    async def _ring(self, _msg: Msg) -> None:
        self._doorbell.set()

    async def _on_cancel(self, msg: Msg) -> None:
        execution_id = msg.subject.split(".")[2]
        if self.cancel(execution_id):
            log.info("cancelling", execution_id=execution_id)

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
            queued = decode_as(msg.data, Queued)
        except EventDecodeError as exc:
            await dead_letter(self.bus.js, self.kind, msg, f"undecodable job: {exc}")
            return
        structlog.contextvars.bind_contextvars(
            execution_id=queued.execution_id, correlation_id=queued.correlation_id
        )
        lease = asyncio.create_task(self._hold_lease(msg))
        try:
            await self._settle(queued)
            await msg.ack_sync()
        except Exception as exc:
            log.exception("job failed in the runner; it will be redelivered", error=str(exc))
            with contextlib.suppress(nats.errors.Error):
                await msg.nak(delay=1.0)
        finally:
            lease.cancel()
            structlog.contextvars.unbind_contextvars("execution_id", "correlation_id")

    async def _settle(self, queued: Queued) -> None:
        """Run the attempt unless the streams say it is settled, cancelled or was lost."""
        max_bytes = self.settings.streams.max_msg_size
        state = await execution_state(self.bus.js, queued.execution_id, max_bytes=max_bytes)
        current = state.attempt_state(queued.attempt) if state else None
        if current is not None and current.terminal:
            log.info("attempt already settled; acknowledging", status=current.status)
        elif current is not None and current.status == "started":
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
        elif state is not None and state.cancel_requested:
            await self.bus.publish(
                Cancelled(
                    **follow_up(queued, self.bus.producer),
                    runner=self.runner_id,
                    error=ErrorInfo(kind="cancelled", message="cancelled before it started"),
                )
            )
        else:
            await self.execute(queued)

    async def _hold_lease(self, msg: Msg) -> None:
        interval = max(1.0, self.settings.runner.ack_wait / 3)
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(nats.errors.Error):
                await msg.in_progress()
