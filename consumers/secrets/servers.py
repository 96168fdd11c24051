"""Servers through the sealing service: ``cronium.ctl.servers.<role>.<requester>.<action>``.

A server's private key is a secret, so registering one needs the master key: people hand the
record and the key over their authenticated connection and this module stores both, under the
requester's own name (``u.<requester>.<name>``) or, for an admin's ``--shared`` server,
``shared.<name>`` with its grants. The key is checked to be a private key before it is sealed;
``list`` answers with the servers the requester may use and their circuit states (people read
no bucket themselves).
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any, Final

import asyncssh
import msgspec
import structlog
from nats.js import JetStreamContext

from consumers.secrets.requests import NameOnly, Nothing, refused
from cronium_bus.errors import CroniumError
from cronium_bus.ids import is_valid_id
from cronium_bus.secrets import SecretBox, delete_secret, put_secret
from cronium_bus.servers import (
    CircuitState,
    Server,
    ServerError,
    check_name,
    circuit_key,
    list_servers,
    not_usable,
    owned_key,
    read_circuits,
    read_record,
    remove_server,
    save_server,
    set_grants,
    shared_key,
)

log = structlog.get_logger(__name__)
MAX_KNOWN_HOSTS_BYTES: Final = 64 * 1024
MAX_GRANTS: Final = 1000
_HOST_RE_BAD: Final = frozenset(" \t\r\n/@")


class AddServer(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``add``: the record, the private key as base64, whether it is shared, to whom."""

    name: str
    user: str
    host: str
    port: int = 22
    known_hosts: str
    key_b64: str
    shared: bool = False
    grant: tuple[str, ...] = ()


def _refuse(message: str, hint: str = "") -> ServerError:
    return refused(ServerError(message, hint=hint))


def _checked(role: str, requester: str, req: AddServer) -> Server:
    check_name(req.name)
    if req.shared and role != "admin":
        raise _refuse("only an admin adds shared servers", "drop --shared")
    if req.grant and not req.shared:
        raise ServerError("--grant needs --shared", hint="grants apply to shared servers")
    if len(req.grant) > MAX_GRANTS or not all(g == "*" or is_valid_id(g) for g in req.grant):
        raise ServerError("grant names users ([A-Za-z0-9_-]{1,64}) or *")
    if not is_valid_id(req.user) or not 1 <= req.port <= 65535:
        raise ServerError("user must be 1-64 of [A-Za-z0-9_-] and port 1-65535")
    if not req.host or len(req.host) > 253 or _HOST_RE_BAD & set(req.host):
        raise ServerError(f"{req.host[:80]!r} is not a host name or address")
    if len(req.known_hosts.encode()) > MAX_KNOWN_HOSTS_BYTES or not req.known_hosts.strip():
        raise ServerError(f"known_hosts must be 1 byte to {MAX_KNOWN_HOSTS_BYTES:,} bytes")
    return Server(
        name=req.name,
        user=req.user,
        host=req.host,
        port=req.port,
        known_hosts=req.known_hosts,
        owner="" if req.shared else requester,
    )


def _private_key(key_b64: str) -> bytes:
    try:
        key = base64.b64decode(key_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ServerError("key_b64 is not base64") from exc
    try:
        asyncssh.import_private_key(key)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise ServerError(
            f"the key is not an unencrypted private key: {exc}",
            hint="give the private key file (e.g. ~/.ssh/id_ed25519), without a passphrase",
        ) from exc
    return key


def _circuit(c: CircuitState | None) -> dict[str, str]:
    if c is None:
        return {"state": "closed"}  # no runner has tried this host yet
    return {
        "state": c.state,
        "failures": str(c.failures),
        "retry_in_s": str(c.retry_in_s),
        "last_error": c.last_error,
        "age_s": f"{time.time() - c.at:.0f}",
    }


async def handle_servers(
    js: JetStreamContext, box: SecretBox, who: tuple[str, str], action: str, data: bytes
) -> Any:
    """One ``servers`` request of ``who`` (role, requester); raises :class:`CroniumError` with
    the reason when refused."""
    role, requester = who
    try:
        if action == "add":
            req = msgspec.json.decode(data, type=AddServer)
            server = _checked(role, requester, req)
            await put_secret(js, box, server.key_secret, _private_key(req.key_b64))
            await save_server(js, server)
            if req.shared:
                await set_grants(js, server.name, list(req.grant))
            log.info("server stored", key=server.record_key, by=requester)
            return {"name": server.name, "address": server.address, "shared": req.shared}
        if action == "rm":
            rm = msgspec.json.decode(data, type=NameOnly)
            if rm.shared and role != "admin":
                raise _refuse("only an admin removes shared servers", "drop --shared")
            check_name(rm.name)
            key = shared_key(rm.name) if rm.shared else owned_key(requester, rm.name)
            found = await read_record(js, key)
            if found is None:
                raise not_usable(rm.name)
            await remove_server(js, found)
            await delete_secret(js, found.key_secret)
            log.info("server removed", key=key, by=requester)
            return {"name": found.name}
        if action == "list":
            msgspec.json.decode(data or b"{}", type=Nothing)
            circuits = await read_circuits(js)  # one listing, not a read per server
            return [
                {
                    "name": s.name,
                    "owner": s.owner or "(shared)",
                    "address": s.address,
                    "circuit": _circuit(circuits.get(circuit_key(s.host, s.port))),
                }
                for s in await list_servers(js, None if role == "admin" else requester)
            ]
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ServerError(f"malformed {action} request: {exc}") from exc
    raise CroniumError(f"unknown action {action!r}", hint="use add, rm or list")
