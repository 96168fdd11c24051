"""Warm sandbox pool: containers created and started ahead of demand, one execution each.

Starting a container is most of a trivial job's latency (≈ 200 of ≈ 280 ms here). A warm
container is created with the same sandbox as a cold one (read-only root, no network, no
capabilities, uid 1000, tmpfs, pids/memory/CPU limits, its own runtime dir mounted read-only at
``/cronium``) and started with a tiny waiter as PID 1's child: ``sh`` blocks reading one line on
stdin. Claiming it writes the script and token into its runtime dir, applies the request's memory
limit, then sends ``<execution id> <attempt>`` and closes stdin; the waiter execs the
interpreter on the script, which sees EOF on stdin as in a cold container. After the execution
the container is removed like any other — nothing is shared between executions — and the pool
refills in the background, one container at a time.

A request with its own CPU or pids limit, or with network, takes the cold path (those limits
cannot be changed on a running container).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import structlog

from consumers.container.hostfs import mark_runner, private_dir
from consumers.container.runtime import (
    LABEL_EXECUTION,
    LABEL_POOL,
    Attached,
    ContainerEngineError,
    ContainerSpec,
)
from cronium_bus.events import Request, Runtime
from cronium_bus.ids import new_id

if TYPE_CHECKING:
    from consumers.container.attempt import RunnerContext

log = structlog.get_logger(__name__)
WAITER: Final = (
    "read -r CRONIUM_EXECUTION_ID CRONIUM_ATTEMPT && export CRONIUM_EXECUTION_ID CRONIUM_ATTEMPT "
    '&& exec "$@"'
)
_RETRY_S: Final = 5.0
_PARALLEL: Final = 2


@dataclass
class WarmContainer:
    """A started container waiting for its execution."""

    container_id: str
    runtime: Runtime
    runtime_dir: Path
    image: str
    image_id: str
    attached: Attached


class WarmPool:
    """``size`` warm containers per runtime for one runner process."""

    def __init__(
        self,
        ctx: RunnerContext,
        size: int,
        runtimes: tuple[Runtime, ...],
    ) -> None:
        self.ctx = ctx
        self.size = size
        self.runtimes = runtimes
        self.ids: set[str] = set()  # every container of the pool still on the engine
        self.dirs: set[str] = set()
        self._idle: dict[Runtime, list[WarmContainer]] = {r: [] for r in runtimes}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._stop_event = asyncio.Event()

    def eligible(self, request: Request) -> bool:
        """Whether a warm container's fixed limits fit the request."""
        lim = self.ctx.settings.limits
        return (
            request.runtime in self._idle
            and not (request.network and lim.allow_network)
            and request.limits.cpus in (None, lim.default_cpus)
            and request.limits.pids in (None, lim.default_pids)
        )

    def idle(self) -> dict[Runtime, int]:
        """Idle (warm, unclaimed) containers per runtime now."""
        return {runtime: len(found) for runtime, found in self._idle.items()}

    def take(self, runtime: Runtime) -> WarmContainer | None:
        """An idle warm container, or ``None`` (the caller starts a cold one)."""
        idle = self._idle.get(runtime)
        self._wake.set()
        return idle.pop() if idle else None

    def forget(self, container_id: str, runtime_dir: Path) -> None:
        """The claimed container was removed after its execution."""
        self.ids.discard(container_id)
        self.dirs.discard(runtime_dir.name)

    def start(self) -> None:
        """Fill and keep filling in the background."""
        self._task = asyncio.create_task(self._fill_forever(), name="warm-pool")

    async def close(self) -> None:
        """Stop filling (a container being created is finished first, so none leaks); remove
        idle containers."""
        self._stopping = True
        self._stop_event.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 60)
            except TimeoutError:
                self._task.cancel()
        loop = asyncio.get_running_loop()
        for idle in self._idle.values():
            while idle:
                warm = idle.pop()
                warm.attached.close()
                try:
                    await loop.run_in_executor(
                        self.ctx.pool, self.ctx.runtime.remove, warm.container_id
                    )
                except ContainerEngineError as exc:
                    log.warning(
                        "warm container not removed; the next runner reaps it",
                        container_id=warm.container_id[:12],
                        error=str(exc),
                    )
                shutil.rmtree(warm.runtime_dir, ignore_errors=True)
                self.forget(warm.container_id, warm.runtime_dir)

    async def _fill_forever(self) -> None:
        """Keep ``size`` idle containers per runtime, creating up to ``_PARALLEL`` at once."""
        loop = asyncio.get_running_loop()
        creating: dict[asyncio.Future[WarmContainer], Runtime] = {}
        while not self._stopping:
            self._wake.clear()
            for runtime in self.runtimes:
                pending = sum(1 for r in creating.values() if r == runtime)
                while (
                    len(self._idle[runtime]) + pending < self.size
                    and len(creating) < _PARALLEL
                    and not self._stopping
                ):
                    creating[loop.run_in_executor(self.ctx.pool, self._create, runtime)] = runtime
                    pending += 1
            waits: set[asyncio.Future[Any]] = {*creating, asyncio.ensure_future(self._wake.wait())}
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                runtime_of = creating.pop(fut, None)
                if runtime_of is None:
                    continue
                try:
                    self._idle[runtime_of].append(fut.result())
                except Exception as exc:  # noqa: BLE001 - engine or image trouble: retry later
                    log.warning("warm container not created", runtime=runtime_of, error=str(exc))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop_event.wait(), _RETRY_S)
            for w in waits - done:
                if w not in creating:
                    w.cancel()
        for fut, runtime in creating.items():  # finish what was being created: nothing leaks
            try:
                self._idle[runtime].append(await fut)
            except Exception as exc:  # noqa: BLE001 - _create removed its own remains
                log.warning("warm container not created", runtime=runtime, error=str(exc))

    def _create(self, runtime: Runtime) -> WarmContainer:
        """Create, attach and start one waiting container (blocking; in the thread pool)."""
        from consumers.container.attempt import COMMANDS, SCRIPT_FILES

        s, rt = self.ctx.settings, self.ctx.runtime
        image = s.runner.images[runtime]
        image_id = rt.image_id(image)
        runtime_dir = self.ctx.runtime_root / new_id("pool")
        private_dir(runtime_dir)
        mark_runner(runtime_dir, self.ctx.runner_id)
        self.dirs.add(runtime_dir.name)
        script = f"/cronium/{SCRIPT_FILES[runtime]}"
        spec = ContainerSpec(
            image=image,
            command=["/bin/sh", "-c", WAITER, "cronium-wait", *COMMANDS[runtime], script],
            labels={LABEL_EXECUTION: "", LABEL_POOL: "1", **self.ctx.labels},
            runtime_dir=runtime_dir,
            cpus=s.limits.default_cpus,
            memory_bytes=s.limits.default_memory,
            pids=s.limits.default_pids,
            tmp_size=s.limits.tmp_size,
            workspace_size=s.limits.workspace_size,
            interactive=True,
        )
        container_id = rt.create(spec)
        self.ids.add(container_id)
        started = False
        try:
            attached = rt.attach_interactive(container_id)
            rt.start(container_id)
            started = True
        finally:
            if not started:  # the error propagates to the fill loop, which logs it
                rt.remove(container_id)
                self.forget(container_id, runtime_dir)
                shutil.rmtree(runtime_dir, ignore_errors=True)
        return WarmContainer(
            container_id=container_id,
            runtime=runtime,
            runtime_dir=runtime_dir,
            image=image,
            image_id=image_id,
            attached=attached,
        )
