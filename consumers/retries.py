"""Queueing work: the first attempt (the dispatcher) and the next one after a retry decision
(:mod:`cronium_bus.retry` decides whether and when; message ids make both idempotent)."""

from __future__ import annotations

from datetime import datetime, timedelta

from cronium_bus.bus import Bus
from cronium_bus.codec import encode
from cronium_bus.events import ErrorInfo, Queued, RetryScheduled, follow_up, utcnow
from cronium_bus.retry import retry_delay
from cronium_bus.state import AttemptState
from cronium_bus.subjects import job_subject


async def enqueue(bus: Bus, queued: Queued) -> None:
    """Record ``queued`` and put its job on the lane (both idempotent by message id)."""
    await bus.publish(queued)
    await bus.js.publish(
        queued.lane,
        encode(queued),
        headers={"Nats-Msg-Id": f"{queued.execution_id}:{queued.attempt}:job"},
    )


async def schedule_retry(bus: Bus, queued: Queued, attempt: AttemptState) -> datetime:
    """Publish ``retry_scheduled`` for the ended attempt and queue the next one, delayed."""
    policy = queued.request.retry
    if policy is None:
        raise ValueError("schedule_retry needs a request with a retry policy")
    delay = retry_delay(policy, attempt.attempt, queued.execution_id)
    at = (attempt.ended_at or utcnow()) + timedelta(seconds=delay)
    reason = attempt.error or ErrorInfo(kind="infrastructure", message="attempt failed")
    await bus.publish(
        RetryScheduled(
            **follow_up(queued, bus.producer, attempt=attempt.attempt),
            next_attempt=attempt.attempt + 1,
            at=at,
            reason=reason,
        )
    )
    await enqueue(
        bus,
        Queued(
            **follow_up(queued, bus.producer, attempt=attempt.attempt + 1),
            request=queued.request,
            lane=job_subject(queued.request.runner, queued.request.priority),
            not_before=at,
            parent_id=queued.parent_id,
        ),
    )
    return at
