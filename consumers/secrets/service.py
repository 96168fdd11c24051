"""The sealing service: the only client-facing holder of the secret key (secrets and servers).

People never hold the key. ``cronium secret set`` hands the value over its authenticated NATS
connection (request-reply on ``cronium.ctl.secrets.<role>.<requester>.<action>``); this service
seals it and stores it under the requester's own name. Runners open the secrets a request names,
as that request's owner may see them.

Who is asking is the subject, and nats-server checks the subject: a ``user``'s permission
template lets them publish only on ``cronium.ctl.secrets.user.<their name>.*``; ``admin`` subjects
are open only to unrestricted identities (the stack's own and ``--role admin``). So:

- a user sets, lists and removes their own secrets (``u.<user>.<name>``);
- an admin also creates shared secrets (``shared.<name>``) and grants them to users
  (``--grant USER``, ``*`` for everyone);
- servers go the same way on ``cronium.ctl.servers.<role>.<requester>.<add|rm|list>``
  (:mod:`consumers.secrets.servers`): a user's own, an admin's shared ones with grants; their
  private keys are sealed as ``ssh-key.<record>``, a name no secret request and no execution
  may use.

Every request is validated (a strict body, a name, a size) and answered with ``{"ok": true,
"result": …}`` or ``{"ok": false, "kind", "error", "hint"}``; a malformed one never stops the
service.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from typing import Any, Final, Literal

import msgspec
import nats.errors
import structlog
from nats.aio.msg import Msg

from consumers.secrets.requests import NameOnly, Nothing, refused
from consumers.secrets.servers import handle_servers
from cronium_bus.bus import Bus
from cronium_bus.errors import CroniumError
from cronium_bus.health import Heartbeat
from cronium_bus.ids import is_valid_id
from cronium_bus.lifecycle import Stopper
from cronium_bus.provision import provision
from cronium_bus.secrets import (
    MAX_SECRET_BYTES,
    MIN_SECRET_CHARS,
    SecretError,
    box_from,
    delete_secret,
    names_for,
    owned_key,
    put_secret,
    set_grants,
    shared_key,
)
from cronium_bus.servers import KEY_PREFIX

log = structlog.get_logger(__name__)
SUBJECTS: Final = ("cronium.ctl.secrets.>", "cronium.ctl.servers.>")
MAX_REQUEST_BYTES: Final = 4 * MAX_SECRET_BYTES  # base64 of the largest value or key, known_hosts
MAX_GRANTS: Final = 1000


class SetSecret(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``set``: the value as base64, whether it is shared, to whom."""

    name: str
    value_b64: str
    shared: bool = False
    grant: tuple[str, ...] = ()


def _refuse(message: str, hint: str = "") -> SecretError:
    return refused(SecretError(message, hint=hint))


def _parse_subject(subject: str) -> tuple[str, Literal["user", "admin"], str, str]:
    """``(family, role, requester, action)`` of
    ``cronium.ctl.<secrets|servers>.<role>.<requester>.<action>``."""
    tokens = subject.split(".")
    if (
        len(tokens) != 6
        or tokens[2] not in ("secrets", "servers")
        or tokens[3] not in ("user", "admin")
        or not is_valid_id(tokens[4])
    ):
        raise SecretError(
            f"{subject[:200]!r} is not cronium.ctl.<secrets|servers>.<user|admin>.<requester>."
            "<action>"
        )
    role: Literal["user", "admin"] = "admin" if tokens[3] == "admin" else "user"
    return tokens[2], role, tokens[4], tokens[5]


