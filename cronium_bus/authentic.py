"""Which events a reader may believe: an event is authentic only where its subject says it is.

DESIGN invariant 7. The subject is chosen by the publisher too, but nats-server checks it against
the publisher's permissions, while the body is whatever the publisher wrote. So every reader — the
fold behind ``show`` and ``logs``, the projector behind ``history`` and the audit, ``check`` — takes
the body only where it agrees with the subject:

- ``cronium.exec.<owner>.<id>.<event>``: the body's type is ``execution.<event>``, its execution
  id is ``<id>`` and its ``user`` is ``<owner>``. A ``succeeded`` published on the ``requested``
  subject (where a user may publish), an event about execution A published on B's subject, or
  one naming another owner than the subject's (which nats-server checked) is refused.
- ``cronium.logs.<owner>.<id>``: a log chunk of execution ``<id>`` of ``<owner>``.
- ``cronium.jobs.<runner>.<priority>``: an ``execution.queued`` whose ``lane`` is that subject.

:func:`decode_on` is the one function readers call; a refusal is an :class:`EventDecodeError`
whose message names the mismatch, so readers that skip undecodable messages skip these too.
"""

from __future__ import annotations

from cronium_bus.codec import DEFAULT_MAX_BYTES, decode
from cronium_bus.errors import EventDecodeError
from cronium_bus.events import AnyEvent, LogChunk, Queued, short_type


def mismatch(subject: str, event: AnyEvent) -> str | None:
    """Why ``event`` cannot have been published on ``subject``, or ``None`` when it fits."""
    tokens = subject.split(".")
    if len(tokens) < 2 or tokens[0] != "cronium":
        return None
    kind = tokens[1]
    if kind == "exec":
        if len(tokens) != 5:
            return f"{subject!r} is not cronium.exec.<owner>.<id>.<event>"
        if isinstance(event, LogChunk):
            return f"log lines on the lifecycle subject {subject!r}"
        if short_type(event.type) != tokens[4]:
            return f"a {event.type} event on {subject!r}, where only {tokens[4]} belongs"
        if event.execution_id != tokens[3]:
            return f"an event of execution {event.execution_id!r} on {subject!r}"
        if event.user != tokens[2]:
            return f"an event of user {event.user!r} on {subject!r}, owned by {tokens[2]!r}"
        return None
    if kind == "logs":
        if len(tokens) != 4:
            return f"{subject!r} is not cronium.logs.<owner>.<id>"
        if not isinstance(event, LogChunk):
            return f"a {event.type} event on the log subject {subject!r}"
        if event.execution_id != tokens[3]:
            return f"log lines of execution {event.execution_id!r} on {subject!r}"
        if event.user != tokens[2]:
            return f"log lines of user {event.user!r} on {subject!r}, owned by {tokens[2]!r}"
        return None
    if kind == "jobs":
        if not isinstance(event, Queued):
            return f"a {event.type} event on the job lane {subject!r}"
        if event.lane != subject:
            return f"a job for the lane {event.lane!r} on the lane {subject!r}"
        return None
    return None


def decode_on(subject: str, data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> AnyEvent:
    """Decode a message received on ``subject`` and accept it only if it is authentic there."""
    event = decode(data, max_bytes=max_bytes)
    reason = mismatch(subject, event)
    if reason is not None:
        raise EventDecodeError(
            f"not authentic: {reason}",
            hint="publish each event on its own execution's subject for its own type "
            "(cronium.exec.<owner>.<execution_id>.<event>)",
            event_type=event.type,
        )
    return event
