"""The container runner consumer: each claimed attempt runs in a fresh, isolated container.

The claim loop, leases and redelivery handling are :class:`consumers.laneworker.LaneWorker`'s;
this module adds the Docker side and the reaping of what dead runners left behind.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Final

import structlog

from consumers.container.attempt import Attempt, RunnerContext
from consumers.container.hostfs import runner_of
from consumers.container.pool import WarmPool
from consumers.container.runtime import LABEL_RUNNER, ContainerRuntime, DockerRuntime
from consumers.laneworker import LaneWorker
from cronium_bus.bus import Bus
from cronium_bus.events import Queued, RunnerKind
from cronium_bus.health import Gauge, read_beats
from cronium_bus.provision import installation_id
from cronium_bus.state import AttemptState

log = structlog.get_logger(__name__)
KIND: Final[RunnerKind] = "container"
_REAP_EVERY_S: Final = 15.0
_PING_WAIT_S: Final = 0.2  # an engine that answers at all answers a ping in milliseconds
_STALE_DIR_S: Final = 120.0  # longer than any setup phase: a younger dir may be in use


class ContainerRunner(LaneWorker):
    """One runner process: ``settings.runner.slots`` attempts at a time."""

    kind = KIND

    def __init__(self, bus: Bus, runtime: ContainerRuntime | None = None) -> None:
        super().__init__(bus, bus.settings.runner.slots)
        self.pool = ThreadPoolExecutor(max_workers=self.slots * 3 + 4, thread_name_prefix="docker")
        self.runtime = runtime or DockerRuntime(pool_size=self.slots * 3 + 4)
        self.ctx = RunnerContext(
            bus=bus,
            runtime=self.runtime,
            pool=self.pool,
            runner_id=self.runner_id,
            settings=self.settings,
            background=set(),
        )
        self.running: dict[str, Attempt] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._ping: asyncio.Future[bool] | None = None
        r = self.settings.runner
        self.warm = WarmPool(self.ctx, r.warm_pool, r.warm_runtimes) if r.warm_pool else None

    async def on_start(self) -> None:
        """Reap what dead runners of this installation left, then keep reaping."""
        self.ctx.installation = await installation_id(self.bus.js)
        await self.reap_leftovers()
        self._reaper = asyncio.create_task(self._reap_periodically())
        if self.warm is not None:
            self.warm.start()

    async def on_stop(self) -> None:
        """Stop reaping; release the engine connections and threads."""
        if self._reaper is not None:
            self._reaper.cancel()
        if self.warm is not None:
            await self.warm.close()
        if self.ctx.background:  # removals still running
            await asyncio.wait(set(self.ctx.background), timeout=30)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.runtime.close()

    def cancel(self, execution_id: str) -> bool:
        """Kill the container of a running execution."""
        attempt = self.running.get(execution_id)
        if attempt is None:
            return False
        attempt.cancel()
        return True

    def is_running(self, execution_id: str) -> bool:
        """Whether an attempt of the execution runs in this process."""
        return execution_id in self.running

    async def gauges(self) -> list[Gauge]:
        """Whether the Docker engine answers, and the warm containers waiting per runtime.

        One ping at a time: while a ping hangs (an engine that accepts and never answers), the
        engine reads as down and no further thread is spent on it."""
        if self._ping is None or self._ping.done():
            self._ping = asyncio.get_running_loop().run_in_executor(self.pool, self.runtime.ping)
        try:
            up = await asyncio.wait_for(asyncio.shield(self._ping), _PING_WAIT_S)
        except TimeoutError:
            up = False
        found = [Gauge(name="docker_up", value=1.0 if up else 0.0)]
        if self.warm is not None:
            found += [
                Gauge(name="warm_pool_idle", value=float(n), labels={"runtime": runtime})
                for runtime, n in sorted(self.warm.idle().items())
            ]
        return found

    async def on_lost(self, queued: Queued, previous: AttemptState) -> None:
        """The dead runner's container may still run: reap it."""
        await self.reap_leftovers()

    async def execute(self, queued: Queued) -> None:
        """Run the attempt in a fresh container and publish its terminal event."""
        warm = None
        if self.warm is not None and self.warm.eligible(queued.request):
            warm = self.warm.take(queued.request.runtime)
        attempt = Attempt(self.ctx, queued, warm)
        self.running[queued.execution_id] = attempt
        self.heartbeat.in_flight = len(self.running)
        try:
            log.info("running", image=attempt.image)
            terminal = await attempt.run()
            await self.bus.publish(terminal)
            log.info("finished", outcome=terminal.type, exit_code=terminal.exit_code)
        finally:
            self.running.pop(queued.execution_id, None)
            self.heartbeat.in_flight = len(self.running)
            if warm is not None and self.warm is not None:
                self.warm.forget(warm.container_id, warm.runtime_dir)

    async def reap_leftovers(self) -> None:
        """Remove containers of this installation's runners that are no longer alive (crashed
        or SIGKILLed); another installation's are never touched."""
        alive = {b.instance for b in await read_beats(self.bus.js) if b.healthy()}
        alive.add(self.ctx.runner_id)
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(self.pool, self.runtime.leftovers, self.ctx.installation)
        for left in found:
            owner = left.labels.get(LABEL_RUNNER, "")
            if owner in alive and owner != self.ctx.runner_id:
                continue
            if owner == self.ctx.runner_id and (
                left.labels.get("org.cronium.execution") in self.running
                or (self.warm is not None and left.container_id in self.warm.ids)
            ):
                continue
            log.warning(
                "reaping leftover container",
                container_id=left.container_id[:12],
                owner=owner,
                execution_id=left.labels.get("org.cronium.execution"),
            )
            await loop.run_in_executor(self.pool, self.runtime.remove, left.container_id)
        self._reap_runtime_dirs(alive)

    def _reap_runtime_dirs(self, alive: set[str]) -> None:
        """Remove this installation's runtime directories no attempt of this process uses,
        once they are stale."""
        root = self.ctx.runtime_root
        if not root.is_dir():
            return
        ours = {f"{a.queued.execution_id}-{a.queued.attempt}" for a in self.running.values()}
        ours |= self.warm.dirs if self.warm is not None else set()
        now = time.time()
        for path in root.iterdir():
            if path.name in ours or now - path.stat().st_mtime < _STALE_DIR_S:
                continue
            maker = runner_of(path)
            if maker in alive and maker != self.ctx.runner_id:
                continue  # a live runner's of this installation, on this host
            log.warning("reaping leftover runtime directory", path=str(path))
            shutil.rmtree(path, ignore_errors=True)

    async def _reap_periodically(self) -> None:
        while True:
            await asyncio.sleep(_REAP_EVERY_S)
            try:
                await self.reap_leftovers()
            except Exception as exc:
                log.exception("reaping failed; will try again", error=str(exc))
