"""Hostile workflow requests against the real workflow consumer and dispatcher on a real
nats-server: hypothesis mutates a valid request (wrong types, unknown fields, deep nesting,
oversized bodies, cycles, unknown nodes, long ids, nodes that set their own input or claim a
workflow, another owner) and publishes it raw on a workflow request subject. Every one ends in
exactly one answer — ``workflow.rejected`` with a reason, or its start nodes requested — and
the consumer stays up and keeps serving a normal workflow."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from cronium_bus.bus import Bus
from cronium_bus.health import read_beats
from cronium_bus.history import read_messages
from cronium_bus.ids import new_id
from cronium_bus.subjects import EXEC_STREAM
from tests.conftest import Embedded

pytestmark = pytest.mark.timeout(300)


def _valid(workflow_id: str) -> dict[str, Any]:
    return {
        "type": "workflow.requested",
        "event_id": new_id("ev"),
        "time": "2026-12-02T00:00:00Z",
        "execution_id": workflow_id,
        "correlation_id": workflow_id,
        "producer": "fuzz",
        "user": "tester",
        "definition": {
            "name": "fuzz",
            "nodes": [
                {"name": "a", "runtime": "bash", "code": "true"},
                {"name": "b", "runtime": "bash", "code": "true"},
            ],
            "edges": [{"from": "a", "to": "b"}],
        },
    }


_JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.text(max_size=40),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
_PATHS = [
    "definition.name",
    "definition.nodes",
    "definition.edges",
    "definition.input",
    "definition.nodes.0.runtime",
    "definition.nodes.0.code",
    "definition.nodes.0.name",
    "definition.nodes.1.input_schema",
    "definition.edges.0.from",
    "definition.edges.0.when",
    "user",
    "time",
    "schema_version",
    "type",
    "extra",
    "definition.extra",
]
_SPECIAL = st.sampled_from(
    [
        ("cycle", None),
        ("unknown_node", None),
        ("duplicate_edge", None),
        ("own_input", None),
        ("claims_workflow", None),
        ("deep", None),
        ("huge", None),
        ("many_nodes", None),
        ("bad_schema", None),
        ("long_id", None),
        ("other_owner", None),
    ]
)
MUTATIONS = st.lists(
    st.one_of(st.tuples(st.sampled_from(_PATHS), _JUNK), _SPECIAL), min_size=0, max_size=3
)


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    target: Any = doc
    for key in parents:
        if isinstance(target, list):
            target = target[int(key)] if int(key) < len(target) else None
        else:
            target = target.get(key)
        if not isinstance(target, dict | list):
            return  # an earlier mutation replaced the parent: nothing to set
    if isinstance(target, list):
        if int(leaf) < len(target):
            target[int(leaf)] = value
    else:
        target[leaf] = value


def mutate(doc: dict[str, Any], mutations: list[tuple[str, Any]]) -> bytes:
    d = doc.get("definition")
    for path, value in mutations:
        if not isinstance(d, dict) or not isinstance(d.get("nodes"), list):
            d = None
        if path == "cycle" and d is not None:
            d["edges"] = [{"from": "a", "to": "b"}, {"from": "b", "to": "a"}]
        elif path == "unknown_node" and d is not None:
            d["edges"] = [{"from": "a", "to": "zz"}]
        elif path == "duplicate_edge" and d is not None:
            d["edges"] = [{"from": "a", "to": "b"}] * 2
        elif path == "own_input" and d is not None and d["nodes"]:
            _set(doc, "definition.nodes.0.input", {"mine": 1})
        elif path == "claims_workflow" and d is not None and d["nodes"]:
            _set(doc, "definition.nodes.0.workflow", {"workflow_id": "x", "node": "a"})
        elif path == "deep":
            doc["definition"] = {"name": "d", "input": _nested(100), "nodes": []}
        elif path == "huge":
            doc["definition"] = {"name": "h", "input": "x" * (1024 * 1024 + 10), "nodes": []}
        elif path == "many_nodes":
            doc["definition"] = {
                "name": "m",
                "nodes": [{"name": f"n{i}", "runtime": "bash", "code": "true"} for i in range(101)],
            }
        elif path == "bad_schema" and d is not None and d["nodes"]:
            _set(doc, "definition.nodes.0.input_schema", {"type": 12})
        elif path == "long_id":
            doc["execution_id"] = "w" * 60
        elif path == "other_owner":
            doc["user"] = "mallory"
        elif path in _PATHS:
            _set(doc, path, value)
    return msgspec.json.encode(doc)


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.fixture
async def workflow_consumer(bus: Bus, dispatcher: Embedded) -> AsyncIterator[Embedded]:
    from consumers.workflow.service import WorkflowService

    emb = Embedded()
    emb.tasks.append(asyncio.create_task(WorkflowService(bus).run(emb.stopper)))
    yield emb
    await emb.stop()


async def _answers(bus: Bus, workflow_id: str) -> tuple[list[str], list[str]]:
    """The workflow's own terminal-or-progress tokens, and its nodes' request subjects."""
    own, nodes = [], []
    async for msg in read_messages(bus.js, EXEC_STREAM, "cronium.exec.tester.*.*"):
        execution_id, token = msg.subject.split(".")[3:5]
        if execution_id == workflow_id and token != "workflow_requested":
            own.append(token)
        elif execution_id.startswith(f"{workflow_id}-") and token == "requested":  # a node
            nodes.append(execution_id)
    return own, nodes


@hsettings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(mutations=MUTATIONS)
async def test_every_hostile_workflow_request_gets_one_answer(
    bus: Bus, workflow_consumer: Embedded, mutations: list[tuple[str, Any]]
) -> None:
    workflow_id = f"wfz-{new_id('z')[-12:]}"
    doc = _valid(workflow_id)
    body = mutate(copy.deepcopy(doc), mutations)
    subject = f"cronium.exec.tester.{workflow_id}.workflow_requested"
    await bus.js.publish(subject, body, headers={"Nats-Msg-Id": new_id("m")})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    own: list[str] = []
    nodes: list[str] = []
    while loop.time() < deadline:
        own, nodes = await _answers(bus, workflow_id)
        if "workflow_rejected" in own or "workflow_node_requested" in own:
            break
        await asyncio.sleep(0.1)
    assert own, f"no answer to {mutations}"
    if "workflow_rejected" in own:
        assert own.count("workflow_rejected") == 1 and not nodes, (own, nodes)
    else:  # it was valid: its start node was requested, once, and only that
        assert len(nodes) == 1 and nodes[0].startswith(f"{workflow_id}-0-"), (mutations, nodes)
    beats = {b.kind: b for b in await read_beats(bus.js)}
    assert "workflow" in beats and beats["workflow"].healthy()
