"""The circuit breaker's state machine, with a fake clock (pure logic)."""

from __future__ import annotations

from consumers.ssh.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_only() -> None:
    """Five failures in a row open it; a success in between resets the count."""
    b = CircuitBreaker(clock=Clock())
    for _ in range(4):
        b.record_failure()
    b.record_success()
    for _ in range(4):
        assert b.allow()
        b.record_failure()
    assert b.state == "closed"
    b.record_failure()
    assert b.state == "open"
    assert not b.allow()


def test_half_open_after_the_wait_then_closes_on_two_successes() -> None:
    clock = Clock()
    b = CircuitBreaker(clock=clock, open_for=60)
    for _ in range(5):
        b.record_failure()
    clock.now = 59
    assert not b.allow()
    assert b.retry_in() == 1
    clock.now = 60
    assert [b.allow() for _ in range(4)] == [True, True, True, False]
    assert b.state == "half_open"
    b.record_success()
    assert b.state == "half_open"
    b.record_success()
    assert b.state == "closed"
    assert b.allow()


def test_a_failed_trial_opens_again() -> None:
    clock = Clock()
    b = CircuitBreaker(clock=clock, open_for=10)
    for _ in range(5):
        b.record_failure("refused")
    clock.now = 10
    assert b.allow()
    b.record_failure("still refused")
    assert b.state == "open"
    assert b.last_error == "still refused"
    assert not b.allow()
