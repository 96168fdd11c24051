"""The bus client: one NATS connection with JetStream, publishing events with ``Nats-Msg-Id``.

``Bus`` is an async context manager with an idempotent close. Message ids make publishing
idempotent inside the streams' duplicate window: every lifecycle event of an attempt has a
deterministic id, and all terminal events of an attempt share one (``<id>:<attempt>:terminal``),
so a runner that publishes twice — after a crash or a redelivery — still yields one terminal event.

The duplicate window is stream-wide and anyone who may publish may set any ``Nats-Msg-Id``: a user
who guesses another's execution id could take the id of its terminal event first, on their own
subject, so that the real one is dropped as a duplicate. So when the stream calls a publish of
the service's a duplicate, the service reads what holds the id; if that is another execution's
or owner's, the id was taken, and the event is published again under an id of its own (a random
suffix — readers already ignore a repeated event, and nothing is lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import uuid
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import msgspec
import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck

from cronium_bus.codec import encode
from cronium_bus.errors import BusUnavailableError, CroniumError, PermissionDeniedError
from cronium_bus.events import (
    ActionFired,
    Event,
    HelperCalled,
    LogChunk,
    NotificationRequested,
    ScheduleRunEnded,
    Terminal,
    WorkflowEnded,
    WorkflowRejected,
    short_type,
)
from cronium_bus.identity.authority import IdentityError, identity_of
from cronium_bus.identity.roles import inbox_prefix
from cronium_bus.settings import Settings
from cronium_bus.subjects import ANY_OWNER, exec_subject, log_subject

log = structlog.get_logger(__name__)
_DRAIN_TIMEOUT_S = 3.0
# the last tokens people may publish on
_PEOPLES = frozenset({"requested", "cancel_requested", "workflow_requested"})
_T = TypeVar("_T")


def credential_identity(creds: Path) -> tuple[str | None, str | None]:
    """``(name, role)`` inside a ``.creds`` file (``None`` where it cannot be read)."""
    try:
        name, role = identity_of(creds)
    except IdentityError:
        return None, None
    return name or None, role


class _State(enum.Enum):
    NEW = "new"
    CONNECTED = "connected"
    CLOSED = "closed"


def message_id(event: Event) -> str:
    """The deterministic ``Nats-Msg-Id`` of an event (see module docstring)."""
    if event.type == "execution.requested":
        return event.execution_id
    if isinstance(event, WorkflowEnded | WorkflowRejected):
        return f"{event.execution_id}:workflow:terminal"  # one terminal per workflow
    node = getattr(event, "node", None)
    if isinstance(node, str):  # a node's event in its workflow: one of each kind per node
        return f"{event.execution_id}:{short_type(event.type)}:{node}"
    fire_at = getattr(event, "fire_at", None)
    if fire_at is not None:  # a schedule's fire: one event of each kind per fire
        return f"{event.execution_id}:{short_type(event.type)}:{int(fire_at.timestamp() * 1000)}"
    if isinstance(event, ScheduleRunEnded):
        return f"{event.execution_id}:run_ended:{event.run_id}"
    if event.type.startswith("schedule."):  # created, updated, paused, ...: each its own
        return event.event_id
    if isinstance(event, ActionFired | NotificationRequested):
        return f"{event.execution_id}:{short_type(event.type)}:{event.when}:{event.index}"
    if isinstance(event, Terminal):
        return f"{event.execution_id}:{event.attempt}:terminal"
    if isinstance(event, LogChunk):
        return f"{event.execution_id}:{event.attempt}:{event.stream}:{event.first_seq}"
    if isinstance(event, HelperCalled) or event.type in {
        "execution.cancel_requested",
        "execution.output_set",
        "execution.condition_set",
        "variable.set",
    }:
        return event.event_id
    return f"{event.execution_id}:{event.attempt}:{short_type(event.type)}"


def subject_of(event: Event) -> str:
    """Where an event is published: log chunks on the log subject, the rest on the exec subject."""
    if isinstance(event, LogChunk):
        return log_subject(event.user, event.execution_id)
    return exec_subject(event.user, event.execution_id, event.type)


class Bus:
    """A connection to NATS and JetStream for one process."""

    def __init__(self, settings: Settings, *, name: str = "cronium") -> None:
        self.settings = settings
        self.name = name
        self.producer = f"{name}@{socket.gethostname()}"
        self.identity: str | None = None  # the credential's name (None: user/password or none)
        self.role: str | None = None  # its role tag (None: a stack identity, unrestricted)
        self.violations: list[str] = []  # permission refusals the server reported, newest last
        self._violated = asyncio.Event()
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._state = _State.NEW

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect with reconnect and backoff; raise :class:`BusUnavailableError` if unreachable."""
        if self._state is _State.CONNECTED:
            return

        async def on_disconnect() -> None:
            if self._state is not _State.CONNECTED:
                return  # closing on purpose
            log.warning("nats disconnected; reconnecting", url=self.settings.nats_url)

        async def on_reconnect() -> None:
            log.info("nats reconnected", url=self.settings.nats_url)

        connected = False
        refused = asyncio.Event()  # the server answered, but turned the credentials down

        async def on_error(exc: Exception) -> None:
            text = str(exc).lower()
            if "permissions violation" in text:
                self.violations.append(text)
                self._violated.set()
                log.debug("nats refused an action", error=str(exc))
            elif connected:
                log.warning("nats error", error=str(exc))
            elif "authorization" in text or "revoked" in text:
                refused.set()

        creds = self.settings.credentials()
        if creds is not None and not creds.is_file():
            raise BusUnavailableError(
                f"credentials file {creds} does not exist",
                hint="pass --creds FILE (or CRONIUM_CREDS) naming a .creds file from "
                "`cronium user add`, or the admin credential `cronium up` printed",
            )
        name, self.role = credential_identity(creds) if creds is not None else (None, None)
        self.identity = name

        # nats-py retries the first connection forever when reconnecting is allowed, so the
        # first connection is bounded here; once connected, reconnects go on without limit.
        try:
            self._nc = await _first_of(
                nats.connect(
                    servers=[u.strip() for u in self.settings.nats_url.split(",") if u.strip()],
                    user=self.settings.nats_user,
                    password=(
                        self.settings.nats_password.get_secret_value()
                        if self.settings.nats_password
                        else None
                    ),
                    user_credentials=str(creds) if creds is not None else None,
                    inbox_prefix=inbox_prefix(name) if name else "_INBOX",
                    name=self.name,
                    connect_timeout=min(2.0, self.settings.connect_timeout),
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    error_cb=on_error,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                ),
                refused,
                timeout=self.settings.connect_timeout,
            )
        except _Refused as exc:
            who = name or self.settings.nats_user
            raise PermissionDeniedError(
                f"NATS at {self.settings.nats_url} refused the credentials"
                + (f" of {who}" if who else " (none were given)"),
                hint=(
                    "check CRONIUM_NATS_USER and CRONIUM_NATS_PASSWORD (a server of your own "
                    "with user/password auth; Cronium's deploy/nats configs use credentials)"
                    if self.settings.nats_user
                    else "pass --creds FILE (or CRONIUM_CREDS) with valid credentials: the "
                    "admin credential `cronium up` printed, or one from `cronium user add`; a "
                    "removed user's credentials stay refused"
                ),
            ) from exc
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            raise BusUnavailableError(
                f"cannot reach NATS at {self.settings.nats_url} "
                f"(waited {self.settings.connect_timeout:g}s)",
                hint="start the stack with `cronium up`, or point --nats-url / CRONIUM_NATS_URL "
                "at a running server",
            ) from exc
        connected = True
        self._js = self._nc.jetstream(timeout=10.0)
        self._state = _State.CONNECTED

    @property
    def scope(self) -> str:
        """Whose executions this connection reads: its own name for a ``user``, anyone's for
        the service, admins and auditors (nats-server enforces it either way)."""
        if self.role == "user" and self.identity:
            return self.identity
        return ANY_OWNER

    def acting_user(self, asked: str | None) -> str:
        """The ``user`` of a request this connection publishes: a ``user`` is always
        themselves; the stack's identities and admins act as ``asked`` or the settings' user."""
        if self.role == "user" and self.identity:
            if asked not in (None, self.identity):
                raise PermissionDeniedError(
                    f"{self.identity} may not act as {asked}",
                    hint="drop --user: a user's requests are always their own",
                )
            return self.identity
        return asked or self.settings.user

    @property
    def nc(self) -> Client:
        """The core NATS client."""
        if self._nc is None or self._state is not _State.CONNECTED:
            raise BusUnavailableError("bus is not connected", hint="use `async with Bus(...)`")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context."""
        if self._js is None or self._state is not _State.CONNECTED:
            raise BusUnavailableError("bus is not connected", hint="use `async with Bus(...)`")
        return self._js

    async def publish(
        self,
        event: Event,
        *,
        subject: str | None = None,
        msg_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> PubAck:
        """Publish one event to JetStream with its deterministic message id.

        Raises :class:`PermissionDeniedError` as soon as the server reports that this connection
        may not publish there (instead of waiting for an acknowledgement that never comes).
        """
        target = subject or subject_of(event)
        data = encode(event)
        msg_id = msg_id or message_id(event)
        ack = await self.refusable(
            self.js.publish(target, data, headers={**(headers or {}), "Nats-Msg-Id": msg_id}),
            target,
        )
        if not ack.duplicate or self.role is not None:
            return ack  # people have no stream API to look with; their ids are their own
        if await self._holds_id(ack, target):
            return ack
        log.warning("message id taken on another subject", subject=target, msg_id=msg_id)
        return await self.js.publish(
            target, data, headers={**(headers or {}), "Nats-Msg-Id": f"{msg_id}:{uuid.uuid4().hex}"}
        )

    async def _holds_id(self, ack: PubAck, subject: str) -> bool:
        """Whether the message the stream kept for a duplicate's id is one of the same
        execution's (``cronium.exec.<owner>.<id>.…``: the terminal events of an attempt share
        one id on purpose, whatever their type)."""
        try:
            stored = await self.js.get_msg(ack.stream, seq=ack.seq)
        except nats.js.errors.NotFoundError:
            return True  # aged out of the stream: the window is over, nothing to correct
        held, mine = (stored.subject or "").split("."), subject.split(".")
        if held[:4] != mine[:4]:
            return False  # another execution's or owner's
        # a request or cancel (what people may publish) never holds a lifecycle event's id
        return not (held[-1] in _PEOPLES and mine[-1] not in _PEOPLES)

    async def ask(
        self,
        subject: str,
        body: bytes,
        *,
        timeout: float,
        service: str,
        error: type[CroniumError] = CroniumError,
    ) -> dict[str, Any]:
        """Request-reply to one of the stack's services (``{"ok": …}`` replies): the decoded
        reply. A subject the server refuses raises :class:`PermissionDeniedError`; no responder,
        no answer in time or a reply that is not an object raise ``error`` naming ``service``."""
        try:
            msg = await self.refusable(self.nc.request(subject, body, timeout=timeout), subject)
        except nats.errors.NoRespondersError as exc:
            raise error(
                f"no {service} is running to answer", hint="start the stack with `cronium up`"
            ) from exc
        except nats.errors.TimeoutError as exc:
            raise error(f"the {service} did not answer in time") from exc
        try:
            reply = msgspec.json.decode(msg.data)
        except msgspec.DecodeError as exc:
            raise error(f"the {service} answered something that is not JSON") from exc
        if not isinstance(reply, dict):
            raise error(f"the {service} answered something that is not an object")
        return reply

    async def refusable(self, call: Coroutine[Any, Any, _T], subject: str) -> _T:
        """Await ``call``; raise :class:`PermissionDeniedError` if the server refuses ``subject``
        meanwhile (nats-server reports a refused publish asynchronously, as an error)."""
        seen = len(self.violations)
        task = asyncio.ensure_future(call)
        while True:
            self._violated.clear()
            refused = [v for v in self.violations[seen:] if f'"{subject.lower()}"' in v]
            if refused:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, nats.errors.Error):
                    await task
                raise PermissionDeniedError(
                    f"not permitted to publish to {subject}",
                    hint="your credentials' role does not allow this (see `cronium user list`; "
                    "README, Security)",
                )
            waiter = asyncio.ensure_future(self._violated.wait())
            done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                waiter.cancel()
                return task.result()

    async def close(self) -> None:
        """Drain and close; safe to call more than once."""
        if self._state is not _State.CONNECTED or self._nc is None:
            self._state = _State.CLOSED
            return
        self._state = _State.CLOSED
        try:
            await asyncio.wait_for(self._nc.drain(), _DRAIN_TIMEOUT_S)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            log.debug("drain did not finish; closing", error=str(exc) or type(exc).__name__)
        if not self._nc.is_closed:
            await self._nc.close()


class _Refused(Exception):
    """The server turned the credentials down while connecting."""


async def _first_of(
    connect: Coroutine[Any, Any, Client], refused: asyncio.Event, timeout: float
) -> Client:
    """The connection, or :class:`_Refused` as soon as the server refuses the credentials, or
    ``TimeoutError`` after ``timeout``."""
    connecting = asyncio.ensure_future(connect)
    waiting = asyncio.ensure_future(refused.wait())
    try:
        done, _ = await asyncio.wait(
            {connecting, waiting}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        waiting.cancel()
    if connecting in done:
        return connecting.result()
    connecting.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await connecting
    if waiting in done:
        raise _Refused
    raise TimeoutError
