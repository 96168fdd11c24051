"""The one pure fold ``events → ExecutionState``, used by the CLI, the consumers and projections.

Rules that make it safe on an at-least-once stream:
- per attempt, status only moves forward (queued < started < terminal); a late or redelivered
  earlier event never moves it back;
- the first terminal event of an attempt wins; any later terminal event of that attempt is ignored;
- a rejected execution stays rejected;
- applying an event that was already applied changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final, Literal

import msgspec

from cronium_bus.events import (
    AnyEvent,
    CancelRequested,
    ChildRef,
    ConditionSet,
    ErrorInfo,
    Event,
    FannedOut,
    HelperCalled,
    LogChunk,
    OutputSet,
    PayloadRef,
    Queued,
    Rejected,
    Request,
    Requested,
    RetryScheduled,
    Started,
    Terminal,
    VariableSet,
    short_type,
)

Status = Literal[
    "requested",
    "rejected",
    "queued",
    "started",
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
    "lost",
    "partial",
    "retry_scheduled",
]
TERMINAL_STATUSES: Final = frozenset(
    {"succeeded", "failed", "timed_out", "cancelled", "lost", "partial"}
)
_RANK: Final = {"requested": 0, "queued": 1, "started": 2}


class AttemptState(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt of an execution."""

    attempt: int
    status: Status = "queued"
    runner: str | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    exit_code: int | None = None
    error: ErrorInfo | None = None
    terminal_event_id: str | None = None
    retry_at: datetime | None = None

    @property
    def terminal(self) -> bool:
        """Whether this attempt has ended."""
        return self.status in TERMINAL_STATUSES


class ExecutionState(msgspec.Struct, frozen=True, kw_only=True):
    """What is known of one execution after folding its events."""

    execution_id: str
    status: Status
    final: bool
    attempt: int
    user: str | None = None
    correlation_id: str | None = None
    request: Request | None = None
    requested_at: datetime | None = None
    error: ErrorInfo | None = None
    exit_code: int | None = None
    cancel_requested: bool = False
    output: Any = None
    output_ref: PayloadRef | None = None
    condition: bool | None = None
    attempts: tuple[AttemptState, ...] = ()
    children: tuple[ChildRef, ...] = ()
    parent_id: str | None = None
    seen: frozenset[str] = frozenset()

    def attempt_state(self, attempt: int) -> AttemptState | None:
        """The state of one attempt, if any event of it was seen."""
        return next((a for a in self.attempts if a.attempt == attempt), None)


def _apply_attempt(current: AttemptState | None, event: Event) -> AttemptState | None:
    """The new state of the event's attempt, or ``None`` when the event changes nothing."""
    a = current or AttemptState(attempt=event.attempt, status="requested")
    if isinstance(event, Terminal):
        if a.terminal:
            return None  # first terminal event of an attempt wins
        return msgspec.structs.replace(
            a,
            status=short_type(event.type),
            runner=event.runner or a.runner,
            ended_at=event.time,
            exit_code=event.exit_code,
            error=event.error,
            terminal_event_id=event.event_id,
        )
    if isinstance(event, RetryScheduled):
        return msgspec.structs.replace(a, retry_at=event.at)
    if isinstance(event, Queued | Started):
        status: Status = "queued" if isinstance(event, Queued) else "started"
        if a.terminal or _RANK[a.status] >= _RANK[status]:
            if isinstance(event, Queued) and a.queued_at is None:
                return msgspec.structs.replace(a, queued_at=event.time)
            return None
        if isinstance(event, Queued):
            return msgspec.structs.replace(a, status=status, queued_at=event.time)
        return msgspec.structs.replace(a, status=status, started_at=event.time, runner=event.runner)
    return None


def _will_retry(state: ExecutionState, attempt: AttemptState) -> bool:
    """Whether the policy retries this ended attempt (before ``retry_scheduled`` is seen)."""
    from cronium_bus.retry import should_retry

    return (
        state.request is not None
        and not state.cancel_requested
        and should_retry(state.request, attempt)
    )


def _derive(state: ExecutionState) -> ExecutionState:
    """Recompute the top-level status from the attempts."""
    if state.status == "rejected":
        return state
    current = state.attempt_state(state.attempt)
    if current is None:
        previous = state.attempt_state(state.attempt - 1)
        status: Status = "retry_scheduled" if previous and previous.retry_at else "requested"
        return msgspec.structs.replace(state, status=status, final=False)
    if current.terminal and (current.retry_at is not None or _will_retry(state, current)):
        return msgspec.structs.replace(state, status="retry_scheduled", final=False)
    return msgspec.structs.replace(
        state,
        status=current.status,
        final=current.terminal,
        error=current.error if current.terminal else None,
        exit_code=current.exit_code,
    )


def apply(state: ExecutionState | None, event: AnyEvent | Event) -> ExecutionState:
    """Fold one event into the state of its execution."""
    if state is None:
        state = ExecutionState(
            execution_id=event.execution_id, status="requested", final=False, attempt=1
        )
    if isinstance(event, LogChunk | HelperCalled | VariableSet) or event.event_id in state.seen:
        return state
    state = msgspec.structs.replace(state, seen=state.seen | {event.event_id})
    if isinstance(event, Requested):
        return msgspec.structs.replace(
            state,
            request=state.request or event.request,
            user=state.user or event.user,
            correlation_id=state.correlation_id or event.correlation_id,
            requested_at=state.requested_at or event.time,
        )
    if isinstance(event, Rejected):
        if state.final or state.attempts:
            return state
        return msgspec.structs.replace(
            state, status="rejected", final=True, error=event.error, user=state.user or event.user
        )
    if isinstance(event, CancelRequested):
        return msgspec.structs.replace(state, cancel_requested=True)
    if isinstance(event, OutputSet):
        return msgspec.structs.replace(state, output=event.output, output_ref=event.output_ref)
    if isinstance(event, ConditionSet):
        return msgspec.structs.replace(state, condition=event.condition)
    if isinstance(event, FannedOut):
        return msgspec.structs.replace(state, children=event.children)
    if state.status == "rejected":
        return state
    if isinstance(event, Queued) and state.request is None:
        state = msgspec.structs.replace(
            state, request=event.request, user=event.user, parent_id=event.parent_id
        )
    updated = _apply_attempt(state.attempt_state(event.attempt), event)
    if updated is None:
        return state
    attempts = (*(a for a in state.attempts if a.attempt != event.attempt), updated)
    attempt = max(state.attempt, event.attempt)
    if isinstance(event, RetryScheduled):
        attempt = max(attempt, event.next_attempt)
    return _derive(
        msgspec.structs.replace(
            state, attempts=tuple(sorted(attempts, key=lambda a: a.attempt)), attempt=attempt
        )
    )


def fold(events: Iterable[AnyEvent | Event]) -> ExecutionState | None:
    """Fold a stream of one execution's events, in stream order."""
    state: ExecutionState | None = None
    for event in events:
        state = apply(state, event)
    return state
