"""Retry policy (pure): whether an ended attempt is retried, and after how long.

The fold uses :func:`should_retry` too, so an attempt that will be retried is never reported
final, not even between its terminal event and the ``retry_scheduled`` that follows it.

The delay is ``base_s`` (fixed) or ``base_s * 2**(attempt-1)`` (exponential), capped at
``max_delay_s``, then spread by ``±jitter`` — a jitter derived from the execution id and attempt,
so a runner that recomputes it after a crash or redelivery gets the same time and the
deterministic message ids keep one ``retry_scheduled`` and one next attempt.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from cronium_bus.events import Request, RetryPolicy

if TYPE_CHECKING:
    from cronium_bus.state import AttemptState

NEVER_RETRIED = frozenset({"cancelled", "validation"})


def retry_delay(policy: RetryPolicy, failed_attempt: int, execution_id: str) -> float:
    """Seconds between the end of ``failed_attempt`` and the start of the next."""
    if policy.backoff == "fixed":
        delay = policy.base_s
    else:
        delay = policy.base_s * 2.0 ** min(failed_attempt - 1, 60)
    delay = min(delay, policy.max_delay_s)
    digest = hashlib.sha256(f"{execution_id}:{failed_attempt}".encode()).digest()
    unit = int.from_bytes(digest[:4], "big") / 0xFFFFFFFF  # in [0, 1]
    return max(0.0, delay * (1.0 + policy.jitter * (2.0 * unit - 1.0)))


def should_retry(request: Request, attempt: AttemptState) -> bool:
    """Whether an ended attempt gets another one under the request's policy."""
    policy = request.retry
    if policy is None or not attempt.terminal or attempt.status == "succeeded":
        return False
    if attempt.attempt >= policy.max_attempts or attempt.error is None:
        return False
    kind = attempt.error.kind
    return kind not in NEVER_RETRIED and kind in policy.retry_on