class SecretsService:
    """Answers ``cronium.ctl.secrets.>`` (a queue group: run as many as you like)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def run(self, stopper: Stopper) -> None:
        """Serve until stopped."""
        await provision(self.bus.js, self.bus.settings)
        box_from(self.bus.settings)  # no key: fail at start, not at the first request
        subs = [
            await self.bus.nc.subscribe(subject, queue="secrets", cb=self._on_request)
            for subject in SUBJECTS
        ]
        try:
            async with Heartbeat(self.bus.js, "secrets", self.bus.settings.runner.heartbeat):
                await stopper.wait()
        finally:
            for sub in subs:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()

    async def _on_request(self, msg: Msg) -> None:
        tokens = msg.subject.split(".")
        # nats-server does not check a reply subject against the publisher's permissions:
        # answer a user only in their own inbox, never onto a bucket or another's subject
        foreign = len(tokens) == 6 and tokens[3] == "user" and msg.reply is not None
        if foreign and not (msg.reply or "").startswith(f"_INBOX_{tokens[4]}."):
            log.warning("request with a foreign reply subject dropped", subject=msg.subject)
            return
        try:
            reply: dict[str, Any] = {"ok": True, "result": await self.handle(msg.subject, msg.data)}
        except CroniumError as exc:
            reply = {"ok": False, "kind": exc.kind, "error": exc.message, "hint": exc.hint}
        except Exception as exc:  # a bug must not stop the service; the requester is told
            log.exception("secrets request failed", subject=msg.subject)
            reply = {"ok": False, "kind": "infrastructure", "error": type(exc).__name__}
        if msg.reply:
            with contextlib.suppress(nats.errors.Error):
                await msg.respond(msgspec.json.encode(reply))

    async def handle(self, subject: str, data: bytes) -> Any:
        """One request; raises :class:`CroniumError` with the reason when refused."""
        family, role, requester, action = _parse_subject(subject)
        if len(data) > MAX_REQUEST_BYTES:
            raise SecretError(f"request is {len(data):,} bytes, over {MAX_REQUEST_BYTES:,}")
        if family == "servers":
            box = box_from(self.bus.settings)
            return await handle_servers(self.bus.js, box, (role, requester), action, data)
        try:
            if action == "set":
                return await self._set(role, requester, msgspec.json.decode(data, type=SetSecret))
            if action == "rm":
                return await self._rm(role, requester, msgspec.json.decode(data, type=NameOnly))
            if action == "list":
                msgspec.json.decode(data or b"{}", type=Nothing)
                return await names_for(self.bus.js, None if role == "admin" else requester)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise SecretError(f"malformed {action} request: {exc}") from exc
        raise SecretError(f"unknown action {action!r}", hint="use set, rm or list")

    def _key(self, role: str, requester: str, name: str, *, shared: bool) -> str:
        if name.startswith(KEY_PREFIX):
            raise _refuse(
                f"{name!r} is reserved for servers' private keys",
                "register a server with `cronium servers add NAME URL --key FILE`",
            )
        if shared:
            if role != "admin":
                raise _refuse("only an admin creates shared secrets", "drop --shared")
            return shared_key(name)
        return owned_key(requester, name)

    async def _set(self, role: str, requester: str, req: SetSecret) -> str:
        key = self._key(role, requester, req.name, shared=req.shared)
        if req.grant and not req.shared:
            raise SecretError("--grant needs --shared", hint="grants apply to shared secrets")
        if len(req.grant) > MAX_GRANTS or not all(g == "*" or is_valid_id(g) for g in req.grant):
            raise SecretError("grant names users ([A-Za-z0-9_-]{1,64}) or *")
        try:
            value = base64.b64decode(req.value_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SecretError("value_b64 is not base64") from exc
        lines = value.decode(errors="replace").split("\n")
        if any(0 < len(line.strip()) < MIN_SECRET_CHARS for line in lines):
            raise SecretError(
                f"a line of the secret is shorter than {MIN_SECRET_CHARS} characters: logs are "
                "masked line by line, and so short a line cannot be masked",
                hint=f"make every line at least {MIN_SECRET_CHARS} characters, or store the "
                "lines as separate secrets",
            )
        await put_secret(self.bus.js, box_from(self.bus.settings), key, value)
        if req.shared:
            await set_grants(self.bus.js, req.name, list(req.grant))
        log.info("secret stored", key=key, by=requester)
        return key

    async def _rm(self, role: str, requester: str, req: NameOnly) -> str:
        key = self._key(role, requester, req.name, shared=req.shared)
        await delete_secret(self.bus.js, key)
        log.info("secret removed", key=key, by=requester)
        return key
