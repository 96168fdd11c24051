"""Reading and retrying dead letters (``cronium dlq list|retry``)."""

from __future__ import annotations

from typing import Any

import msgspec
import nats.js.errors
from nats.js.api import RawStreamMsg

from consumers.retries import enqueue
from cronium_bus.bus import Bus
from cronium_bus.codec import decode_as
from cronium_bus.errors import CroniumError, EventDecodeError
from cronium_bus.events import Queued, follow_up
from cronium_bus.history import execution_state, read_messages
from cronium_bus.subjects import DLQ_ALL, DLQ_STREAM


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """One parked message: where it came from and why it was parked."""

    id: int
    time: str
    source: str
    subject: str
    reason: str
    deliveries: str
    execution_id: str
    size: int


def _execution_of(subject: str, data: bytes) -> str:
    try:
        return decode_as(data, Queued).execution_id
    except EventDecodeError:
        tokens = subject.split(".")
        return tokens[3] if len(tokens) >= 4 and tokens[1] == "exec" else ""


async def list_dead_letters(bus: Bus, limit: int = 1000) -> list[DeadLetter]:
    """The parked messages, oldest first (at most ``limit``)."""
    out: list[DeadLetter] = []
    async for msg in read_messages(bus.js, DLQ_STREAM, DLQ_ALL, limit=limit):
        h = msg.headers or {}
        original = h.get("Cronium-Subject", "")
        out.append(
            DeadLetter(
                id=msg.metadata.sequence.stream,
                time=msg.metadata.timestamp.isoformat(),
                source=msg.subject.removeprefix("cronium.dlq."),
                subject=original,
                reason=h.get("Cronium-Reason", ""),
                deliveries=h.get("Cronium-Deliveries", ""),
                execution_id=_execution_of(original, msg.data),
                size=len(msg.data),
            )
        )
    return out


async def _get(bus: Bus, dlq_id: int) -> RawStreamMsg:
    try:
        return await bus.js.get_msg(DLQ_STREAM, dlq_id)
    except nats.js.errors.NotFoundError as exc:
        raise CroniumError(
            f"no dead letter {dlq_id}", hint="`cronium dlq list` shows the ids"
        ) from exc


async def drop_dead_letter(bus: Bus, dlq_id: int) -> None:
    """Remove a parked message without running it."""
    await _get(bus, dlq_id)
    await bus.js.delete_msg(DLQ_STREAM, dlq_id)


async def retry_dead_letter(bus: Bus, dlq_id: int, *, force: bool = False) -> dict[str, Any]:
    """Put a parked message back to work, then remove it from the dead-letter stream.

    A job whose attempt already ended (the runner gave up on it) is queued as a new attempt;
    anything else is published again on its original subject. A job whose execution already
    went on to a later attempt (its retry policy took over) is refused unless ``force``: running
    it again would add an attempt nobody asked for."""
    raw = await _get(bus, dlq_id)
    headers = raw.headers or {}
    subject = headers.get("Cronium-Subject", "")
    data = raw.data or b""
    result: dict[str, Any] = {"id": dlq_id, "subject": subject}
    try:
        queued = decode_as(data, Queued)
    except EventDecodeError:
        queued = None
    if queued is not None:
        max_bytes = bus.settings.streams.max_msg_size
        state = await execution_state(bus.js, queued.execution_id, max_bytes=max_bytes)
        ended = state.attempt_state(queued.attempt) if state else None
        attempt = queued.attempt
        later = [a for a in state.attempts if a.attempt > queued.attempt] if state else []
        if later and not force:
            raise CroniumError(
                f"execution {queued.execution_id} already went on to attempt "
                f"{later[-1].attempt} ({later[-1].status}) after the dead-lettered attempt "
                f"{queued.attempt}; retrying would run it once more",
                hint=f"`cronium dlq retry {dlq_id} --force` runs it anyway; "
                f"`cronium dlq drop {dlq_id}` removes the dead letter",
            )
        if state is not None and ended is not None and ended.terminal:
            attempt = max(a.attempt for a in state.attempts) + 1
        await enqueue(
            bus,
            Queued(
                **follow_up(queued, bus.producer, attempt=attempt),
                request=queued.request,
                lane=queued.lane,
                parent_id=queued.parent_id,
            ),
        )
        result.update(execution_id=queued.execution_id, attempt=attempt)
    else:
        if not subject:
            raise CroniumError(f"dead letter {dlq_id} does not say where it came from")
        await bus.js.publish(subject, data, headers={"Nats-Msg-Id": f"dlq-retry:{dlq_id}"})
        result["execution_id"] = _execution_of(subject, data)
    await bus.js.delete_msg(DLQ_STREAM, dlq_id)
    return result
