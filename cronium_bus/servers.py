"""The registry of users' servers: where to reach them, as whom, and which host keys to trust.

Records live in the KV bucket ``cronium_servers``; the private key of a server is stored like any
secret (encrypted at rest) under ``ssh-key.<name>`` and never logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from typing import Final
from urllib.parse import urlsplit

import msgspec
import nats.js.errors
from nats.js import JetStreamContext

from cronium_bus.errors import CroniumError, ErrorKind
from cronium_bus.provision import kv_value
from cronium_bus.subjects import CIRCUITS_BUCKET, SERVERS_BUCKET

NAME_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
KEY_PREFIX: Final = "ssh-key."  # secrets holding servers' private keys: never for scripts


class ServerError(CroniumError):
    """A server record is invalid or missing."""

    kind: ErrorKind = "validation"


class Server(msgspec.Struct, frozen=True, kw_only=True):
    """One registered server."""

    name: str
    user: str
    host: str
    port: int = 22
    known_hosts: str
    """known_hosts lines trusted for this server (host-key verification is never disabled)."""

    @property
    def key_secret(self) -> str:
        """Name of the secret holding the private key."""
        return f"{KEY_PREFIX}{self.name}"

    @property
    def address(self) -> str:
        """``user@host:port``."""
        return f"{self.user}@{self.host}:{self.port}"


def parse_target(url: str) -> tuple[str, str, int]:
    """``ssh://USER@HOST:PORT`` → (user, host, port)."""
    parts = urlsplit(url)
    if parts.scheme != "ssh" or not parts.hostname or not parts.username:
        raise ServerError(
            f"{url!r} is not an ssh://USER@HOST[:PORT] address",
            hint="e.g. ssh://deploy@10.0.0.5:22",
        )
    try:
        port = parts.port or 22
    except ValueError as exc:
        raise ServerError(f"bad port in {url!r}") from exc
    return parts.username, parts.hostname, port


def adhoc_name(url: str) -> str:
    """A stable server name for a target given inline (``--target ssh://...``)."""
    return "adhoc-" + hashlib.sha256(url.encode()).hexdigest()[:12]


def check_name(name: str) -> None:
    """Refuse names unsafe as KV keys and subject tokens."""
    if not NAME_RE.fullmatch(name):
        raise ServerError(f"{name!r} is not a valid server name", hint="use 1-64 of [A-Za-z0-9_-]")


async def save_server(js: JetStreamContext, server: Server) -> None:
    """Add or replace a server record."""
    check_name(server.name)
    kv = await js.key_value(SERVERS_BUCKET)
    await kv.put(server.name, msgspec.json.encode(server))


async def load_server(js: JetStreamContext, name: str) -> Server:
    """A server record by name."""
    check_name(name)
    record = await kv_value(js, SERVERS_BUCKET, name)
    if record is None:
        raise ServerError(
            f"no server named {name}",
            hint=f"add it with `cronium servers add {name} ssh://USER@HOST:PORT --key FILE`",
        )
    return msgspec.json.decode(record, type=Server)


async def list_servers(js: JetStreamContext) -> list[Server]:
    """Every registered server.

    The names come from the bucket stream's subject list (one request), not from a KV watcher:
    ``kv.keys()`` was seen to return before it had every key on a loaded machine. A removed
    server's subject keeps its delete marker; ``load_server`` then finds nothing and skips it.
    """
    prefix = f"$KV.{SERVERS_BUCKET}."
    info = await js.stream_info(f"KV_{SERVERS_BUCKET}", subjects_filter=f"{prefix}>")
    names = [subject.removeprefix(prefix) for subject in (info.state.subjects or {})]
    servers = []
    for name in sorted(names):
        try:
            servers.append(await load_server(js, name))
        except ServerError:
            continue
    return servers


async def remove_server(js: JetStreamContext, name: str) -> None:
    """Forget a server."""
    check_name(name)
    kv = await js.key_value(SERVERS_BUCKET)
    await kv.purge(name)


def circuit_key(host: str, port: int) -> str:
    """The key of a host's circuit state in the circuits bucket."""
    return f"{host.replace(':', '_')}_{port}"


class CircuitState(msgspec.Struct, frozen=True, kw_only=True):
    """What `cronium servers list` shows of a host's circuit."""

    state: str
    failures: int
    retry_in_s: float
    last_error: str
    runner: str
    at: float


async def read_circuits(js: JetStreamContext) -> dict[str, CircuitState]:
    """Every circuit state in the circuits bucket, by key (``host_port``)."""
    kv = await js.key_value(CIRCUITS_BUCKET)
    try:
        keys = await kv.keys()
    except nats.js.errors.NoKeysError:
        return {}
    circuits: dict[str, CircuitState] = {}
    for key in sorted(keys):
        value = await kv_value(js, CIRCUITS_BUCKET, key)
        if value is None:
            continue
        with contextlib.suppress(msgspec.DecodeError):
            circuits[key] = msgspec.json.decode(value, type=CircuitState)
    return circuits
