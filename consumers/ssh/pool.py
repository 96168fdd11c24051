"""An asyncssh connection pool per (host, port, user), with host-key checking always on.

Up to ``max_connections`` connections per server, each carrying up to ``sessions_per_connection``
sessions; idle connections close after ``idle_timeout``; keepalives detect dead peers; a dead
connection found when opening a session is replaced without failing the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncssh
import structlog

from cronium_bus.errors import CroniumError, ErrorKind
from cronium_bus.servers import Server
from cronium_bus.settings import SshSettings

log = structlog.get_logger(__name__)
PoolKey = tuple[str, str, int, str, str, str]
"""(server record, host, port, user, known_hosts digest, client key fingerprint): a pooled
connection serves only the owner's server record it was made for, with that key and trust."""


class SshError(CroniumError):
    """An SSH failure with the kind a person can act on."""

    def __init__(self, kind: ErrorKind, message: str, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.kind = kind


@dataclass
class _Conn:
    conn: asyncssh.SSHClientConnection
    sessions: int = 0
    last_used: float = field(default_factory=time.monotonic)

    @property
    def alive(self) -> bool:
        return not self.conn.is_closed()


async def describe_host_key(server: Server, timeout: float) -> str:
    """The fingerprint of the key the server presents (for a host-key error message)."""
    try:
        key = await asyncio.wait_for(
            asyncssh.get_server_host_key(server.host, server.port), timeout
        )
    except (OSError, asyncssh.Error, TimeoutError):
        return "unknown"
    return key.get_fingerprint() if key is not None else "unknown"


class SshPool:
    """Connections to users' servers, shared by every execution of one runner process."""

    def __init__(self, settings: SshSettings) -> None:
        self.settings = settings
        self._conns: dict[PoolKey, list[_Conn]] = {}
        self._pending: dict[PoolKey, int] = {}
        self._cond = asyncio.Condition()
        self.opened: dict[PoolKey, int] = {}
        self._reaper: asyncio.Task[None] | None = None

    @staticmethod
    def key_of(server: Server, client_key: asyncssh.SSHKey) -> PoolKey:
        """The pool key of a server as its owner registered it, with this key: two owners'
        records of one address never share a connection (nor a record with its old key)."""
        trust = hashlib.sha256(server.known_hosts.encode()).hexdigest()[:16]
        fingerprint = client_key.get_fingerprint()
        return (server.record_key, server.host, server.port, server.user, trust, fingerprint)

    def connections(self, server: Server) -> int:
        """Open connections to ``server`` (its record) now."""
        return sum(
            c.alive
            for key, conns in self._conns.items()
            if key[0] == server.record_key
            for c in conns
        )

    def open_connections(self) -> int:
        """Open connections to all servers now."""
        return sum(c.alive for conns in self._conns.values() for c in conns)

    async def _connect(self, server: Server, client_key: asyncssh.SSHKey) -> _Conn:
        s = self.settings
        try:
            known = asyncssh.import_known_hosts(server.known_hosts)
        except (ValueError, asyncssh.Error) as exc:
            raise SshError(
                "ssh_host_key",
                f"the known_hosts of {server.name} cannot be read",
                "re-add the server with --known-hosts FILE or --host-key LINE",
            ) from exc
        try:
            conn = await asyncio.wait_for(
                asyncssh.connect(
                    server.host,
                    server.port,
                    username=server.user,
                    client_keys=[client_key],
                    known_hosts=known,
                    agent_path=None,
                    config=[],
                    keepalive_interval=s.keepalive,
                    keepalive_count_max=3,
                    connect_timeout=s.connect_timeout,
                ),
                s.connect_timeout + 1,
            )
        except asyncssh.HostKeyNotVerifiable as exc:
            fingerprint = await describe_host_key(server, s.connect_timeout)
            raise SshError(
                "ssh_host_key",
                f"{server.name} ({server.host}:{server.port}) presented host key {fingerprint}, "
                "which is not trusted; refused",
                "if the server's key really changed, re-add it with the new --host-key",
            ) from exc
        except asyncssh.PermissionDenied as exc:
            raise SshError(
                "ssh_auth",
                f"{server.address} refused the key: {exc.reason}",
                "check the user and that the key is in authorized_keys",
            ) from exc
        except (OSError, TimeoutError, asyncssh.Error) as exc:
            raise SshError(
                "ssh_unreachable",
                f"cannot reach {server.host}:{server.port}: {exc or type(exc).__name__}",
                "check that the server is up and the port is open",
            ) from exc
        key = self.key_of(server, client_key)
        self.opened[key] = self.opened.get(key, 0) + 1
        return _Conn(conn)

    @contextlib.asynccontextmanager
    async def connection(
        self, server: Server, client_key: asyncssh.SSHKey
    ) -> AsyncIterator[asyncssh.SSHClientConnection]:
        """A connection with a session slot reserved for the caller."""
        key = self.key_of(server, client_key)
        s = self.settings
        chosen: _Conn | None = None
        async with self._cond:
            while chosen is None:
                conns = [c for c in self._conns.get(key, []) if c.alive]
                self._conns[key] = conns
                free = [c for c in conns if c.sessions < s.sessions_per_connection]
                if free:
                    chosen = min(free, key=lambda c: c.sessions)
                    chosen.sessions += 1
                elif len(conns) + self._pending.get(key, 0) < s.max_connections:
                    self._pending[key] = self._pending.get(key, 0) + 1
                    break
                else:
                    await self._cond.wait()
        if chosen is None:
            try:
                chosen = await self._connect(server, client_key)
                chosen.sessions = 1
            finally:
                async with self._cond:
                    self._pending[key] -= 1
                    if chosen is not None:
                        self._conns.setdefault(key, []).append(chosen)
                    self._cond.notify_all()
        try:
            yield chosen.conn
        finally:
            async with self._cond:
                chosen.sessions -= 1
                chosen.last_used = time.monotonic()
                self._cond.notify_all()

    async def discard(self, conn: asyncssh.SSHClientConnection) -> None:
        """Drop a connection found dead."""
        conn.abort()
        async with self._cond:
            for key, conns in self._conns.items():
                self._conns[key] = [c for c in conns if c.conn is not conn]
            self._cond.notify_all()

    async def close_idle(self) -> None:
        """Close connections unused for ``idle_timeout``."""
        now = time.monotonic()
        async with self._cond:
            for key, conns in self._conns.items():
                keep = []
                for c in conns:
                    if c.sessions == 0 and now - c.last_used > self.settings.idle_timeout:
                        c.conn.close()
                    elif c.alive:
                        keep.append(c)
                self._conns[key] = keep

    async def run_reaper(self) -> None:
        """Close idle connections periodically (run as a task)."""
        while True:
            await asyncio.sleep(min(30.0, self.settings.idle_timeout / 2))
            await self.close_idle()

    async def close(self) -> None:
        """Close every connection; idempotent."""
        async with self._cond:
            for conns in self._conns.values():
                for c in conns:
                    c.conn.close()
            self._conns.clear()
