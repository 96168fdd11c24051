"""Reading an execution's events back from the streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from cronium_bus.authentic import decode_on
from cronium_bus.errors import EventDecodeError
from cronium_bus.events import AnyEvent
from cronium_bus.state import ExecutionState, fold
from cronium_bus.subjects import ANY_OWNER, EXEC_STREAM, LOGS_STREAM, exec_events, log_subject

log = structlog.get_logger(__name__)
_BATCH = 256


async def read_messages(
    js: JetStreamContext,
    stream: str,
    subject: str,
    *,
    limit: int | None = None,
    start_seq: int | None = None,
) -> AsyncIterator[Msg]:
    """Every message stored on ``subject`` now (at most ``limit``; from stream sequence
    ``start_seq`` on, when given), in stream order, then stops.

    Uses an ephemeral pull consumer: its pending count at creation says how many to fetch, so an
    empty subject answers at once instead of waiting for a timeout.
    """
    late = start_seq is not None and start_seq > 1
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE if late else DeliverPolicy.ALL,
        opt_start_seq=start_seq if late else None,
        inactive_threshold=30.0,
        mem_storage=True,
    )
    sub = await js.pull_subscribe(subject, stream=stream, config=config)
    try:
        remaining = (await sub.consumer_info()).num_pending or 0
        if limit is not None:
            remaining = min(remaining, limit)
        while remaining > 0:
            try:
                msgs = await sub.fetch(min(remaining, _BATCH), timeout=5.0)
            except nats.errors.TimeoutError:
                break  # messages aged out while reading
            remaining -= len(msgs)
            for msg in msgs:
                yield msg
    finally:
        await sub.unsubscribe()


async def read_subject(
    js: JetStreamContext, stream: str, subject: str, *, max_bytes: int
) -> AsyncIterator[AnyEvent]:
    """Every decodable, authentic event stored on ``subject`` now, in stream order (then stops).

    An event whose body disagrees with the subject it was stored on (another execution's id,
    another type) is skipped like an undecodable one: see :mod:`cronium_bus.authentic`.
    """
    async for msg in read_messages(js, stream, subject):
        event = event_of(msg, max_bytes=max_bytes)
        if event is not None:
            yield event


def event_of(msg: Msg, *, max_bytes: int) -> AnyEvent | None:
    """The authentic event a message holds, or ``None`` (logged) when it holds none."""
    try:
        return decode_on(msg.subject, msg.data, max_bytes=max_bytes)
    except EventDecodeError as exc:
        log.debug("skipping undecodable message", subject=msg.subject, reason=str(exc))
        return None


async def execution_events(
    js: JetStreamContext, execution_id: str, *, max_bytes: int, owner: str = ANY_OWNER
) -> list[AnyEvent]:
    """The lifecycle events of one execution, in stream order. A ``user`` identity passes its
    own name as ``owner`` (its permissions allow reading only its own subjects)."""
    subject = exec_events(execution_id, owner)
    return [e async for e in read_subject(js, EXEC_STREAM, subject, max_bytes=max_bytes)]


async def execution_state(
    js: JetStreamContext, execution_id: str, *, max_bytes: int, owner: str = ANY_OWNER
) -> ExecutionState | None:
    """The folded state of one execution, or ``None`` if nothing is known of it."""
    return fold(await execution_events(js, execution_id, max_bytes=max_bytes, owner=owner))


class Follower:
    """Every event on ``subject`` from the start of the stream, then live ones.

    An ordered push consumer: gapless, and recreated by nats-py after a reconnect. Call
    :meth:`start` before publishing what you want to see (e.g. a request), then iterate.
    """

    def __init__(self, js: JetStreamContext, stream: str, subject: str, *, max_bytes: int) -> None:
        self.js = js
        self.stream = stream
        self.subject = subject
        self.max_bytes = max_bytes
        self._sub: JetStreamContext.PushSubscription | None = None

    async def start(self) -> Follower:
        """Create the subscription."""
        if self._sub is None:
            self._sub = await self.js.subscribe(
                self.subject, stream=self.stream, ordered_consumer=True
            )
        return self

    async def __aiter__(self) -> AsyncIterator[AnyEvent]:
        sub = (await self.start())._sub
        assert sub is not None
        async for event in decoded(sub, self.max_bytes):
            yield event

    async def close(self) -> None:
        """Unsubscribe; idempotent."""
        sub, self._sub = self._sub, None
        await unsubscribe_quietly(sub)


async def decoded(sub: Subscription, max_bytes: int) -> AsyncIterator[AnyEvent]:
    """The authentic events arriving on a subscription, forever (undecodable ones skipped)."""
    while True:
        try:
            msg = await sub.next_msg(timeout=3600)
        except nats.errors.TimeoutError:
            continue
        event = event_of(msg, max_bytes=max_bytes)
        if event is not None:
            yield event


async def unsubscribe_quietly(sub: Subscription | None) -> None:
    """Unsubscribe if there is a subscription; a closed connection is not an error here."""
    if sub is not None:
        try:
            await sub.unsubscribe()
        except (nats.errors.Error, asyncio.CancelledError):
            log.debug("unsubscribe after close")


def follow_logs(
    js: JetStreamContext, execution_id: str, *, max_bytes: int, owner: str = ANY_OWNER
) -> Follower:
    """Live tail of one execution's log chunks (from the first one still in the stream)."""
    return Follower(js, LOGS_STREAM, log_subject(owner, execution_id), max_bytes=max_bytes)


def follow_execution(
    js: JetStreamContext, execution_id: str, *, max_bytes: int, owner: str = ANY_OWNER
) -> Follower:
    """Live lifecycle events of one execution (from the first one)."""
    return Follower(js, EXEC_STREAM, exec_events(execution_id, owner), max_bytes=max_bytes)
