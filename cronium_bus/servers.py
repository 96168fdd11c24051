"""The registry of users' servers: where to reach them, as whom, and which host keys to trust.

Servers have owners, like secrets. Records live in the KV bucket ``cronium_servers`` under
``u.<owner>.<name>`` (a user's own) or ``shared.<name>`` (an admin's, usable by the users in
``grant.<name>``); the private key is sealed like any secret under ``ssh-key.<record key>`` and
read only by the SSH runner. A request's target ``NAME`` resolves as its owner sees it: their
own server ``NAME``, else a shared one granted to them, else nothing — and the refusal does not
say which exists. People never touch the bucket: the sealing service writes it for them.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from typing import Final
from urllib.parse import urlsplit

import msgspec
from nats.js import JetStreamContext

from cronium_bus.errors import CroniumError, ErrorKind
from cronium_bus.provision import bucket_keys, kv_value
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
    owner: str = ""
    """Whose server it is; empty for an admin's shared server."""

    @property
    def record_key(self) -> str:
        """Its key in the servers bucket."""
        return owned_key(self.owner, self.name) if self.owner else shared_key(self.name)

    @property
    def key_secret(self) -> str:
        """Name of the secret holding the private key."""
        return f"{KEY_PREFIX}{self.record_key}"

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


def owned_key(owner: str, name: str) -> str:
    """The bucket key of ``owner``'s own server ``name``."""
    check_name(name)
    return f"u.{owner}.{name}"


def shared_key(name: str) -> str:
    """The bucket key of the shared server ``name``."""
    check_name(name)
    return f"shared.{name}"


def not_usable(name: str) -> ServerError:
    """The refusal for a target a requester may not use (never saying whether it exists)."""
    error = ServerError(
        f"server {name!r} is not one of yours or shared with you",
        hint=f"add it with `cronium servers add {name} ssh://USER@HOST:PORT --key FILE`, "
        "or ask an admin to share it with you",
    )
    error.kind = "permission"
    return error


async def save_server(js: JetStreamContext, server: Server) -> None:
    """Add or replace a server record (the sealing service's job: people have no bucket)."""
    kv = await js.key_value(SERVERS_BUCKET)
    await kv.put(server.record_key, msgspec.json.encode(server))


async def read_record(js: JetStreamContext, key: str) -> Server | None:
    """The server record under bucket key ``key`` (``None``: none, or unreadable)."""
    raw = await kv_value(js, SERVERS_BUCKET, key)
    if raw is None:
        return None
    try:
        return msgspec.json.decode(raw, type=Server)
    except msgspec.DecodeError:
        return None


async def grants_of(js: JetStreamContext, name: str) -> list[str]:
    """The users a shared server is granted to (``*``: every user)."""
    raw = await kv_value(js, SERVERS_BUCKET, f"grant.{name}")
    try:
        users = msgspec.json.decode(raw or b"[]")
    except msgspec.DecodeError:
        return []
    return [str(u) for u in users] if isinstance(users, list) else []


async def set_grants(js: JetStreamContext, name: str, users: list[str]) -> None:
    """Replace the users a shared server is granted to."""
    kv = await js.key_value(SERVERS_BUCKET)
    await kv.put(f"grant.{name}", msgspec.json.encode(sorted(set(users))))


async def resolve_server(js: JetStreamContext, owner: str, name: str) -> Server | None:
    """The server ``name`` as a request of ``owner`` sees it: their own, else a shared one
    granted to them; ``None`` when neither."""
    if not NAME_RE.fullmatch(name):
        return None
    own = await read_record(js, owned_key(owner, name))
    if own is not None:
        return own
    grants = await grants_of(js, name)
    if owner in grants or "*" in grants:
        return await read_record(js, shared_key(name))
    return None


async def load_server(js: JetStreamContext, owner: str, name: str) -> Server:
    """The server ``name`` for ``owner``, or the refusal naming it."""
    server = await resolve_server(js, owner, name)
    if server is None:
        raise not_usable(name)
    return server


async def list_servers(js: JetStreamContext, owner: str | None = None) -> list[Server]:
    """The servers ``owner`` may use (``None``: an admin's view, every one).

    A removed server's key keeps its delete marker; reading it then finds nothing and skips it.
    """
    servers = []
    for key in await bucket_keys(js, SERVERS_BUCKET):
        if key.startswith("grant."):
            continue
        if owner is not None and not key.startswith(f"u.{owner}."):
            if not key.startswith("shared."):
                continue
            grants = await grants_of(js, key.removeprefix("shared."))
            if owner not in grants and "*" not in grants:
                continue
        server = await read_record(js, key)
        if server is not None:
            servers.append(server)
    return servers


async def remove_server(js: JetStreamContext, server: Server) -> None:
    """Forget a server record (its key secret is removed by the caller)."""
    kv = await js.key_value(SERVERS_BUCKET)
    await kv.purge(server.record_key)
    if not server.owner:
        await kv.purge(f"grant.{server.name}")


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
    circuits: dict[str, CircuitState] = {}
    for key in await bucket_keys(js, CIRCUITS_BUCKET):
        value = await kv_value(js, CIRCUITS_BUCKET, key)
        if value is None:
            continue
        with contextlib.suppress(msgspec.DecodeError):
            circuits[key] = msgspec.json.decode(value, type=CircuitState)
    return circuits
