"""A workflow definition: nodes (execution request templates) and edges between them.

Written in YAML or JSON::

    name: nightly
    input: {"day": "2026-12-01"}          # optional: the start nodes' input
    nodes:
      - name: fetch
        runtime: python
        code: import cronium; cronium.output({"rows": 3})
      - name: report
        runtime: bash
        file: report.sh                    # read by the CLI, relative to the definition
        input_schema: {"type": "object", "required": ["rows"]}
    edges:
      - {from: fetch, to: report, when: on_success}   # or always, on_failure, on_condition

A node is any field of a request (runtime, code, runner and targets, limits, timeout, retry,
secrets, priority) plus its ``name`` and an optional ``input_schema`` (JSON Schema 2020-12); its
input comes from its predecessors, so it sets none. :func:`check` refuses, naming the problem, a
cycle (naming it), an edge naming an unknown node, a duplicate edge, a node no start node
reaches, an invalid input schema, and more nodes or bytes than the limits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import jsonschema
import msgspec

from cronium_bus.codec import check_depth
from cronium_bus.errors import CroniumError, ErrorKind, EventDecodeError
from cronium_bus.events import WHENS, Definition, Edge, Node, When

MAX_NODES: Final = 100
MAX_DEFINITION_BYTES: Final = 1024 * 1024
MAX_WORKFLOW_ID: Final = 48
"""Workflow ids are at most 48 characters, so a node's execution id
(``<id>-<index>-<digest>``) fits in 64."""

__all__ = ["WHENS", "Definition", "Edge", "Node", "When", "WorkflowError", "check", "parse"]


class WorkflowError(CroniumError):
    """A workflow definition or input is refused."""

    kind: ErrorKind = "validation"


def parse(data: Mapping[str, Any], *, max_nodes: int = MAX_NODES) -> Definition:
    """A checked definition from decoded YAML or JSON, or :class:`WorkflowError` saying why."""
    try:
        definition = msgspec.convert(dict(data), Definition)
    except msgspec.ValidationError as exc:
        raise WorkflowError(f"invalid workflow definition: {exc}") from exc
    check(definition, max_nodes=max_nodes)
    return definition


def decode(
    raw: bytes, *, max_nodes: int = MAX_NODES, max_bytes: int = MAX_DEFINITION_BYTES
) -> Definition:
    """A checked definition from JSON bytes."""
    if len(raw) > max_bytes:
        raise WorkflowError(
            f"the definition is {len(raw):,} bytes, over the limit of {max_bytes:,}"
        )

    try:
        check_depth(raw)
        data = msgspec.json.decode(raw)
    except (EventDecodeError, msgspec.DecodeError) as exc:
        raise WorkflowError(f"the definition is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise WorkflowError("a workflow definition is an object with name, nodes and edges")
    return parse(data, max_nodes=max_nodes)


def _cycle(definition: Definition) -> list[str] | None:
    """A cycle as a path of node names (first = last), or ``None``."""
    succ: dict[str, list[str]] = {n.name: [] for n in definition.nodes}
    for e in definition.edges:
        succ[e.source].append(e.to)
    state: dict[str, int] = {}  # 1 on the path, 2 done
    for root in succ:
        if state.get(root):
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = [root]
        state[root] = 1
        while stack:  # iterative: a definition of 100 nodes never recurses deeply
            name, i = stack[-1]
            if i < len(succ[name]):
                stack[-1] = (name, i + 1)
                nxt = succ[name][i]
                if state.get(nxt) == 1:
                    return [*path[path.index(nxt) :], nxt]
                if not state.get(nxt):
                    state[nxt] = 1
                    stack.append((nxt, 0))
                    path.append(nxt)
            else:
                state[name] = 2
                stack.pop()
                path.pop()
    return None


def check(definition: Definition, *, max_nodes: int = MAX_NODES) -> None:
    """Refuse a definition that cannot run, naming the problem (see module docstring)."""
    names = [n.name for n in definition.nodes]
    if len(names) > max_nodes:
        raise WorkflowError(f"{len(names)} nodes, the limit is {max_nodes}")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise WorkflowError(f"node {name!r} is defined twice")
        seen.add(name)
    for node in definition.nodes:
        if node.input is not None or node.input_ref is not None:
            raise WorkflowError(
                f"node {node.name!r} sets its own input",
                hint="a node's input is its predecessors' output (or the workflow's input)",
            )
        if node.workflow is not None:
            raise WorkflowError(f"node {node.name!r} sets workflow (the consumer sets it)")
        if node.input_schema is not None:
            try:
                jsonschema.Draft202012Validator.check_schema(node.input_schema)
            except jsonschema.SchemaError as exc:
                raise WorkflowError(
                    f"node {node.name!r} has an invalid input_schema: {exc.message}"
                ) from exc
    pairs: set[tuple[str, str]] = set()
    for edge in definition.edges:
        for end in (edge.source, edge.to):
            if end not in seen:
                raise WorkflowError(f"an edge names an unknown node {end!r}")
        if (edge.source, edge.to) in pairs:
            raise WorkflowError(f"the edge {edge.source} → {edge.to} is given twice")
        pairs.add((edge.source, edge.to))
    cycle = _cycle(definition)
    if cycle is not None:
        raise WorkflowError(f"the edges make a cycle: {' → '.join(cycle)}")
    reached = set(definition.starts)
    frontier = list(reached)
    while frontier:
        name = frontier.pop()
        for edge in definition.edges:
            if edge.source == name and edge.to not in reached:
                reached.add(edge.to)
                frontier.append(edge.to)
    unreachable = [n for n in names if n not in reached]
    if unreachable:
        raise WorkflowError(f"node {unreachable[0]!r} cannot be reached from any start node")
