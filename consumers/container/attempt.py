"""One attempt of one execution in a fresh container: setup, live output, outcome, cleanup."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

import msgspec
import structlog

from consumers.container.hostfs import mark_runner, private_dir, private_file, private_socket
from consumers.container.pool import WarmContainer
from consumers.container.runtime import (
    LABEL_ATTEMPT,
    LABEL_EXECUTION,
    LABEL_INSTALLATION,
    LABEL_RUNNER,
    ContainerGoneError,
    ContainerRuntime,
    ContainerSpec,
    ExitState,
)
from consumers.helpers.api import HelperApi
from consumers.logpump import LineSplitter, LogPump
from consumers.masking import Masker
from cronium_bus.bus import Bus
from cronium_bus.errors import CroniumError
from cronium_bus.events import (
    Cancelled,
    EnvelopeFields,
    ErrorInfo,
    Failed,
    LogChunk,
    LogStream,
    PhaseDurations,
    Queued,
    ResourceUsage,
    Started,
    Succeeded,
    TerminalEvent,
    TimedOut,
    error_info,
    follow_up,
    make_terminal,
)
from cronium_bus.secrets import box_from, open_for
from cronium_bus.settings import Settings
from cronium_bus.units import format_size

log = structlog.get_logger(__name__)
T = TypeVar("T")

SCRIPT_FILES: Final = {"bash": "script.sh", "python": "script.py", "node": "script.js"}
COMMANDS: Final = {
    "bash": ["bash"],  # helpers come from BASH_ENV (the image sets it)
    "python": ["python3", "/opt/cronium/python/cronium_launch.py"],
    "node": ["node", "--require", "/opt/cronium/node/cronium.js"],
}
NODE_SHIM: Final = "module.exports = require('/opt/cronium/node/cronium.js');\n"
MAX_SOCKET_PATH: Final = 100
_TMPFS_DIRS: Final = "/tmp and /workspace"  # noqa: S108 - inside the sandbox
_TMPFS_SHARE: Final = 0.5  # tmpfs held this much of the limit: the files, not the process
_SAMPLE_S: Final = 0.25  # cgroup peak and CPU counters are cumulative; sampling keeps them
_DRAIN_S: Final = 5.0


@dataclass
class RunnerContext:
    """What every attempt of one runner process shares."""

    bus: Bus
    runtime: ContainerRuntime
    pool: ThreadPoolExecutor
    runner_id: str
    settings: Settings
    background: set[asyncio.Task[None]]
    """Removals of exited containers, finished after the terminal event is published."""
    installation: str = ""
    """This installation's id (read from the bus when the runner starts)."""

    @property
    def labels(self) -> dict[str, str]:
        """Labels every container of this runner carries."""
        return {LABEL_RUNNER: self.runner_id, LABEL_INSTALLATION: self.installation}

    @property
    def runtime_root(self) -> Path:
        """This installation's runtime directories (never another's, on a shared host). Named
        by the random end of the installation id: runtime paths must stay short enough for the
        API socket (a Unix socket path is at most 107 bytes)."""
        return self.settings.runtime_dir / f"i{self.installation[-12:]}"


