"""The container runner consumer: claims jobs from its lanes and runs each in a fresh container.

A job message is held as a lease while its attempt runs (``in_progress`` every ``ack_wait / 3``)
and acknowledged only after the terminal event is stored, so a runner killed at any instant loses
nothing: the job is redelivered and the next runner settles the attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Final

import nats.errors
import structlog
from nats.aio.msg import Msg

from consumers.container.attempt import Attempt, RunnerContext
from consumers.container.runtime import LABEL_RUNNER, ContainerRuntime, DockerRuntime
from consumers.deadletter import dead_letter
from consumers.lanes import LaneClaimer, ensure_lane_consumers, lane_order
from cronium_bus.bus import Bus
from cronium_bus.codec import decode_as
from cronium_bus.errors import EventDecodeError
from cronium_bus.events import ErrorInfo, Lost, Queued, utcnow
from cronium_bus.health import Heartbeat, read_beats
from cronium_bus.history import execution_state
from cronium_bus.ids import new_id
from cronium_bus.lifecycle import Stopper, drain_tasks
from cronium_bus.provision import provision
from cronium_bus.subjects import CANCELS

log = structlog.get_logger(__name__)
KIND: Final = "container"
_IDLE_WAIT_S: Final = 1.0
_REAP_EVERY_S: Final = 15.0
_STALE_DIR_S: Final = 120.0  # longer than any setup phase: a younger dir may be in use


class ContainerRunner:
    """One runner process: ``settings.runner.slots`` attempts at a time."""

    def __init__(self, bus: Bus, runtime: ContainerRuntime | None = None) -> None:
        self.bus = bus
        self.settings = bus.settings
        self.slots = self.settings.runner.slots
        self.pool = ThreadPoolExecutor(max_workers=self.slots * 3 + 4, thread_name_prefix="docker")
        self.runtime = runtime or DockerRuntime(pool_size=self.slots * 3 + 4)
        self.heartbeat = Heartbeat(bus.js, KIND, self.settings.runner.heartbeat)
        self.ctx = RunnerContext(
            bus=bus,
            runtime=self.runtime,
            pool=self.pool,
            runner_id=self.heartbeat.instance,
            settings=self.settings,
        )
        self.running: dict[str, Attempt] = {}
        self._claims = 0
        self._doorbell = asyncio.Event()
        self.claimer = LaneClaimer(bus.nc, KIND)

    async def run(self, stopper: Stopper) -> None:
        """Claim and run jobs until stopped, then finish work in flight within the grace."""
        r = self.settings.runner
        await provision(self.bus.js, self.settings)
        await ensure_lane_consumers(
            self.bus.js, KIND, ack_wait=r.ack_wait, max_deliver=r.max_deliver + 1
        )
        await self.reap_leftovers()
        bell = await self.bus.nc.subscribe("cronium.jobs.container.>", cb=self._ring)
        cancels = await self.bus.nc.subscribe(CANCELS, cb=self._on_cancel)
        tasks: set[asyncio.Task[None]] = set()
        free = asyncio.Semaphore(self.slots)
        reaper = asyncio.create_task(self._reap_periodically())
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
            reaper.cancel()
            with contextlib.suppress(nats.errors.Error):
                await bell.unsubscribe()
                await cancels.unsubscribe()
                await self.claimer.close()
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.runtime.close()

    async def _ring(self, _msg: Msg) -> None:
        self._doorbell.set()

    async def _on_cancel(self, msg: Msg) -> None:
        execution_id = msg.subject.split(".")[2]
        attempt = self.running.get(execution_id)
        if attempt is not None:
            log.info("cancelling", execution_id=execution_id)
            attempt.cancel()

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
            await dead_letter(self.bus.js, KIND, msg, f"undecodable job: {exc}")
            return
        structlog.contextvars.bind_contextvars(
            execution_id=queued.execution_id, correlation_id=queued.correlation_id
        )
        lease = asyncio.create_task(self._hold_lease(msg))
        try:
            await self._settle(msg, queued)
        except Exception:
            log.exception("job failed in the runner; it will be redelivered")
            with contextlib.suppress(nats.errors.Error):
                await msg.nak(delay=1.0)
        finally:
            lease.cancel()
            self.running.pop(queued.execution_id, None)
            self.heartbeat.in_flight = len(self.running)
            structlog.contextvars.unbind_contextvars("execution_id", "correlation_id")

    async def _settle(self, msg: Msg, queued: Queued) -> None:
        """Run the attempt unless the streams say it is settled, cancelled or was lost."""
        max_bytes = self.settings.streams.max_msg_size
        state = await execution_state(self.bus.js, queued.execution_id, max_bytes=max_bytes)
        current = state.attempt_state(queued.attempt) if state else None
        attempt = Attempt(self.ctx, queued)
        if current is not None and current.terminal:
            log.info("attempt already settled; acknowledging", status=current.status)
        elif current is not None and current.status == "started":
            await self.bus.publish(
                Lost(
                    event_id=new_id("ev"),
                    time=utcnow(),
                    execution_id=queued.execution_id,
                    attempt=queued.attempt,
                    correlation_id=queued.correlation_id,
                    causation_id=queued.event_id,
                    producer=self.bus.producer,
                    user=queued.user,
                    runner=self.ctx.runner_id,
                    error=ErrorInfo(
                        kind="runner_lost",
                        message=f"runner {current.runner} stopped while running it",
                        hint="run it again; the attempt was not completed",
                    ),
                )
            )
            await self.reap_leftovers()
        elif state is not None and state.cancel_requested:
            await self.bus.publish(attempt.cancelled_before_start())
        else:
            self.running[queued.execution_id] = attempt
            self.heartbeat.in_flight = len(self.running)
            log.info("running", image=attempt.image)
            terminal = await attempt.run()
            await self.bus.publish(terminal)
            log.info("finished", outcome=terminal.type, exit_code=terminal.exit_code)
        await msg.ack_sync()

    async def _hold_lease(self, msg: Msg) -> None:
        interval = max(1.0, self.settings.runner.ack_wait / 3)
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(nats.errors.Error):
                await msg.in_progress()

    async def reap_leftovers(self) -> None:
        """Remove containers of runners that are no longer alive (crashed or SIGKILLed)."""
        alive = {b.instance for b in await read_beats(self.bus.js) if b.healthy()}
        alive.add(self.ctx.runner_id)
        loop = asyncio.get_running_loop()
        for left in await loop.run_in_executor(self.pool, self.runtime.leftovers):
            owner = left.labels.get(LABEL_RUNNER, "")
            if owner in alive and owner != self.ctx.runner_id:
                continue
            if (
                owner == self.ctx.runner_id
                and left.labels.get("org.cronium.execution") in self.running
            ):
                continue
            log.warning(
                "reaping leftover container",
                container_id=left.container_id[:12],
                owner=owner,
                execution_id=left.labels.get("org.cronium.execution"),
            )
            await loop.run_in_executor(self.pool, self.runtime.remove, left.container_id)
        self._reap_runtime_dirs()

    def _reap_runtime_dirs(self) -> None:
        """Remove runtime directories no attempt of this process uses, once they are stale."""
        root = self.settings.runtime_dir
        if not root.is_dir():
            return
        ours = {f"{a.queued.execution_id}-{a.queued.attempt}" for a in self.running.values()}
        now = time.time()
        for path in root.iterdir():
            if path.name in ours or now - path.stat().st_mtime < _STALE_DIR_S:
                continue
            log.warning("reaping leftover runtime directory", path=str(path))
            shutil.rmtree(path, ignore_errors=True)

    async def _reap_periodically(self) -> None:
        while True:
            await asyncio.sleep(_REAP_EVERY_S)
            try:
                await self.reap_leftovers()
            except Exception:
                log.exception("reaping failed; will try again")
