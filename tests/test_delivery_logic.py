"""Pure logic of delivery: retry delays and decisions, limit admission, the checker's rules."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumers.limits import ScopeState, admit
from cronium_bus.check import find_violations
from cronium_bus.events import (
    ErrorInfo,
    Failed,
    LogChunk,
    Queued,
    Request,
    RetryPolicy,
    Started,
    Succeeded,
    follow_up,
    make_terminal,
    utcnow,
)
from cronium_bus.retry import retry_delay, should_retry
from cronium_bus.state import AttemptState
from tests.helpers import requested


def test_exponential_backoff_doubles_and_is_capped() -> None:
    policy = RetryPolicy(max_attempts=10, backoff="exponential", base_s=1.0, jitter=0.0)
    assert [retry_delay(policy, a, "ex_1") for a in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    capped = RetryPolicy(max_attempts=10, base_s=1.0, max_delay_s=5.0, jitter=0.0)
    assert retry_delay(capped, 9, "ex_1") == 5.0
    fixed = RetryPolicy(max_attempts=10, backoff="fixed", base_s=3.0, jitter=0.0)
    assert {retry_delay(fixed, a, "ex_1") for a in (1, 2, 5)} == {3.0}


@given(
    attempt=st.integers(1, 50),
    execution_id=st.text(min_size=1, max_size=30),
    jitter=st.floats(0, 1),
)
def test_jitter_stays_in_bounds_and_is_deterministic(
    attempt: int, execution_id: str, jitter: float
) -> None:
    policy = RetryPolicy(max_attempts=100, base_s=2.0, max_delay_s=60.0, jitter=jitter)
    plain = min(2.0 * 2 ** (attempt - 1), 60.0)
    delay = retry_delay(policy, attempt, execution_id)
    assert plain * (1 - jitter) - 1e-9 <= delay <= plain * (1 + jitter) + 1e-9
    assert delay == retry_delay(policy, attempt, execution_id)


def _ended(attempt: int, kind: str | None) -> AttemptState:
    return AttemptState(
        attempt=attempt,
        status="failed" if kind else "succeeded",
        error=ErrorInfo(kind=kind, message="x") if kind else None,  # type: ignore[arg-type]
        ended_at=utcnow(),
    )


@pytest.mark.parametrize(
    ("attempt", "kind", "expected"),
    [
        (1, "nonzero_exit", True),
        (2, "nonzero_exit", True),
        (3, "nonzero_exit", False),  # max_attempts reached
        (1, None, False),  # succeeded
        (1, "cancelled", False),  # never retried, even if listed
        (1, "oom", False),  # not in retry_on
    ],
)
def test_should_retry(attempt: int, kind: str | None, expected: bool) -> None:
    request = Request(
        runtime="bash",
        code="exit 1",
        retry=RetryPolicy(max_attempts=3, retry_on=("nonzero_exit", "cancelled")),
    )
    assert should_retry(request, _ended(attempt, kind)) is expected
    assert should_retry(Request(runtime="bash", code="x"), _ended(1, "nonzero_exit")) is False


def test_admission_is_fifo_and_bounded() -> None:
    state = ScopeState()
    kw = {"lease_s": 60.0, "stale_s": 10.0}
    assert admit(state, "a", 2, now=0.0, **kw)
    assert admit(state, "b", 2, now=0.1, **kw)
    assert not admit(state, "c", 2, now=0.2, **kw)  # full: c waits first
    assert not admit(state, "d", 2, now=0.3, **kw)  # d waits behind c
    state.running.pop("a")  # a ended
    assert not admit(state, "d", 2, now=0.4, **kw)  # d may not overtake c
    assert admit(state, "c", 2, now=0.5, **kw)
    assert admit(state, "b", 2, now=0.6, **kw)  # a redelivered running job renews its lease
    assert set(state.running) == {"b", "c"} and set(state.waiting) == {"d"}


def test_admission_recovers_dead_leases_and_stale_waiters() -> None:
    state = ScopeState()
    kw = {"lease_s": 5.0, "stale_s": 2.0}
    assert admit(state, "a", 1, now=0.0, **kw)
    assert not admit(state, "b", 1, now=1.0, **kw)
    assert not admit(state, "c", 1, now=1.5, **kw)
    # a's runner died (lease not renewed) and b's job went away (not seen again)
    assert admit(state, "c", 1, now=6.0, **kw)
    assert set(state.running) == {"c"} and state.waiting == {}


def _run(code_ok: bool = True) -> list[object]:
    req = requested("x")
    queued = Queued(**follow_up(req, "t"), request=req.request, lane="l")
    started = Started(**follow_up(req, "t"), runner="r")
    end = make_terminal(Succeeded if code_ok else Failed, follow_up(req, "t"), runner="r")
    return [req, queued, started, end]


def test_checker_finds_double_terminals_gaps_and_orphans() -> None:
    ok = _run()
    double = _run()
    extra = make_terminal(Failed, follow_up(double[0], "t"), runner="r2")  # type: ignore[arg-type]
    open_ = _run()[:3]
    events = [*ok, *double, extra, *open_]
    ok_id = ok[0].execution_id  # type: ignore[attr-defined]
    chunks = [
        LogChunk(**follow_up(ok[0], "t"), stream="stdout", first_seq=0, lines=("a", "b")),  # type: ignore[arg-type]
        LogChunk(**follow_up(ok[0], "t"), stream="stdout", first_seq=2, lines=("c",)),  # type: ignore[arg-type]
        LogChunk(**follow_up(ok[0], "t"), stream="stdout", first_seq=2, lines=("c",)),  # type: ignore[arg-type]
        LogChunk(**follow_up(ok[0], "t"), stream="stderr", first_seq=1, lines=("z",)),  # type: ignore[arg-type]
    ]
    later = utcnow() + timedelta(minutes=5)
    containers = [{"execution": ok_id, "name": "c1"}, {"execution": "ex_gone", "name": "c2"}]
    report = find_violations(events, chunks, containers, now=later)  # type: ignore[arg-type]
    kinds = sorted((v.kind, v.execution_id) for v in report.violations)
    assert kinds == sorted(
        [
            ("terminal_events", double[0].execution_id),  # type: ignore[attr-defined]
            ("log_gap", ok_id),
            ("orphaned_container", ok_id),
            ("orphaned_container", "ex_gone"),
        ]
    )
    assert report.open == [open_[0].execution_id]  # type: ignore[attr-defined]
    strict = find_violations(events, [], None, require_final=True)  # type: ignore[arg-type]
    assert ("not_final", open_[0].execution_id) in {  # type: ignore[attr-defined]
        (v.kind, v.execution_id) for v in strict.violations
    }
    clean = find_violations(ok, chunks[:3], [], now=later)  # type: ignore[arg-type]
    assert clean.ok and clean.final == 1
