"""The pure fold ``events → ExecutionState``: examples and property-based invariants."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from cronium_bus.events import (
    Cancelled,
    CancelRequested,
    ErrorInfo,
    Event,
    Failed,
    Lost,
    Partial,
    Queued,
    Rejected,
    RetryScheduled,
    Started,
    Succeeded,
    TimedOut,
    follow_up,
)
from cronium_bus.state import _RANK, TERMINAL_STATUSES, fold
from tests.helpers import requested

REQ = requested("print(1)")
ERR = ErrorInfo(kind="nonzero_exit", message="exit 1")


def queued(a: int) -> Queued:
    return Queued(**follow_up(REQ, "t", attempt=a), request=REQ.request, lane="l")


def started(a: int) -> Started:
    return Started(**follow_up(REQ, "t", attempt=a), runner="r")


def terminal(kind: str, a: int) -> Event:
    env = follow_up(REQ, "t", attempt=a)
    return {
        "succeeded": lambda: Succeeded(**env, exit_code=0),
        "failed": lambda: Failed(**env, exit_code=1, error=ERR),
        "timed_out": lambda: TimedOut(**env, error=ERR),
        "cancelled": lambda: Cancelled(**env, error=ERR),
        "lost": lambda: Lost(**env, error=ERR),
        "partial": lambda: Partial(**env, error=ERR),
    }[kind]()


def retry(a: int) -> RetryScheduled:
    env = follow_up(REQ, "t", attempt=a)
    return RetryScheduled(
        **env, next_attempt=a + 1, at=env["time"] + timedelta(seconds=1), reason=ERR
    )


def test_happy_path() -> None:
    """requested → queued → started → succeeded folds to a final success."""
    state = fold([REQ, queued(1), started(1), terminal("succeeded", 1)])
    assert state is not None
    assert (state.status, state.final, state.exit_code, state.user) == (
        "succeeded",
        True,
        0,
        "tester",
    )


def test_rejected_is_terminal_and_sticky() -> None:
    """A rejected execution stays rejected whatever arrives later."""
    rej = Rejected(**follow_up(REQ, "t"), error=ErrorInfo(kind="validation", message="no"))
    state = fold([REQ, rej, queued(1), started(1), terminal("succeeded", 1)])
    assert state is not None
    assert (state.status, state.final) == ("rejected", True)
    assert state.error is not None and state.error.message == "no"


def test_retry_moves_to_the_next_attempt() -> None:
    """A failed attempt with a retry is not final; the next attempt's outcome is."""
    events = [REQ, queued(1), started(1), terminal("failed", 1), retry(1)]
    mid = fold(events)
    assert mid is not None
    assert (mid.status, mid.final, mid.attempt) == ("retry_scheduled", False, 2)
    end = fold([*events, queued(2), started(2), terminal("succeeded", 2)])
    assert end is not None
    assert (end.status, end.final, end.attempt) == ("succeeded", True, 2)
    first = end.attempt_state(1)
    assert first is not None and first.status == "failed"


def test_cancel_request_is_recorded() -> None:
    """A cancel request is visible in the state before the runner acts on it."""
    req_cancel = CancelRequested(**follow_up(REQ, "t"))
    state = fold([REQ, queued(1), req_cancel])
    assert state is not None and state.cancel_requested and not state.final


KINDS = sorted(TERMINAL_STATUSES)
lifecycle_event = st.one_of(
    st.builds(queued, st.integers(1, 3)),
    st.builds(started, st.integers(1, 3)),
    st.builds(terminal, st.sampled_from(KINDS), st.integers(1, 3)),
    st.builds(retry, st.integers(1, 2)),
    st.just(CancelRequested(**follow_up(REQ, "t"))),
)
histories = st.lists(lifecycle_event, max_size=25).map(lambda evs: [REQ, *evs])


@settings(max_examples=300)
@given(histories, st.data())
def test_redelivery_changes_nothing(events: list[Event], data: st.DataObject) -> None:
    """Re-applying any already-seen event (a redelivery) leaves the state unchanged."""
    i = data.draw(st.integers(0, len(events) - 1))
    j = data.draw(st.integers(i + 1, len(events)))
    with_dup = [*events[:j], events[i], *events[j:]]
    assert fold(with_dup) == fold(events)


@settings(max_examples=300)
@given(histories)
def test_first_terminal_event_of_an_attempt_wins(events: list[Event]) -> None:
    """Each attempt records the first terminal event seen for it, and only that one."""
    state = fold(events)
    assert state is not None
    for attempt in state.attempts:
        terminals = [
            e
            for e in events
            if e.attempt == attempt.attempt and e.type.split(".")[1] in TERMINAL_STATUSES
        ]
        if terminals:
            assert attempt.terminal_event_id == terminals[0].event_id
            assert attempt.status == terminals[0].type.split(".")[1]
        else:
            assert not attempt.terminal


@settings(max_examples=300)
@given(histories)
def test_attempt_status_never_moves_back(events: list[Event]) -> None:
    """Per attempt, status only moves forward: queued < started < terminal."""

    def rank(status: str) -> int:
        return 3 if status in TERMINAL_STATUSES else _RANK[status]

    best: dict[int, int] = {}
    for n in range(1, len(events) + 1):
        state = fold(events[:n])
        assert state is not None
        for a in state.attempts:
            r = rank(a.status)
            assert r >= best.get(a.attempt, 0)
            best[a.attempt] = r


@settings(max_examples=300)
@given(histories)
def test_final_means_current_attempt_ended_without_retry(events: list[Event]) -> None:
    """``final`` holds exactly when the current attempt ended and no retry was scheduled."""
    state = fold(events)
    assert state is not None
    current = state.attempt_state(state.attempt)
    expected = current is not None and current.terminal and current.retry_at is None
    assert state.final == expected
    if state.final:
        assert state.status in TERMINAL_STATUSES
