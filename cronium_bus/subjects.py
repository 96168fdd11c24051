"""Subjects, streams, consumers and buckets: the one naming scheme of the bus."""

from __future__ import annotations

from typing import Final

from cronium_bus.events import Priority, RunnerKind, short_type

EXEC_STREAM: Final = "CRONIUM_EXEC"
JOBS_STREAM: Final = "CRONIUM_JOBS"
LOGS_STREAM: Final = "CRONIUM_LOGS"
DLQ_STREAM: Final = "CRONIUM_DLQ"

EXEC_ALL: Final = "cronium.exec.>"
JOBS_ALL: Final = "cronium.jobs.>"
LOGS_ALL: Final = "cronium.logs.>"
DLQ_ALL: Final = "cronium.dlq.>"
REQUESTS: Final = "cronium.exec.*.requested"
CANCELS: Final = "cronium.exec.*.cancel_requested"

HEARTBEAT_BUCKET: Final = "cronium_health"
VARIABLES_BUCKET: Final = "cronium_variables"
SECRETS_BUCKET: Final = "cronium_secrets"
SERVERS_BUCKET: Final = "cronium_servers"
CIRCUITS_BUCKET: Final = "cronium_circuits"
LIMITS_BUCKET: Final = "cronium_limits"
PAYLOADS_BUCKET: Final = "cronium_payloads"  # Object Store
PAYLOADS_STREAM: Final = f"OBJ_{PAYLOADS_BUCKET}"  # the stream behind it


def exec_subject(execution_id: str, event_type: str) -> str:
    """``cronium.exec.<id>.<event>`` for an event type tag such as ``execution.queued``."""
    return f"cronium.exec.{execution_id}.{short_type(event_type)}"


def exec_events(execution_id: str) -> str:
    """Every lifecycle event of one execution."""
    return f"cronium.exec.{execution_id}.>"


def log_subject(execution_id: str) -> str:
    """Log chunks of one execution (the live-tail subject)."""
    return f"cronium.logs.{execution_id}"


def job_subject(runner: RunnerKind, priority: Priority) -> str:
    """A runner's lane for one priority."""
    return f"cronium.jobs.{runner}.{priority}"


def dlq_subject(source: str) -> str:
    """Where a consumer parks a message it could not process (``source`` names the consumer)."""
    return f"cronium.dlq.{source}"
