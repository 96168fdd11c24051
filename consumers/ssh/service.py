"""The SSH runner consumer: one request with N targets becomes N child executions run in
parallel (bounded by ``ssh.fanout_concurrency``), each with its own lifecycle, logs (tagged with
the server's name) and outcome; the parent ends ``succeeded``, ``partial`` or ``failed``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from typing import Final

import asyncssh
import msgspec
import nats.errors
import nats.js.errors
import structlog

from consumers.helpers.api import HelperApi
from consumers.laneworker import LaneWorker
from consumers.logpump import LineSplitter, LogPump, Publish
from consumers.masking import Masker
from consumers.ssh.breaker import CircuitBreaker
from consumers.ssh.pool import SshError, SshPool
from consumers.ssh.remote import (
    RemoteExit,
    prepare_remote_dir,
    run_remote,
    uses_helpers,
    with_helpers,
)
from cronium_bus.bus import Bus
from cronium_bus.errors import CroniumError
from cronium_bus.events import (
    Cancelled,
    ChildRef,
    ErrorInfo,
    Failed,
    FannedOut,
    LogChunk,
    LogStream,
    Partial,
    PhaseDurations,
    Queued,
    RunnerKind,
    Started,
    Succeeded,
    TerminalEvent,
    TimedOut,
    error_info,
    follow_up,
    make_terminal,
)
from cronium_bus.health import Gauge
from cronium_bus.secrets import box_from, get_secret, open_for
from cronium_bus.servers import CircuitState, Server, circuit_key, load_server
from cronium_bus.subjects import CIRCUITS_BUCKET, job_subject

log = structlog.get_logger(__name__)
KIND: Final[RunnerKind] = "ssh"
_DEAD_CONNECTION = (
    asyncssh.ChannelOpenError,
    asyncssh.ConnectionLost,
    asyncssh.DisconnectError,
    BrokenPipeError,
)


def child_id(parent: str, index: int) -> str:
    """The execution id of a fan-out child (a valid id of at most 64 characters): the
    parent's id and the index, or — when that would be too long — the parent's head, a hash of
    the whole parent id and the index, so distinct parents never share a child id."""
    plain = f"{parent}-{index}"
    if len(plain) <= 64:
        return plain
    digest = hashlib.sha256(parent.encode()).hexdigest()[:16]
    return f"{parent[:40]}-{digest}-{index}"


class SshRunner(LaneWorker):
    """Runs scripts on users' servers over pooled SSH connections."""

    kind = KIND

    def __init__(self, bus: Bus) -> None:
        super().__init__(bus, bus.settings.runner.slots)
        self.ssh = bus.settings.ssh
        self.pool = SshPool(self.ssh)
        self.breakers: dict[tuple[str, int], CircuitBreaker] = {}
        self.cancels: dict[str, asyncio.Event] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._fanout = asyncio.Semaphore(self.ssh.fanout_concurrency)

    async def on_start(self) -> None:
        """Close idle connections in the background."""
        self._reaper = asyncio.create_task(self.pool.run_reaper())

    async def on_stop(self) -> None:
        """Close the pool."""
        if self._reaper is not None:
            self._reaper.cancel()
        await self.pool.close()

    async def gauges(self) -> list[Gauge]:
        """Open pooled connections (circuit states are in their bucket, which the exporter
        reads)."""
        return [Gauge(name="ssh_connections", value=float(self.pool.open_connections()))]

    def cancel(self, execution_id: str) -> bool:
        """Cancel a running parent (all its children)."""
        event = self.cancels.get(execution_id)
        if event is None:
            return False
        event.set()
        return True

    def is_running(self, execution_id: str) -> bool:
        """Whether the execution (a fan-out parent or a single target) runs in this process."""
        return execution_id in self.cancels

    def breaker(self, server: Server) -> CircuitBreaker:
        """The circuit breaker of a server's host and port."""
        key = (server.host, server.port)
        if key not in self.breakers:
            s = self.ssh
            self.breakers[key] = CircuitBreaker(
                failures_to_open=s.breaker_failures,
                open_for=s.breaker_open_for,
                trials=s.breaker_trials,
                successes_to_close=s.breaker_successes,
            )
        return self.breakers[key]

    async def _publish_circuit(self, server: Server, breaker: CircuitBreaker) -> None:
        state = CircuitState(
            state=breaker.state,
            failures=breaker.failures,
            retry_in_s=round(breaker.retry_in(), 1) if breaker.state == "open" else 0.0,
            last_error=breaker.last_error[:300],
            runner=self.runner_id,
            at=time.time(),
        )
        try:
            kv = await self.bus.js.key_value(CIRCUITS_BUCKET)
            await kv.put(circuit_key(server.host, server.port), msgspec.json.encode(state))
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            log.debug("circuit state not published", error=str(exc))

    # ------------------------------------------------------------------ parent (fan-out)

    async def execute(self, queued: Queued) -> None:
        """Fan out to every target, wait for all children, publish the parent's outcome."""
        t0 = time.monotonic()
        cancel = self.cancels.setdefault(queued.execution_id, asyncio.Event())
        targets = queued.request.targets
        env = follow_up(queued, self.bus.producer)
        await self.bus.publish(
            Started(**env, runner=self.runner_id, target=",".join(targets)[:500])
        )
        children = tuple(
            ChildRef(execution_id=child_id(queued.execution_id, i), target=t)
            for i, t in enumerate(targets)
        )
        await self.bus.publish(FannedOut(**follow_up(queued, self.bus.producer), children=children))
        try:
            outcomes = await asyncio.gather(*(self._child(queued, c, cancel) for c in children))
        finally:
            self.cancels.pop(queued.execution_id, None)
        failed = [
            (c.target, o)
            for c, o in zip(children, outcomes, strict=True)
            if not isinstance(o, Succeeded)
        ]
        ok = len(children) - len(failed)
        durations = PhaseDurations(run_ms=_ms(t0))
        env = follow_up(queued, self.bus.producer)
        parent: TerminalEvent
        if not failed:
            parent = make_terminal(
                Succeeded, env, runner=self.runner_id, exit_code=0, durations=durations
            )
        else:
            summary = "; ".join(
                f"{t}: {o.error.kind if o.error else o.type}" for t, o in failed[:20]
            )
            first = failed[0][1].error
            error = ErrorInfo(
                kind=first.kind if first else "infrastructure",
                message=(
                    f"{ok} of {len(children)} targets succeeded; "
                    if ok
                    else "no target succeeded; "
                )
                + summary,
                hint="see each target with `cronium show <child id>`",
            )
            parent_cls: type[Partial | Failed] = Partial if ok else Failed
            parent = make_terminal(
                parent_cls,
                env,
                runner=self.runner_id,
                error=error,
                durations=durations,
            )
        await self.bus.publish(parent)
        log.info("fan-out finished", outcome=parent.type, ok=ok, targets=len(children))

    # ------------------------------------------------------------------ one child

    async def _child(self, parent: Queued, ref: ChildRef, cancel: asyncio.Event) -> TerminalEvent:
        request = msgspec.structs.replace(parent.request, targets=(ref.target,))
        env = follow_up(parent, self.bus.producer)
        env["execution_id"] = ref.execution_id
        queued = Queued(
            **env,
            request=request,
            lane=job_subject("ssh", request.priority),
            parent_id=parent.execution_id,
        )
        await self.bus.publish(queued)
        async with self._fanout:
            terminal = await self._run_child(queued, ref.target, cancel)
        await self.bus.publish(terminal)
        return terminal

    async def _run_child(self, queued: Queued, target: str, cancel: asyncio.Event) -> TerminalEvent:
        t0 = time.monotonic()
        await self.bus.publish(
            Started(**follow_up(queued, self.bus.producer), runner=self.runner_id, target=target)
        )
        r = self.settings.runner
        pump = LogPump(
            self._chunk_publisher(queued, target),
            flush_s=r.log_flush,
            max_lines=r.log_chunk_lines,
            max_bytes=r.log_chunk_bytes,
        )
        server: Server | None = None
        try:
            server = await load_server(self.bus.js, queued.user, target)
            breaker = self.breaker(server)
            if not breaker.allow():
                raise _circuit_open(server, breaker)
            box = box_from(self.settings)
            key = asyncssh.import_private_key(await get_secret(self.bus.js, box, server.key_secret))
            secret_values = {
                n: (await open_for(self.bus.js, box, queued.user, n)).decode(errors="replace")
                for n in queued.request.secrets
            }
            t_run = time.monotonic()
            result = await self._on_host(server, key, queued, pump, secret_values, cancel)
        except CroniumError as exc:
            if server is not None and exc.kind == "ssh_unreachable":
                breaker = self.breaker(server)
                breaker.record_failure(exc.message)
                await self._publish_circuit(server, breaker)
            return make_terminal(
                Failed,
                follow_up(queued, self.bus.producer),
                runner=self.runner_id,
                error=error_info(exc),
                durations=PhaseDurations(setup_ms=_ms(t0)),
            )
        breaker.record_success()
        await self._publish_circuit(server, breaker)
        return self._outcome(queued, result, pump, (t0, t_run))

    async def _on_host(  # noqa: PLR0917 - one call site; the parts are what a run needs
        self,
        server: Server,
        key: asyncssh.SSHKey,
        queued: Queued,
        pump: LogPump,
        secret_values: dict[str, str],
        cancel: asyncio.Event,
    ) -> RemoteExit:
        masker = Masker(secret_values.values())
        max_line = self.settings.runner.max_line_bytes
        splitters: dict[LogStream, LineSplitter] = {
            "stdout": LineSplitter(max_line, masker),
            "stderr": LineSplitter(max_line, masker),
        }

        async def on_output(stream: LogStream, data: bytes) -> None:
            await pump.add(stream, splitters[stream].feed(data))  # masked, then cut
            await pump.flush_due()

        lim = self.settings.limits
        timeout = queued.request.timeout_s or lim.default_timeout
        for retry in (False, True):  # a dead pooled connection is replaced once
            async with (
                self.pool.connection(server, key) as conn,
                self._helpers(conn, queued, secret_values) as workdir,
            ):
                flusher = asyncio.create_task(_flush_periodically(pump))
                code = queued.request.code
                try:
                    result = await run_remote(
                        conn,
                        queued.request.runtime,
                        with_helpers(queued.request.runtime, code) if workdir else code,
                        workdir=workdir,
                        timeout=timeout,
                        grace=lim.stop_grace,
                        cancel=cancel,
                        on_output=on_output,
                    )
                except _DEAD_CONNECTION as exc:
                    await self.pool.discard(conn)
                    if retry:
                        raise SshError(
                            "ssh_unreachable",
                            f"connection to {server.address} was lost: {exc}",
                            "check the server's health",
                        ) from exc
                    log.info("pooled connection was dead; reconnecting", server=server.name)
                    continue
                finally:
                    flusher.cancel()
                for stream, splitter in splitters.items():
                    await pump.add(stream, splitter.close())
                await pump.flush_all()
                return result
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    @contextlib.asynccontextmanager
    async def _helpers(
        self, conn: asyncssh.SSHClientConnection, queued: Queued, secret_values: dict[str, str]
    ) -> AsyncIterator[str | None]:
        """The runtime API for a remote script: served locally, reached through a Unix socket
        forwarded from a private directory on the host (which the wrapper removes).

        A script that never mentions ``cronium`` cannot call a helper: it gets no API, no
        prelude and no extra session to make the directory (``None``; the wrapper makes a temp
        dir) — one SSH session per target, as with plain ``ssh``."""
        if not uses_helpers(queued.request.code):
            yield None
            return
        local = self.settings.runtime_dir / f"ssh-{queued.execution_id}"
        local.mkdir(parents=True, exist_ok=True, mode=0o700)
        api = HelperApi(self.bus, queued, secret_values)
        remote = f"/tmp/cronium-{queued.execution_id}-{secrets.token_hex(4)}"  # noqa: S108 - made 0700 by us; mkdir fails if it exists
        listener: asyncssh.SSHListener | None = None
        try:
            await api.start(local / "api.sock")
            await prepare_remote_dir(conn, remote, api.token)
            try:
                listener = await conn.forward_remote_path(
                    f"{remote}/api.sock", str(local / "api.sock")
                )
            except asyncssh.Error as exc:
                log.warning("server refused socket forwarding; helpers unavailable", error=str(exc))
            yield remote
        finally:
            if listener is not None:
                listener.close()
            await api.stop()
            shutil.rmtree(local, ignore_errors=True)

    def _chunk_publisher(self, queued: Queued, target: str) -> Publish:
        async def publish(stream: LogStream, first_seq: int, lines: list[str]) -> None:
            await self.bus.publish(
                LogChunk(
                    **follow_up(queued, self.bus.producer),
                    stream=stream,
                    first_seq=first_seq,
                    lines=tuple(lines),
                    source=target,
                )
            )

        return publish

    def _outcome(
        self, queued: Queued, result: RemoteExit, pump: LogPump, times: tuple[float, float]
    ) -> TerminalEvent:
        t0, t_run = times
        target = queued.request.targets[0]
        cls: type[TerminalEvent] = Succeeded
        error: ErrorInfo | None = None
        if result.cancelled:
            cls, error = Cancelled, ErrorInfo(kind="cancelled", message="cancelled while running")
        elif result.timed_out:
            timeout = queued.request.timeout_s or self.settings.limits.default_timeout
            cls, error = (
                TimedOut,
                ErrorInfo(
                    kind="timeout",
                    message=f"ran past its timeout of {timeout:g}s on {target}; "
                    "its process group was stopped",
                    hint="raise --timeout",
                ),
            )
        elif result.exit_code != 0:
            cls, error = (
                Failed,
                ErrorInfo(
                    kind="nonzero_exit",
                    message=f"the script exited with code {result.exit_code} on {target}",
                ),
            )
        return make_terminal(
            cls,
            follow_up(queued, self.bus.producer),
            runner=self.runner_id,
            error=error,
            exit_code=result.exit_code,
            durations=PhaseDurations(setup_ms=round((t_run - t0) * 1000, 3), run_ms=_ms(t_run)),
            stdout_lines=pump.lines_sent("stdout"),
            stderr_lines=pump.lines_sent("stderr"),
        )


def _circuit_open(server: Server, breaker: CircuitBreaker) -> SshError:
    return SshError(
        "circuit_open",
        f"circuit for {server.host}:{server.port} is open after repeated failures "
        f"({breaker.last_error or 'unreachable'})",
        f"a trial goes through in {breaker.retry_in():.0f}s",
    )


async def _flush_periodically(pump: LogPump) -> None:
    while True:
        await asyncio.sleep(pump.flush_s / 2)
        await pump.flush_due()


def _ms(since: float) -> float:
    return round((time.monotonic() - since) * 1000, 3)
