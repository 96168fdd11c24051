"""The fold of a workflow's own events (``workflow.*`` on its subjects) into what is known of
it: its definition and input, every node's state, whether it was cancelled, how it ended.

Safe on an at-least-once stream like the execution fold: the first event of each kind per node
wins (a node requested, skipped or ended twice changes nothing) and the first terminal event of
the workflow wins.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final, Literal

import msgspec

from cronium_bus.events import (
    CancelRequested,
    Definition,
    ErrorInfo,
    Event,
    NodeEnded,
    NodeRequested,
    NodeSkipped,
    PayloadRef,
    WorkflowCancelled,
    WorkflowEnded,
    WorkflowFailed,
    WorkflowRejected,
    WorkflowRequested,
    WorkflowSucceeded,
)
from cronium_bus.workflows.fold import NodeState

WorkflowStatus = Literal["requested", "running", "succeeded", "failed", "cancelled", "rejected"]
_FINAL: Final[dict[type[Event], WorkflowStatus]] = {
    WorkflowSucceeded: "succeeded",
    WorkflowFailed: "failed",
    WorkflowCancelled: "cancelled",
    WorkflowRejected: "rejected",
}


class NodeView(msgspec.Struct, kw_only=True):
    """One node as the workflow's events tell it."""

    name: str
    status: str = "pending"
    """pending, running, skipped, or its execution's terminal status."""
    execution_id: str | None = None
    input_bytes: int = 0
    reason: str = ""
    output: Any = None
    output_ref: PayloadRef | None = None
    condition: bool | None = None
    error: ErrorInfo | None = None
    requested_at: datetime | None = None
    ended_at: datetime | None = None

    def fold_state(self) -> NodeState:
        """What the pure decision needs: success is ``succeeded``, any other end a failure."""
        if self.status in ("pending", "running", "skipped"):
            return NodeState(status=self.status, reason=self.reason)  # type: ignore[arg-type]
        return NodeState(
            status="succeeded" if self.status == "succeeded" else "failed",
            output=self.output,
            condition=self.condition,
        )


class WorkflowState(msgspec.Struct, kw_only=True):
    """What is known of one workflow."""

    workflow_id: str
    user: str
    definition: Definition
    input: Any
    request_event_id: str
    requested_at: datetime
    status: WorkflowStatus = "running"
    nodes: dict[str, NodeView] = msgspec.field(default_factory=dict)
    cancel_requested: bool = False
    ended_at: datetime | None = None
    error: ErrorInfo | None = None
    terminals: int = 0
    """How many terminal events the workflow has (exactly one once it ended)."""

    @property
    def final(self) -> bool:
        """Whether the workflow has ended."""
        return self.status in ("succeeded", "failed", "cancelled", "rejected")

    def data_bytes(self) -> int:
        """The workflow's data so far: the sum of its nodes' inputs."""
        return sum(n.input_bytes for n in self.nodes.values())

    def fold_states(self) -> dict[str, NodeState]:
        """Every node's state for :func:`cronium_bus.workflows.fold.decide`."""
        return {name: view.fold_state() for name, view in self.nodes.items()}


def fold_workflow(events: Iterable[Event]) -> WorkflowState | None:
    """Fold one workflow's events (stream order); ``None`` if it was never requested."""
    state: WorkflowState | None = None
    for event in events:
        if isinstance(event, WorkflowRequested):
            if state is None:
                state = WorkflowState(
                    workflow_id=event.execution_id,
                    user=event.user,
                    definition=event.definition,
                    input=event.input if event.input is not None else event.definition.input,
                    request_event_id=event.event_id,
                    requested_at=event.time,
                    nodes={n.name: NodeView(name=n.name) for n in event.definition.nodes},
                )
            continue
        if state is None or event.user != state.user:
            continue  # (an admin reading every owner's events of this id sees only the first's)
        if isinstance(event, CancelRequested):
            state.cancel_requested = True
        elif isinstance(event, WorkflowEnded | WorkflowRejected):
            state.terminals += 1
            if not state.final:
                state.status = _FINAL[type(event)]
                state.ended_at = event.time
                if isinstance(event, WorkflowRejected):
                    state.error = event.error
        elif isinstance(event, NodeRequested | NodeSkipped | NodeEnded):
            view = state.nodes.get(event.node)
            if view is not None:
                _apply_node(view, event)
    return state


def _apply_node(view: NodeView, event: NodeRequested | NodeSkipped | NodeEnded) -> None:
    if isinstance(event, NodeRequested):
        if view.status == "pending":
            view.status = "running"
            view.execution_id = event.node_execution_id
            view.input_bytes = event.input_bytes
            view.requested_at = event.time
    elif isinstance(event, NodeSkipped):
        if view.status == "pending":
            view.status = "skipped"
            view.reason = event.reason
    elif view.status in ("pending", "running"):
        view.status = event.status
        view.execution_id = event.node_execution_id
        view.output = event.output
        view.output_ref = event.output_ref
        view.condition = event.condition
        view.error = event.error
        view.ended_at = event.time
        if event.error is not None:
            view.reason = event.error.message
