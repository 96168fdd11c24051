"""The consistency checker (``cronium check``): reads the streams and Docker, reports violations.

- every attempt that was queued has exactly one terminal event — except the current attempt of
  an execution still in flight (reported as *open*, a violation only with ``require_final``);
- log sequence numbers of every (execution, attempt, stream) are gapless from 0 (unless the log
  stream has aged out its beginning);
- no container labelled by Cronium belongs to an execution that ended more than ``grace_s`` ago
  or that the streams do not know (runners reap within 15 s; the grace covers that), and no warm
  (pooled) container belongs to a runner whose heartbeat is gone;
- a workflow has exactly one terminal event once it ended, every node it decided to run has an
  execution, no node's attempt started twice, and no node still runs after the workflow ended.

The pure part (:func:`find_violations`) takes events and container labels; :func:`check` reads.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import msgspec
from nats.js import JetStreamContext

from cronium_bus.events import (
    AnyEvent,
    LogChunk,
    NodeRequested,
    Queued,
    Requested,
    Started,
    Terminal,
    WorkflowEnded,
    WorkflowRejected,
    WorkflowRequested,
    utcnow,
)
from cronium_bus.health import read_beats
from cronium_bus.history import read_subject
from cronium_bus.provision import installation_id
from cronium_bus.state import fold
from cronium_bus.subjects import EXEC_ALL, EXEC_STREAM, LOGS_ALL, LOGS_STREAM
from cronium_bus.workflows.state import fold_workflow


class Violation(msgspec.Struct, frozen=True, kw_only=True):
    """One broken invariant."""

    kind: str
    execution_id: str
    detail: str


class Report(msgspec.Struct, kw_only=True):
    """What the checker saw and found."""

    executions: int = 0
    workflows: int = 0
    final: int = 0
    open: list[str] = []
    log_streams: int = 0
    containers_checked: bool = False
    containers: int = 0
    violations: list[Violation] = []

    @property
    def ok(self) -> bool:
        return not self.violations


def find_violations(
    events: Iterable[AnyEvent],
    chunks: Iterable[LogChunk],
    containers: list[dict[str, str]] | None,
    *,
    logs_truncated: bool = False,
    require_final: bool = False,
    grace_s: float = 30.0,
    now: datetime | None = None,
    alive_runners: frozenset[str] = frozenset(),
) -> Report:
    """Check the invariants over lifecycle events, log chunks and container labels."""
    now = now or utcnow()
    report = Report()
    # by owner and id: another owner's events under the same id are another story
    by_execution: dict[tuple[str, str], list[AnyEvent]] = defaultdict(list)
    for event in events:
        by_execution[(event.user, event.execution_id)].append(event)
    ended_at: dict[str, datetime | None] = {}
    workflows = {
        i for i, evs in by_execution.items() if any(isinstance(e, WorkflowRequested) for e in evs)
    }
    report.violations.extend(
        _workflow_violations(by_execution, workflows, report, require_final=require_final)
    )
    for key, evs in by_execution.items():
        execution_id = key[1]
        if key in workflows or any(e.type.startswith("schedule.") for e in evs):
            continue  # a workflow's or a schedule's own events, not an execution's
        state = fold(evs)
        if state is None:
            continue
        report.executions += 1
        terminals: dict[int, list[Terminal]] = defaultdict(list)
        queued: set[int] = set()
        for e in evs:
            if isinstance(e, Terminal):
                terminals[e.attempt].append(e)
            elif isinstance(e, Queued):
                queued.add(e.attempt)
        for attempt, ts in terminals.items():
            if len(ts) > 1:
                kinds = ", ".join(t.type for t in ts)
                report.violations.append(
                    Violation(
                        kind="terminal_events",
                        execution_id=execution_id,
                        detail=f"attempt {attempt} has {len(ts)} terminal events ({kinds})",
                    )
                )
        for attempt in sorted(queued - set(terminals)):
            if attempt < state.attempt:
                report.violations.append(
                    Violation(
                        kind="terminal_events",
                        execution_id=execution_id,
                        detail=f"attempt {attempt} was queued but never ended "
                        f"(attempt {state.attempt} followed it)",
                    )
                )
        if state.final:
            report.final += 1
            last = terminals.get(state.attempt)
            ended_at[execution_id] = last[0].time if last else state.requested_at
        else:
            report.open.append(execution_id)
            ended_at[execution_id] = None
            if require_final:
                report.violations.append(
                    Violation(
                        kind="not_final",
                        execution_id=execution_id,
                        detail=f"status {state.status} at attempt {state.attempt}",
                    )
                )
    report.violations.extend(_log_gaps(chunks, report, truncated=logs_truncated))
    if containers is not None:
        report.containers_checked = True
        report.containers = len(containers)
        for labels in containers:
            if labels.get("pool"):
                if labels.get("runner") not in alive_runners:
                    report.violations.append(
                        Violation(
                            kind="orphaned_container",
                            execution_id=labels.get("execution", ""),
                            detail=f"warm container {labels.get('name', '?')} of runner "
                            f"{labels.get('runner')}, which is not alive",
                        )
                    )
                continue
            execution_id = labels.get("execution", "")
            end = ended_at.get(execution_id, now - timedelta(days=365))
            if end is not None and (now - end).total_seconds() > grace_s:
                report.violations.append(
                    Violation(
                        kind="orphaned_container",
                        execution_id=execution_id,
                        detail=f"container {labels.get('name', '?')} is still there "
                        f"{(now - end).total_seconds():.0f} s after the execution ended"
                        if execution_id in ended_at
                        else f"container {labels.get('name', '?')} of an unknown execution",
                    )
                )
    return report


def _workflow_violations(
    by_execution: dict[tuple[str, str], list[AnyEvent]],
    workflows: set[tuple[str, str]],
    report: Report,
    *,
    require_final: bool,
) -> list[Violation]:
    """A workflow has exactly one terminal event once it ended (none while it runs); every node
    it requested has an execution, started at most once per attempt; an ended workflow has no
    node still running."""
    out: list[Violation] = []
    for owner, workflow_id in sorted(workflows):
        evs = by_execution[(owner, workflow_id)]
        report.workflows += 1
        state = fold_workflow(evs)
        if state is None:
            continue
        ends = [e.type for e in evs if isinstance(e, WorkflowEnded | WorkflowRejected)]
        if len(ends) > 1:
            out.append(
                Violation(
                    kind="workflow_terminal",
                    execution_id=workflow_id,
                    detail=f"{len(ends)} terminal events ({', '.join(ends)})",
                )
            )
        if not ends and require_final:
            out.append(
                Violation(kind="workflow_not_final", execution_id=workflow_id, detail="running")
            )
        for request in (e for e in evs if isinstance(e, NodeRequested)):
            node_events = by_execution.get((owner, request.node_execution_id), [])
            if not any(isinstance(e, Requested) for e in node_events):
                out.append(
                    Violation(
                        kind="node_never_started",
                        execution_id=workflow_id,
                        detail=f"node {request.node} was decided but its execution "
                        f"{request.node_execution_id} was never requested",
                    )
                )
            starts: dict[int, int] = defaultdict(int)
            for e in node_events:
                if isinstance(e, Started):
                    starts[e.attempt] += 1
            for attempt, n in starts.items():
                if n > 1:
                    out.append(
                        Violation(
                            kind="node_started_twice",
                            execution_id=workflow_id,
                            detail=f"node {request.node} ({request.node_execution_id}) attempt "
                            f"{attempt} started {n} times",
                        )
                    )
        if state.final and state.status != "rejected":
            running = [v.name for v in state.nodes.values() if v.status == "running"]
            if running:
                out.append(
                    Violation(
                        kind="workflow_terminal",
                        execution_id=workflow_id,
                        detail=f"ended {state.status} while {', '.join(running)} still ran",
                    )
                )
    return out


def _log_gaps(chunks: Iterable[LogChunk], report: Report, *, truncated: bool) -> list[Violation]:
    spans: dict[tuple[str, int, str], list[tuple[int, int]]] = defaultdict(list)
    for c in chunks:
        spans[(c.execution_id, c.attempt, c.stream)].append((c.first_seq, len(c.lines)))
    report.log_streams = len(spans)
    out = []
    for (execution_id, attempt, stream), parts in spans.items():
        parts.sort()
        expected = parts[0][0] if truncated else 0
        for first, n in parts:
            if first > expected:
                out.append(
                    Violation(
                        kind="log_gap",
                        execution_id=execution_id,
                        detail=f"attempt {attempt} {stream}: lines {expected}..{first - 1} missing",
                    )
                )
            expected = max(expected, first + n)
    return out


def container_labels(installation: str) -> list[dict[str, str]] | None:
    """Labels of this installation's containers on the local engine (another stack may share
    it), or None when Docker is unreachable."""
    import docker
    import docker.errors
    import requests.exceptions

    from consumers.container.runtime import (
        LABEL_EXECUTION,
        LABEL_INSTALLATION,
        LABEL_POOL,
        LABEL_RUNNER,
    )

    try:
        client = docker.from_env(timeout=10)
    except docker.errors.DockerException:
        return None
    try:
        # one list call: no inspect per container (which would race with removals)
        mine = [LABEL_EXECUTION, f"{LABEL_INSTALLATION}={installation}"]
        found = client.api.containers(all=True, filters={"label": mine})
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        return None
    finally:
        client.close()
    out = []
    for c in found:
        labels = c.get("Labels") or {}
        out.append(
            {
                "execution": labels.get(LABEL_EXECUTION, ""),
                "name": str((c.get("Names") or [c.get("Id", "?")])[0]).lstrip("/"),
                "runner": labels.get(LABEL_RUNNER, ""),
                "pool": labels.get(LABEL_POOL, ""),
            }
        )
    return out


async def check(
    js: JetStreamContext,
    *,
    max_bytes: int,
    containers: bool = True,
    require_final: bool = False,
    grace_s: float = 30.0,
) -> Report:
    """Read both streams (and Docker) and check every invariant."""
    events = [e async for e in read_subject(js, EXEC_STREAM, EXEC_ALL, max_bytes=max_bytes)]
    chunks = [
        e
        async for e in read_subject(js, LOGS_STREAM, LOGS_ALL, max_bytes=max_bytes)
        if isinstance(e, LogChunk)
    ]
    logs_info = await js.stream_info(LOGS_STREAM)
    labels = container_labels(await installation_id(js)) if containers else None
    alive = frozenset(b.instance for b in await read_beats(js) if b.healthy())
    return find_violations(
        events,
        chunks,
        labels,
        logs_truncated=logs_info.state.first_seq > 1,
        require_final=require_final,
        grace_s=grace_s,
        alive_runners=alive,
    )


def as_dict(report: Report) -> dict[str, Any]:
    """The report as JSON-able data (with ``ok``)."""
    data: dict[str, Any] = msgspec.to_builtins(report)
    data["ok"] = report.ok
    return data
