"""From events to warehouse rows (pure; the projector and replay share it)."""

from __future__ import annotations

import hashlib
from typing import Any, Final

import msgspec

from cronium_bus.events import AnyEvent, LogChunk, Terminal
from cronium_bus.state import ExecutionState
from cronium_bus.workflows.state import WorkflowState

GENESIS: Final = "0" * 64
_AUDIT_DETAIL_FIELDS: Final = (
    "error",
    "helper",
    "key",
    "ok",
    "detail",
    "reason",
    "lane",
    "runner",
    "target",
    "exit_code",
    "condition",
    "size_bytes",
)


def _ts(value: Any) -> str | None:
    """A UTC datetime as ClickHouse writes DateTime64(6) back (so hashes are stable)."""
    return value.strftime("%Y-%m-%d %H:%M:%S.%f") if value is not None else None


def raw_row(seq: int, event: AnyEvent, payload: bytes) -> dict[str, Any]:
    """One row of ``events_raw``."""
    return {
        "seq": seq,
        "event_id": event.event_id,
        "type": event.type,
        "execution_id": event.execution_id,
        "attempt": event.attempt,
        "user": event.user,
        "time": _ts(event.time),
        "payload": payload.decode(),
    }


def execution_rows(
    state: ExecutionState, version: int, terminals: dict[int, Terminal]
) -> list[dict[str, Any]]:
    """One ``executions`` row per attempt of a folded execution (a rejection is attempt 1)."""
    req = state.request
    base = {
        "execution_id": state.execution_id,
        "user": state.user or "",
        "correlation_id": state.correlation_id or "",
        "parent_id": state.parent_id or "",
        "event_ref": (req.event_ref or "") if req else "",
        "workflow_id": req.workflow.workflow_id if req and req.workflow else "",
        "node": req.workflow.node if req and req.workflow else "",
        "schedule": req.schedule.name if req and req.schedule else "",
        "runtime": req.runtime if req else "",
        "runner": req.runner if req else "",
        "targets": ",".join(req.targets) if req else "",
        "priority": req.priority if req else "",
        "requested_at": _ts(state.requested_at),
        "version": version,
    }
    attempts = state.attempts or ()
    if not attempts:
        return [
            {
                **base,
                "attempt": 1,
                "status": state.status,
                "error_kind": state.error.kind if state.error else "",
                "error_message": state.error.message if state.error else "",
                "exit_code": None,
                "started_at": None,
                "ended_at": None,
                "setup_ms": 0.0,
                "run_ms": 0.0,
                "cleanup_ms": 0.0,
                "peak_memory_bytes": None,
                "cpu_time_ms": None,
                "output_bytes": 0,
            }
        ]
    rows = []
    for a in attempts:
        t = terminals.get(a.attempt)
        rows.append(
            {
                **base,
                "attempt": a.attempt,
                "status": a.status,
                "error_kind": a.error.kind if a.error else "",
                "error_message": a.error.message if a.error else "",
                "exit_code": a.exit_code,
                "started_at": _ts(a.started_at),
                "ended_at": _ts(a.ended_at),
                "setup_ms": t.durations.setup_ms if t else 0.0,
                "run_ms": t.durations.run_ms if t else 0.0,
                "cleanup_ms": t.durations.cleanup_ms if t else 0.0,
                "peak_memory_bytes": t.usage.peak_memory_bytes if t else None,
                "cpu_time_ms": t.usage.cpu_time_ms if t else None,
                "output_bytes": t.usage.output_bytes if t else 0,
            }
        )
    return rows


def workflow_row(state: WorkflowState, version: int) -> dict[str, Any]:
    """The ``workflows`` row of a folded workflow: its status and every node's."""
    views = list(state.nodes.values())
    return {
        "workflow_id": state.workflow_id,
        "user": state.user,
        "name": state.definition.name,
        "status": state.status,
        "nodes": len(views),
        "succeeded": sum(v.status == "succeeded" for v in views),
        "failed": sum(
            v.status not in ("succeeded", "skipped", "pending", "running") for v in views
        ),
        "skipped": sum(v.status == "skipped" for v in views),
        "not_started": sum(v.status == "pending" for v in views),
        "data_bytes": state.data_bytes(),
        "requested_at": _ts(state.requested_at),
        "ended_at": _ts(state.ended_at),
        "node_states": msgspec.json.encode(
            [
                {
                    "node": v.name,
                    "status": v.status,
                    "execution_id": v.execution_id,
                    "input_bytes": v.input_bytes,
                    "reason": v.reason,
                    "requested_at": _ts(v.requested_at),
                    "ended_at": _ts(v.ended_at),
                }
                for v in views
            ]
        ).decode(),
        "version": version,
    }


def log_rows(chunk: LogChunk) -> list[dict[str, Any]]:
    """One ``log_archive`` row per line of a chunk."""
    time = _ts(chunk.time)
    return [
        {
            "execution_id": chunk.execution_id,
            "attempt": chunk.attempt,
            "stream": chunk.stream,
            "seq": chunk.first_seq + i,
            "time": time,
            "source": chunk.source or "",
            "line": line,
        }
        for i, line in enumerate(chunk.lines)
    ]


def audit_detail(event: AnyEvent) -> str:
    """The audited facts of an event (never secret values: those never enter events)."""
    data = msgspec.to_builtins(event)
    picked = {k: data[k] for k in _AUDIT_DETAIL_FIELDS if data.get(k) is not None}
    if event.type == "execution.requested":
        request = data["request"]
        picked["request"] = {
            k: request[k]
            for k in ("runtime", "runner", "targets", "priority", "timeout_s", "limits", "secrets")
        }
        picked["code_sha256"] = hashlib.sha256(request["code"].encode()).hexdigest()
    return msgspec.json.encode(picked).decode()


def chain_hash(prev_hash: str, row: dict[str, Any]) -> str:
    """The hash of an audit row: sha256 over the previous hash and the row's fields."""
    fields = [
        str(row[k]) for k in ("seq", "time", "execution_id", "user", "actor", "action", "detail")
    ]
    return hashlib.sha256("\x1f".join([prev_hash, *fields]).encode()).hexdigest()


def audit_row(seq: int, event: AnyEvent, prev_hash: str) -> dict[str, Any]:
    """The next audit row, chained to ``prev_hash``."""
    row = {
        "seq": seq,
        "time": _ts(event.time),
        "execution_id": event.execution_id,
        "user": event.user,
        "actor": event.producer,
        "action": event.type,
        "detail": audit_detail(event),
        "prev_hash": prev_hash,
    }
    row["hash"] = chain_hash(prev_hash, row)
    return row
