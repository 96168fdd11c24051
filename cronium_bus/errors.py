"""Error kinds shared by every event, consumer and command.

One enum for the whole service: a terminal event, a rejection and a CLI error all say *what kind*
of thing went wrong, a message for a person, and a hint that says what to do about it.
"""

from __future__ import annotations

from typing import Literal, get_args

ErrorKind = Literal[
    "validation",
    "image_unavailable",
    "nonzero_exit",
    "timeout",
    "oom",
    "tmpfs_full",
    "output_limit",
    "cancelled",
    "ssh_unreachable",
    "ssh_auth",
    "ssh_host_key",
    "circuit_open",
    "runner_lost",
    "infrastructure",
    "permission",
]
ERROR_KINDS: frozenset[str] = frozenset(get_args(ErrorKind))


class CroniumError(Exception):
    """Base class of errors raised by this package; carries a kind and a hint."""

    kind: ErrorKind = "infrastructure"

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class EventDecodeError(CroniumError):
    """A message on the bus could not be decoded into a known, current event type."""

    kind: ErrorKind = "validation"

    def __init__(self, reason: str, *, hint: str = "", event_type: str | None = None) -> None:
        super().__init__(reason, hint=hint)
        self.reason = reason
        self.event_type = event_type


class PermissionDeniedError(CroniumError):
    """nats-server (or the service) refused an action for lack of permission."""

    kind: ErrorKind = "permission"


class BusUnavailableError(CroniumError):
    """NATS could not be reached or JetStream is not enabled."""

    kind: ErrorKind = "infrastructure"
