"""Stored events for people who may not read the streams themselves (roles ``user``, ``auditor``).

A person's credentials give no JetStream API on the shared streams: a consumer they could create
would deliver to any subject they name (nats-server does not check a push consumer's
``deliver_subject`` against its creator's permissions). So what is already stored of an
execution — for ``show``, ``cancel`` and a live follow's first part — comes from here, read with
the service's identity and only under the asker's own owner token; live events then arrive on
a plain subscription to their own subjects.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Final, Literal

import msgspec

from cronium_bus.bus import Bus
from cronium_bus.history import read_messages
from cronium_bus.ids import is_valid_id
from cronium_bus.subjects import EXEC_STREAM, LOGS_STREAM, exec_events, log_subject

MAX_MESSAGES: Final = 5000
MAX_REPLY_BYTES: Final = 8 * 1024 * 1024  # under the server's max_payload (16 MiB), base64 included


class EventsQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which execution, lifecycle (``exec``) or log chunks (``logs``)."""

    execution_id: str
    kind: Literal["exec", "logs"] = "exec"
    after: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] = 0
    """Only messages after this stream sequence: the next page (``last`` of the previous)."""
    max_bytes: Annotated[int, msgspec.Meta(ge=64 * 1024, le=MAX_REPLY_BYTES)] = MAX_REPLY_BYTES
    """A smaller page than the largest reply (a browser decodes a 1 MiB page between frames)."""


async def stored_events(bus: Bus, q: EventsQuery, owner: str) -> dict[str, Any]:
    """The stored messages of one execution under ``owner`` (``*``: anyone's), oldest first,
    bounded in count and bytes; ``complete`` is false when the bound cut them short, and the
    next page starts after ``last`` (ask again with ``after``)."""
    if not is_valid_id(q.execution_id):
        raise ValueError(f"{q.execution_id!r} is not an execution id")
    if q.kind == "exec":
        stream, subject = EXEC_STREAM, exec_events(q.execution_id, owner)
    else:
        stream, subject = LOGS_STREAM, log_subject(owner, q.execution_id)
    out: list[dict[str, str]] = []
    size = 0
    last = q.after
    async for msg in read_messages(
        bus.js, stream, subject, limit=MAX_MESSAGES + 1, start_seq=q.after + 1
    ):
        size += len(msg.data) * 4 // 3 + len(msg.subject) + 32
        if len(out) >= MAX_MESSAGES or size > MAX_REPLY_BYTES or (size > q.max_bytes and out):
            return {"messages": out, "complete": False, "last": last}
        out.append({"subject": msg.subject, "data": base64.b64encode(msg.data).decode()})
        last = msg.metadata.sequence.stream
    return {"messages": out, "complete": True, "last": last}
