"""Subjects, streams, consumers and buckets: the one naming scheme of the bus.

Every execution subject carries its **owner** — the identity that published the request — right
after the kind: ``cronium.exec.<owner>.<id>.<event>`` and ``cronium.logs.<owner>.<id>``.
nats-server's permission templates confine a ``user`` to ``cronium.exec.<their name>.…``, so
the owner token is a fact the server checked, not a field a client filled in. Readers that know
only an execution id and may see everyone's (service, admin, auditor) use :data:`ANY_OWNER`.
"""

from __future__ import annotations

from typing import Final

from cronium_bus.events import Priority, RunnerKind, short_type

EXEC_STREAM: Final = "CRONIUM_EXEC"
JOBS_STREAM: Final = "CRONIUM_JOBS"
LOGS_STREAM: Final = "CRONIUM_LOGS"
DLQ_STREAM: Final = "CRONIUM_DLQ"
SCHED_STREAM: Final = "CRONIUM_SCHED"
SCHED_ALL: Final = "cronium.sched.>"

EXEC_ALL: Final = "cronium.exec.>"
JOBS_ALL: Final = "cronium.jobs.>"
LOGS_ALL: Final = "cronium.logs.>"
DLQ_ALL: Final = "cronium.dlq.>"
REQUESTS: Final = "cronium.exec.*.*.requested"
CANCELS: Final = "cronium.exec.*.*.cancel_requested"
ANY_OWNER: Final = "*"

HEARTBEAT_BUCKET: Final = "cronium_health"
VARIABLES_BUCKET: Final = "cronium_variables"
SECRETS_BUCKET: Final = "cronium_secrets"
SERVERS_BUCKET: Final = "cronium_servers"
META_BUCKET: Final = "cronium_meta"
CIRCUITS_BUCKET: Final = "cronium_circuits"
LIMITS_BUCKET: Final = "cronium_limits"
PAYLOADS_BUCKET: Final = "cronium_payloads"  # Object Store
SCHEDULES_BUCKET: Final = "cronium_schedules"  # schedules' folded state (the scheduler's)
PAYLOADS_STREAM: Final = f"OBJ_{PAYLOADS_BUCKET}"  # the stream behind it


def exec_subject(owner: str, execution_id: str, event_type: str) -> str:
    """``cronium.exec.<owner>.<id>.<event>`` for an event type tag such as ``execution.queued``."""
    return f"cronium.exec.{owner}.{execution_id}.{short_type(event_type)}"


def exec_events(execution_id: str, owner: str = ANY_OWNER) -> str:
    """Every lifecycle event of one execution (of ``owner``, or whoever owns it)."""
    return f"cronium.exec.{owner}.{execution_id}.>"


def log_subject(owner: str, execution_id: str) -> str:
    """Log chunks of one execution (the live-tail subject); ``owner`` may be :data:`ANY_OWNER`
    when reading."""
    return f"cronium.logs.{owner}.{execution_id}"


def owner_of(subject: str) -> str | None:
    """The owner token of an execution or log subject, or ``None`` for other subjects."""
    tokens = subject.split(".")
    if len(tokens) >= 4 and tokens[0] == "cronium" and tokens[1] in ("exec", "logs"):
        return tokens[2]
    return None


def job_subject(runner: RunnerKind, priority: Priority) -> str:
    """A runner's lane for one priority."""
    return f"cronium.jobs.{runner}.{priority}"


def dlq_subject(source: str) -> str:
    """Where a consumer parks a message it could not process (``source`` names the consumer)."""
    return f"cronium.dlq.{source}"