class Attempt:
    """Runs one queued attempt and returns its terminal event (the caller publishes it)."""

    def __init__(
        self, ctx: RunnerContext, queued: Queued, warm: WarmContainer | None = None
    ) -> None:
        self.ctx = ctx
        self.queued = queued
        self.warm = warm
        self.request = queued.request
        self.cancel_requested = asyncio.Event()
        self.image = ctx.settings.runner.images[self.request.runtime]
        self.image_id: str | None = None
        self.output_bytes = 0
        self.output_limited = False
        self.peak_memory: int | None = None
        self.peak_tmpfs = 0  # bytes of tmpfs seen, the most at once
        self.cpu_ms: float | None = None
        # a claimed warm container is this attempt's from the start: removed whatever happens
        self._container_id: str | None = warm.container_id if warm is not None else None
        self.api: HelperApi | None = None
        self.masker = Masker(())

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.ctx.pool, fn, *args)

    def _envelope(self) -> EnvelopeFields:
        return follow_up(self.queued, self.ctx.bus.producer)

    @property
    def runtime_dir(self) -> Path:
        """The per-attempt host directory mounted read-only at ``/cronium`` (a warm
        container's own directory when one was claimed)."""
        if self.warm is not None:
            return self.warm.runtime_dir
        q = self.queued
        return self.ctx.runtime_root / f"{q.execution_id}-{q.attempt}"

    def cancel(self) -> None:
        """Ask the attempt to stop; it ends ``cancelled``."""
        self.cancel_requested.set()

    async def run(self) -> TerminalEvent:
        """Set up, run and clean up; never raises for a script's or the engine's failure."""
        t0 = time.monotonic()
        await self.ctx.bus.publish(
            Started(**self._envelope(), runner=self.ctx.runner_id, image=self.image)
        )
        t_run = t_end = t0
        exit_state: ExitState | None = None
        timed_out = False
        error: ErrorInfo | None = None
        pump: LogPump | None = None
        try:
            spec = self._spec()
            secret_values = await self._load_secrets()
            self.masker = Masker(secret_values.values())
            self.api = HelperApi(self.ctx.bus, self.queued, secret_values)
            self._prepare_dir(await self.api.input_json())
            await self.api.start(self.runtime_dir / "api.sock")
            private_socket(self.runtime_dir / "api.sock")
            self._write_token()
            pump = self._make_pump()
            container_id, pump_task = await self._start(spec, pump)
            t_run = time.monotonic()
            exit_state, timed_out = await self._supervise(container_id)
            t_end = time.monotonic()
            try:
                await asyncio.wait_for(pump_task, _DRAIN_S)
            except TimeoutError:
                log.warning(
                    "output did not close after exit", execution_id=self.queued.execution_id
                )
        except CroniumError as exc:
            error = error_info(exc)
        except Exception as exc:
            log.exception("attempt failed in the runner", execution_id=self.queued.execution_id)
            error = ErrorInfo(
                kind="infrastructure",
                message=f"{type(exc).__name__}: {exc}",
                hint="the runner or Docker engine failed; see the runner's log",
            )
        finally:
            if t_end == t0:
                t_end = time.monotonic()
            if pump is not None:
                await pump.flush_all()
            await self._cleanup()
        t_done = time.monotonic()
        durations = PhaseDurations(
            setup_ms=round((t_run - t0) * 1000, 3) if t_run > t0 else round((t_end - t0) * 1000, 3),
            run_ms=round((t_end - t_run) * 1000, 3) if t_run > t0 else 0.0,
            cleanup_ms=round((t_done - t_end) * 1000, 3),
        )
        return self._outcome(exit_state, timed_out, error, durations, pump)

    async def _start(self, spec: ContainerSpec, pump: LogPump) -> tuple[str, asyncio.Task[None]]:
        """The claimed warm container, or a cold one — also when the warm one vanished (another
        process removed it): the job still runs, it is not an infrastructure failure."""
        if self.warm is not None:
            try:
                return await self._go_warm(self.warm, spec, pump)
            except ContainerGoneError:
                log.warning("warm container is gone; starting cold", id=self.warm.container_id)
                self.warm.attached.close()
                self._container_id = None
        return await self._start_cold(spec, pump)

    async def _start_cold(
        self, spec: ContainerSpec, pump: LogPump
    ) -> tuple[str, asyncio.Task[None]]:
        """Create, attach and start a fresh container for this attempt."""
        self.image_id = await self._call(self.ctx.runtime.image_id, self.image)
        container_id = self._container_id = await self._call(self.ctx.runtime.create, spec)
        output = await self._call(self.ctx.runtime.attach, container_id)
        task = asyncio.create_task(self._pump(pump, output, container_id))
        await self._call(self.ctx.runtime.start, container_id)
        return container_id, task

    async def _go_warm(
        self, warm: WarmContainer, spec: ContainerSpec, pump: LogPump
    ) -> tuple[str, asyncio.Task[None]]:
        """Claim a warm container: make sure it is still there and has the request's memory
        limit (:class:`ContainerGoneError` otherwise), then send its go line."""
        self.image, self.image_id = warm.image, warm.image_id
        self._container_id = warm.container_id
        if spec.memory_bytes != self.ctx.settings.limits.default_memory:
            await self._call(self.ctx.runtime.update_memory, warm.container_id, spec.memory_bytes)
        else:
            await self._call(self.ctx.runtime.ensure_exists, warm.container_id)
        task = asyncio.create_task(self._pump(pump, warm.attached.frames, warm.container_id))
        q = self.queued
        await self._call(warm.attached.send_once, f"{q.execution_id} {q.attempt}\n".encode())
        return warm.container_id, task

    def _spec(self) -> ContainerSpec:
        lim, req, q = self.ctx.settings.limits, self.request, self.queued
        script = f"/cronium/{SCRIPT_FILES[req.runtime]}"
        return ContainerSpec(
            image=self.image,
            command=[*COMMANDS[req.runtime], script],
            labels={
                LABEL_EXECUTION: q.execution_id,
                LABEL_ATTEMPT: str(q.attempt),
                **self.ctx.labels,
            },
            runtime_dir=self.runtime_dir,
            cpus=req.limits.cpus or lim.default_cpus,
            memory_bytes=req.limits.memory_bytes or lim.default_memory,
            pids=req.limits.pids or lim.default_pids,
            tmp_size=lim.tmp_size,
            workspace_size=lim.workspace_size,
            network=req.network and lim.allow_network,
            env={"CRONIUM_EXECUTION_ID": q.execution_id, "CRONIUM_ATTEMPT": str(q.attempt)},
        )

    async def _load_secrets(self) -> dict[str, str]:
        """The secrets the request names, decrypted in memory only."""
        if not self.request.secrets:
            return {}
        box = box_from(self.ctx.settings)
        values: dict[str, str] = {}
        for name in self.request.secrets:
            raw = await open_for(self.ctx.bus.js, box, self.queued.user, name)
            values[name] = raw.decode("utf-8", errors="replace")
        return values

    def _prepare_dir(self, input_json: bytes) -> None:
        """The read-only ``/cronium`` of the sandbox: script, token, input, event metadata."""
        d = self.runtime_dir
        if len(str(d / "api.sock")) > MAX_SOCKET_PATH:
            raise CroniumError(
                f"runtime directory {d} is too long for a Unix socket path",
                hint="set runner.runtime_dir (CRONIUM_RUNNER__RUNTIME_DIR) to a shorter path",
            )
        private_dir(d)
        mark_runner(d, self.ctx.runner_id)
        files = {
            SCRIPT_FILES[self.request.runtime]: self.request.code.encode(),
            "input.json": input_json,
            "cronium.js": NODE_SHIM.encode(),
        }
        for name, data in files.items():
            private_file(d / name, data)

    def _write_token(self) -> None:
        assert self.api is not None
        private_file(self.runtime_dir / "token", self.api.token.encode())
        private_file(
            self.runtime_dir / "event.json", msgspec.json.encode(self.api.event_metadata())
        )

    def _make_pump(self) -> LogPump:
        r = self.ctx.settings.runner

        async def publish(stream: LogStream, first_seq: int, lines: list[str]) -> None:
            await self.ctx.bus.publish(
                LogChunk(
                    **self._envelope(),
                    stream=stream,
                    first_seq=first_seq,
                    lines=tuple(lines),
                )
            )

        return LogPump(
            publish, flush_s=r.log_flush, max_lines=r.log_chunk_lines, max_bytes=r.log_chunk_bytes
        )

    async def _pump(
        self, pump: LogPump, output: Iterator[tuple[LogStream, bytes]], container_id: str
    ) -> None:
        """Move output from the engine's attach stream to log chunks, with backpressure."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[LogStream, bytes] | None] = asyncio.Queue(maxsize=64)
        runtime = self.ctx.runtime

        def reader() -> None:
            try:
                for item in output:
                    asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()
            finally:
                asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()

        reader_future = loop.run_in_executor(self.ctx.pool, reader)
        max_line = self.ctx.settings.runner.max_line_bytes
        splitters: dict[LogStream, LineSplitter] = {
            "stdout": LineSplitter(max_line, self.masker),
            "stderr": LineSplitter(max_line, self.masker),
        }
        cap = self.ctx.settings.limits.output_cap
        kill: asyncio.Future[None] | None = None
        next_sample = 0.0
        while True:
            now = time.monotonic()
            if now >= next_sample:
                self._sample_usage(container_id)
                next_sample = now + _SAMPLE_S
            deadline = pump.next_deadline()
            wait = min(deadline if deadline is not None else _SAMPLE_S, _SAMPLE_S)
            try:
                item = await asyncio.wait_for(queue.get(), timeout=wait)
            except TimeoutError:
                await pump.flush_due()
                continue
            if item is None:
                break
            stream, data = item
            if self.output_limited:
                continue  # drain without keeping anything more
            if self.output_bytes + len(data) > cap:
                data = data[: cap - self.output_bytes]
                self.output_limited = True
                # kill in the background and keep draining: Docker waits for the output to
                # be read before it reports the kill done
                kill = asyncio.ensure_future(self._call(runtime.kill, container_id))
            self.output_bytes += len(data)
            await pump.add(stream, splitters[stream].feed(data))  # masked, then cut
            await pump.flush_due()
        for name in ("stdout", "stderr"):
            await pump.add(name, splitters[name].close())
        await pump.flush_all()
        await reader_future
        if kill is not None:
            await kill

    def _sample_usage(self, container_id: str) -> None:
        tmpfs = self.ctx.runtime.tmpfs_bytes(container_id)
        if tmpfs is not None:
            self.peak_tmpfs = max(tmpfs, self.peak_tmpfs)
        peak, cpu = self.ctx.runtime.usage(container_id)
        if peak is not None:
            self.peak_memory = max(peak, self.peak_memory or 0)
        if cpu is not None:
            self.cpu_ms = max(cpu, self.cpu_ms or 0.0)

    async def _supervise(self, container_id: str) -> tuple[ExitState, bool]:
        """Wait for the exit, enforcing the timeout and cancellation."""
        runtime = self.ctx.runtime
        wait_future = asyncio.ensure_future(self._call(runtime.wait, container_id))
        cancel_task = asyncio.create_task(self.cancel_requested.wait())
        timeout = self.request.timeout_s or self.ctx.settings.limits.default_timeout
        try:
            done, _ = await asyncio.wait(
                {wait_future, cancel_task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            cancel_task.cancel()
        if wait_future in done:
            return wait_future.result(), False
        if cancel_task in done:
            await self._call(runtime.kill, container_id)
            return await wait_future, False
        grace = self.ctx.settings.limits.stop_grace
        await self._call(runtime.stop, container_id, grace)
        return await wait_future, True

    async def _cleanup(self) -> None:
        if self.api is not None:
            await self.api.stop()
        if self.warm is not None:
            self.warm.attached.close()  # already closed once its output ended; idempotent
        if self._container_id is not None:
            self._sample_usage(self._container_id)
            # the container has exited (or is being killed): the outcome is known, so the
            # terminal event need not wait for its removal; the runner finishes it meanwhile
            task = asyncio.create_task(self._remove(self._container_id, self.runtime_dir))
            self.ctx.background.add(task)
            task.add_done_callback(self.ctx.background.discard)
        else:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)

    async def _remove(self, container_id: str, runtime_dir: Path) -> None:
        try:
            await self._call(self.ctx.runtime.remove, container_id)
        except Exception as exc:  # noqa: BLE001 - reaped by the next reaping pass otherwise
            log.warning(
                "container not removed; will be reaped",
                error=str(exc),
                container_id=container_id[:12],
            )
        finally:
            shutil.rmtree(runtime_dir, ignore_errors=True)

    def _outcome(
        self,
        exit_state: ExitState | None,
        timed_out: bool,
        error: ErrorInfo | None,
        durations: PhaseDurations,
        pump: LogPump | None,
    ) -> TerminalEvent:
        lim = self.ctx.settings.limits
        cls: type[TerminalEvent] = Failed
        if error is not None or exit_state is None:
            error = error or ErrorInfo(
                kind="infrastructure", message="the container did not report an exit"
            )
        elif self.cancel_requested.is_set():
            cls, error = Cancelled, ErrorInfo(kind="cancelled", message="cancelled while running")
        elif timed_out:
            timeout = self.request.timeout_s or lim.default_timeout
            cls, error = (
                TimedOut,
                ErrorInfo(
                    kind="timeout",
                    message=f"ran past its timeout of {timeout:g}s and was stopped",
                    hint="raise --timeout, or make the script finish sooner",
                ),
            )
        elif self.output_limited:
            error = ErrorInfo(
                kind="output_limit",
                message=f"printed more than the output cap of {lim.output_cap:,} bytes",
                hint="print less, or write bulk data to output() instead of the log",
            )
        elif exit_state.oom_killed:
            memory = self.request.limits.memory_bytes or lim.default_memory
            if self.peak_tmpfs >= memory * _TMPFS_SHARE:
                # the kernel counts tmpfs pages against the memory limit: files filled it
                error = ErrorInfo(
                    kind="tmpfs_full",
                    message=f"killed at its memory limit of {format_size(memory)}: files in "
                    f"{_TMPFS_DIRS} held {format_size(self.peak_tmpfs)} of it",
                    hint="those folders are in memory (tmpfs): write less there, delete what "
                    "you are done with, or raise --memory; they hold at most "
                    f"{format_size(lim.tmp_size)} and {format_size(lim.workspace_size)}",
                )
            else:
                error = ErrorInfo(
                    kind="oom",
                    message=f"killed for using more than its memory limit of {memory:,} bytes",
                    hint="raise --memory (up to the maximum), or use less memory",
                )
        elif exit_state.exit_code != 0:
            error = ErrorInfo(
                kind="nonzero_exit",
                message=f"the script exited with code {exit_state.exit_code}",
            )
        else:
            cls = Succeeded
        return make_terminal(
            cls,
            self._envelope(),
            runner=self.ctx.runner_id,
            error=error,
            exit_code=exit_state.exit_code if exit_state else None,
            durations=durations,
            usage=ResourceUsage(
                peak_memory_bytes=self.peak_memory,
                cpu_time_ms=round(self.cpu_ms, 3) if self.cpu_ms is not None else None,
                output_bytes=self.output_bytes,
            ),
            stdout_lines=pump.lines_sent("stdout") if pump else 0,
            stderr_lines=pump.lines_sent("stderr") if pump else 0,
            image=self.image,
            image_id=self.image_id,
        )
