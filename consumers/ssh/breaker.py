"""A circuit breaker per host (pure logic; the clock is injected).

closed: requests pass; ``failures_to_open`` consecutive failures open the circuit.
open: requests fail fast with ``circuit_open`` until ``open_for`` seconds have passed.
half-open: up to ``trials`` requests pass; ``successes_to_close`` successes close the circuit,
any failure opens it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

State = Literal["closed", "open", "half_open"]


@dataclass
class CircuitBreaker:
    """The breaker of one host."""

    failures_to_open: int = 5
    open_for: float = 60.0
    trials: int = 3
    successes_to_close: int = 2
    clock: Callable[[], float] = time.monotonic
    state: State = "closed"
    failures: int = 0
    opened_at: float = 0.0
    trials_started: int = 0
    trial_successes: int = 0
    last_error: str = field(default="")

    def allow(self) -> bool:
        """Whether a request may go to the host now (a half-open trial counts as started)."""
        if self.state == "open":
            if self.clock() - self.opened_at < self.open_for:
                return False
            self.state, self.trials_started, self.trial_successes = "half_open", 0, 0
        if self.state == "half_open":
            if self.trials_started >= self.trials:
                return False
            self.trials_started += 1
        return True

    def retry_in(self) -> float:
        """Seconds until an open circuit lets a trial through."""
        return max(0.0, self.open_for - (self.clock() - self.opened_at))

    def record_success(self) -> None:
        """A request reached the host and completed (whatever the script's exit code)."""
        if self.state == "half_open":
            self.trial_successes += 1
            if self.trial_successes >= self.successes_to_close:
                self.state, self.failures = "closed", 0
            return
        self.failures = 0

    def record_failure(self, error: str = "") -> None:
        """The host could not be reached or refused us."""
        self.last_error = error
        if self.state == "half_open":
            self._open()
            return
        self.failures += 1
        if self.failures >= self.failures_to_open:
            self._open()

    def _open(self) -> None:
        self.state, self.opened_at, self.failures = "open", self.clock(), 0
