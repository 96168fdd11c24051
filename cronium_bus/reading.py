"""Reading an execution as the connection's identity may: directly, or through the service.

The stack's own identities and admins read the streams with JetStream consumers
(:mod:`cronium_bus.history`). People with a role (``user``, ``auditor``) have no JetStream API on
the shared streams — a push consumer delivers to whatever subject its creator names, which
nats-server does not check — so they get what is stored from the query service
(``cronium.query.<role>.<name>.events``, answered under their own owner token only) and what
comes next from a plain subscription to their own subjects; events seen in both are passed on
once (by ``event_id``).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Final, Literal

import msgspec
import structlog
from nats.aio.subscription import Subscription

from cronium_bus.authentic import decode_on
from cronium_bus.bus import Bus
from cronium_bus.errors import CroniumError, EventDecodeError
from cronium_bus.events import AnyEvent
from cronium_bus.history import (
    Follower,
    decoded,
    follow_execution,
    follow_logs,
    read_subject,
    unsubscribe_quietly,
)
from cronium_bus.identity.roles import READERS
from cronium_bus.subjects import EXEC_STREAM, LOGS_STREAM, exec_events, log_subject

log = structlog.get_logger(__name__)
Kind = Literal["exec", "logs"]
_QUERY_TIMEOUT_S: Final = 15.0


def through_service(bus: Bus) -> bool:
    """Whether this identity reads through the query service (a user, auditor or producer)."""
    return bus.role in READERS


def _subject(bus: Bus, execution_id: str, kind: Kind) -> str:
    if kind == "exec":
        return exec_events(execution_id, bus.scope)
    return log_subject(bus.scope, execution_id)


async def _stored(bus: Bus, execution_id: str, kind: Kind) -> list[tuple[str, bytes]]:
    role = bus.role if bus.role in READERS else "user"
    subject = f"cronium.query.{role}.{bus.identity}.events"
    body = msgspec.json.encode({"execution_id": execution_id, "kind": kind})
    reply = await bus.ask(subject, body, timeout=_QUERY_TIMEOUT_S, service="projector")
    if not reply.get("ok"):
        raise CroniumError(f"query refused: {reply.get('error')}")
    result = reply["result"]
    if not result.get("complete", True):
        log.warning("only the first part of a long history was read", execution_id=execution_id)
    return [(m["subject"], base64.b64decode(m["data"])) for m in result["messages"]]


async def events_of(
    bus: Bus, execution_id: str, *, max_bytes: int, kind: Kind = "exec"
) -> list[AnyEvent]:
    """The authentic stored events of one execution that this identity may see."""
    if not through_service(bus):
        stream = EXEC_STREAM if kind == "exec" else LOGS_STREAM
        subject = _subject(bus, execution_id, kind)
        return [e async for e in read_subject(bus.js, stream, subject, max_bytes=max_bytes)]
    out: list[AnyEvent] = []
    for subject, data in await _stored(bus, execution_id, kind):
        try:
            out.append(decode_on(subject, data, max_bytes=max_bytes))
        except EventDecodeError:
            continue
    return out


class LiveFollower:
    """What is stored (from the query service), then live events (a plain subscription)."""

    def __init__(self, bus: Bus, execution_id: str, kind: Kind, *, max_bytes: int) -> None:
        self.bus = bus
        self.execution_id = execution_id
        self.kind = kind
        self.max_bytes = max_bytes
        self.subject = _subject(bus, execution_id, kind)
        self._sub: Subscription | None = None
        self._backlog: list[AnyEvent] = []

    async def start(self) -> LiveFollower:
        """Subscribe, then read what is stored (so nothing falls between the two)."""
        if self._sub is None:
            self._sub = await self.bus.nc.subscribe(self.subject)
            await self.bus.nc.flush()
            self._backlog = await events_of(
                self.bus, self.execution_id, max_bytes=self.max_bytes, kind=self.kind
            )
        return self

    async def __aiter__(self) -> AsyncIterator[AnyEvent]:
        sub = (await self.start())._sub
        assert sub is not None
        seen: set[str] = set()
        for event in self._backlog:
            seen.add(event.event_id)
            yield event
        async for event in decoded(sub, self.max_bytes):
            if event.event_id not in seen:
                seen.add(event.event_id)
                yield event

    async def close(self) -> None:
        """Unsubscribe; idempotent."""
        sub, self._sub = self._sub, None
        await unsubscribe_quietly(sub)


def follow(bus: Bus, execution_id: str, kind: Kind, *, max_bytes: int) -> Follower | LiveFollower:
    """Stored then live events of one execution, as this identity may read them."""
    if through_service(bus):
        return LiveFollower(bus, execution_id, kind, max_bytes=max_bytes)
    if kind == "exec":
        return follow_execution(bus.js, execution_id, max_bytes=max_bytes, owner=bus.scope)
    return follow_logs(bus.js, execution_id, max_bytes=max_bytes, owner=bus.scope)
