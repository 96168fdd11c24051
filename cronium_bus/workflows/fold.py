"""The pure decisions of a workflow: which nodes run now, with what input, which are skipped and
why, and when the workflow ends. The workflow consumer calls :func:`decide` with what the events
say and publishes what it returns (idempotently: node execution ids derive from the workflow's).

Semantics (README, Workflows):

- start nodes (no incoming edge) run at once, in parallel, with the workflow's input;
- a node is decided once every predecessor has ended or been skipped: it runs when every
  incoming edge from a predecessor that ran is satisfied and at least one such edge exists;
  otherwise it is skipped, with the reason, and the skip propagates;
- an edge is satisfied by its predecessor's outcome: ``always`` by any, ``on_success`` by
  success, ``on_failure`` by anything else (a rejected input counts as a failure),
  ``on_condition`` by a condition the script set to true;
- a node's input is its predecessor's output when one predecessor ran, an object keyed by node
  name when several did;
- the workflow ends ``succeeded`` when every node that ran succeeded, ``failed`` otherwise,
  ``cancelled`` when cancelled (no new node starts; it ends once none runs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal

import msgspec

from cronium_bus.ids import derived_id
from cronium_bus.workflows.definition import Definition, Edge

NodeStatus = Literal["pending", "running", "succeeded", "failed", "skipped"]
ENDED: Final = frozenset({"succeeded", "failed", "skipped"})


class NodeState(msgspec.Struct, frozen=True, kw_only=True):
    """What is known of one node."""

    status: NodeStatus = "pending"
    output: Any = None
    condition: bool | None = None
    reason: str = ""


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """What to do now: nodes to start (with their input), nodes to skip (with why), and the
    workflow's final status once it has one."""

    start: tuple[tuple[str, Any], ...] = ()
    skip: tuple[tuple[str, str], ...] = ()
    final: Literal["succeeded", "failed", "cancelled"] | None = None


def satisfied(edge: Edge, pred: NodeState) -> bool:
    """Whether ``edge`` holds for its predecessor's outcome (the predecessor ran)."""
    if edge.when == "always":
        return True
    if edge.when == "on_success":
        return pred.status == "succeeded"
    if edge.when == "on_failure":
        return pred.status == "failed"
    return pred.condition is True


def _order(definition: Definition) -> list[str]:
    """Node names in a topological order (definitions are acyclic: checked at parse)."""
    indegree = {n.name: 0 for n in definition.nodes}
    for e in definition.edges:
        indegree[e.to] += 1
    ready = [n for n, d in indegree.items() if d == 0]
    out: list[str] = []
    while ready:
        name = ready.pop(0)
        out.append(name)
        for e in definition.edges:
            if e.source == name:
                indegree[e.to] -= 1
                if indegree[e.to] == 0:
                    ready.append(e.to)
    return out


def decide(
    definition: Definition,
    workflow_input: Any,
    nodes: Mapping[str, NodeState],
    *,
    cancelled: bool = False,
) -> Decision:
    """The next step of a workflow from its nodes' states (see module docstring)."""
    view = {n.name: nodes.get(n.name, NodeState()) for n in definition.nodes}
    start: list[tuple[str, Any]] = []
    skip: list[tuple[str, str]] = []
    for name in _order(definition):
        if view[name].status != "pending":
            continue
        edges = definition.predecessors(name)
        if not edges:
            if not cancelled:
                start.append((name, workflow_input))
                view[name] = NodeState(status="running")
            continue
        preds = [(e, view[e.source]) for e in edges]
        if any(p.status not in ENDED for _, p in preds):
            continue  # not decided yet
        ran = [(e, p) for e, p in preds if p.status != "skipped"]
        unmet = [e for e, p in ran if not satisfied(e, p)]
        if not ran:
            reason = "every predecessor was skipped"
        elif unmet:
            e = unmet[0]
            reason = f"{e.source} did not satisfy {e.when}"
        elif cancelled:
            continue  # a cancelled workflow starts nothing new
        else:
            one = len(ran) == 1
            node_input = ran[0][1].output if one else {e.source: p.output for e, p in ran}
            start.append((name, node_input))
            view[name] = NodeState(status="running")
            continue
        skip.append((name, reason))
        view[name] = NodeState(status="skipped", reason=reason)
    final: Literal["succeeded", "failed", "cancelled"] | None = None
    if not any(s.status == "running" for s in view.values()):
        if cancelled:
            final = "cancelled"
        elif all(s.status in ENDED for s in view.values()):
            ran_all = [s for s in view.values() if s.status != "skipped"]
            final = "succeeded" if all(s.status == "succeeded" for s in ran_all) else "failed"
    return Decision(start=tuple(start), skip=tuple(skip), final=final)


def node_execution_id(
    workflow_id: str, definition: Definition, node: str, request_event_id: str
) -> str:
    """The execution id of a node: the workflow's id and the node's index, with a digest of
    the workflow's request (see :func:`cronium_bus.ids.derived_id`)."""
    return derived_id(workflow_id, str(definition.index(node)), request_event_id)
