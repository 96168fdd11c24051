"""Workflow definitions and the pure workflow fold: refusals name the problem, and the fold
follows the semantics on generated DAGs and outcomes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from cronium_bus.ids import is_valid_id
from cronium_bus.workflows.definition import WHENS, Definition, WorkflowError, decode, parse
from cronium_bus.workflows.fold import NodeState, decide, node_execution_id, satisfied


def _node(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "runtime": "bash", "code": f"echo {name}", **extra}


def diamond() -> Definition:
    return parse(
        {
            "name": "diamond",
            "input": {"n": 1},
            "nodes": [_node(n) for n in ("a", "b", "c", "d", "e")],
            "edges": [
                {"from": "a", "to": "b"},
                {"from": "a", "to": "c", "when": "on_condition"},
                {"from": "b", "to": "d", "when": "always"},
                {"from": "c", "to": "d", "when": "always"},
                {"from": "a", "to": "e", "when": "on_failure"},
            ],
        }
    )


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ({"edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "a"}]}, "cycle: a → b → a"),
        ({"edges": [{"from": "a", "to": "zz"}]}, "unknown node 'zz'"),
        ({"edges": [{"from": "a", "to": "b"}, {"from": "a", "to": "b"}]}, "given twice"),
        ({"nodes": [_node("a"), _node("a")]}, "defined twice"),
        ({"nodes": [_node("a", input={"x": 1}), _node("b")]}, "sets its own input"),
        ({"nodes": [_node("a", input_schema={"type": 12}), _node("b")]}, "invalid input_schema"),
        ({"nodes": [_node("a", runtime="ruby"), _node("b")]}, "invalid workflow definition"),
        ({"nodes": []}, "invalid workflow definition"),
        ({"extra": 1}, "invalid workflow definition"),
        ({"edges": [{"from": "a", "to": "b", "when": "sometimes"}]}, "invalid workflow"),
    ],
)
def test_a_definition_that_cannot_run_is_refused_naming_why(
    patch: dict[str, Any], reason: str
) -> None:
    base: dict[str, Any] = {"name": "w", "nodes": [_node("a"), _node("b")], "edges": []}
    with pytest.raises(WorkflowError, match=reason):
        parse({**base, **patch})


def test_limits_on_nodes_bytes_and_nesting() -> None:
    nodes = [_node(f"n{i}") for i in range(101)]
    with pytest.raises(WorkflowError, match="101 nodes, the limit is 100"):
        parse({"name": "w", "nodes": nodes})
    with pytest.raises(WorkflowError, match="over the limit"):
        decode(b" " * (1024 * 1024 + 1))
    with pytest.raises(WorkflowError, match="not valid JSON"):
        decode(b'{"name": "w", "input": ' + b"[" * 500 + b"]" * 500 + b"}")


def test_the_diamond_follows_the_semantics() -> None:
    """a succeeds with condition true: b and c run in parallel with a's output, e (on_failure)
    is skipped, d joins b and c with an object keyed by node name."""
    d = diamond()
    first = decide(d, {"n": 1}, {})
    assert first.start == (("a", {"n": 1}),) and first.final is None
    after_a = {"a": NodeState(status="succeeded", output=7, condition=True)}
    second = decide(d, {"n": 1}, after_a)
    assert {n for n, _ in second.start} == {"b", "c"} and all(i == 7 for _, i in second.start)
    assert second.skip == (("e", "a did not satisfy on_failure"),)
    both = {
        **after_a,
        "b": NodeState(status="succeeded", output="B"),
        "c": NodeState(status="failed", output="C"),
        "e": NodeState(status="skipped"),
    }
    third = decide(d, None, both)
    assert third.start == (("d", {"b": "B", "c": "C"}),)
    done = decide(d, None, {**both, "d": NodeState(status="succeeded")})
    assert done.final == "failed"  # c ran and failed: Cronium's rule


@st.composite
def dags(draw: st.DrawFn) -> Definition:
    n = draw(st.integers(1, 8))
    names = [f"n{i}" for i in range(n)]
    edges = []
    for j in range(1, n):
        for i in range(j):  # only forward edges: acyclic by construction
            if draw(st.booleans()):
                edges.append(
                    {"from": names[i], "to": names[j], "when": draw(st.sampled_from(WHENS))}
                )
    return parse({"name": "g", "nodes": [_node(x) for x in names], "edges": edges})


@hsettings(max_examples=300)
@given(dags(), st.data())
def test_the_fold_on_generated_dags_decides_every_node_once(
    definition: Definition, data: st.DataObject
) -> None:
    """Run the fold to the end with generated outcomes: every node starts at most once, is
    decided only after all its predecessors ended, runs exactly when the rule says, and the
    workflow ends once, with the status Cronium's rule gives."""
    states: dict[str, NodeState] = {}
    started: list[str] = []
    final = None
    for _ in range(len(definition.nodes) * 2 + 2):  # bounded: each round decides something
        step = decide(definition, "in", states)
        for name, reason in step.skip:
            assert name not in states or states[name].status == "pending"
            states[name] = NodeState(status="skipped", reason=reason)
        for name, _input in step.start:
            assert name not in started
            for e in definition.predecessors(name):
                assert states[e.source].status in ("succeeded", "failed", "skipped")
            started.append(name)
            outcome = data.draw(st.sampled_from(["succeeded", "failed"]))
            states[name] = NodeState(
                status=outcome, output=name, condition=data.draw(st.booleans())
            )
        if step.final is not None:
            final = step.final
            break
    assert final is not None
    assert set(states) == {n.name for n in definition.nodes}
    for node in definition.nodes:
        preds = definition.predecessors(node.name)
        ran = [e for e in preds if states[e.source].status != "skipped"]
        should_run = not preds or (bool(ran) and all(satisfied(e, states[e.source]) for e in ran))
        assert (states[node.name].status != "skipped") == should_run, node.name
    ran_states = [s for s in states.values() if s.status != "skipped"]
    assert final == ("succeeded" if all(s.status == "succeeded" for s in ran_states) else "failed")
    assert decide(definition, "in", states).start == ()  # nothing starts twice


def test_a_cancelled_workflow_starts_nothing_and_ends_when_nothing_runs() -> None:
    d = diamond()
    running = {"a": NodeState(status="running")}
    assert decide(d, None, running, cancelled=True).final is None
    ended = decide(d, None, {"a": NodeState(status="failed")}, cancelled=True)
    assert ended.start == () and ended.final == "cancelled"


def test_node_execution_ids_are_distinct_and_valid() -> None:
    d = diamond()
    for workflow_id in ("wf_" + "x" * 45, "w" * 64):
        ids = {node_execution_id(workflow_id, d, n.name, "ev_1") for n in d.nodes}
        assert len(ids) == 5 and all(is_valid_id(i) for i in ids), ids
        assert json.dumps(sorted(ids))
    # the same every time, another for another request: nobody who has not seen the
    # request's event id can take a node's id first
    assert node_execution_id("wf", d, "a", "ev_1") == node_execution_id("wf", d, "a", "ev_1")
    assert node_execution_id("wf", d, "a", "ev_1") != node_execution_id("wf", d, "a", "ev_2")
    assert node_execution_id("wf", d, "a", "ev_1").startswith("wf-0-")


def _validate(path: Path, *extra: str) -> tuple[int, str, str]:
    import contextlib
    import io

    from cronium_bus.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["workflow", "validate", str(path), *extra])
    return code, out.getvalue(), err.getvalue()


def test_cronium_workflow_validate(tmp_path: Path) -> None:
    """Exit 0 with a summary (a node's `file` read relative to the definition), or 2 naming
    the problem: a cycle, a YAML alias, nesting, a missing script, both code and file."""
    (tmp_path / "b.py").write_text("print(1)\n")
    good = tmp_path / "w.yaml"
    good.write_text(
        "name: two\ninput: {n: 1}\nnodes:\n"
        "  - {name: a, runtime: bash, code: echo a}\n"
        "  - {name: b, runtime: python, file: b.py, input_schema: {type: object}}\n"
        "edges:\n  - {from: a, to: b, when: on_failure}\n"
    )
    assert _validate(good) == (0, "workflow two: 2 nodes, 1 edges; starts with a\n", "")
    code, out, _ = _validate(good, "--json")
    assert code == 0 and json.loads(out)["nodes"][1]["code"] == "print(1)\n"
    cases = {
        "name: c\nnodes: [{name: a, runtime: bash, code: x}, {name: b, runtime: bash, code: y}]"
        "\nedges: [{from: a, to: b}, {from: b, to: a}]\n": "cycle: a → b → a",
        "a: &x [1, 2]\nb: [*x, *x]\n": "YAML alias",
        "name: d\ninput: " + "[" * 100 + "]" * 100 + "\nnodes: []\n": "nests deeper",
        "name: e\nnodes: [{name: a, runtime: bash, file: nope.sh}]\n": "cannot read",
        "name: f\nnodes: [{name: a, runtime: bash, file: b.py, code: x}]\n": "both code and",
        "- just\n- a list\n": "not a workflow definition",
        "name: [unclosed\n": "not valid YAML",
    }
    for text, reason in cases.items():
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        code, _, err = _validate(bad)
        assert code == 2 and reason in err, (text, err)
    assert _validate(tmp_path / "missing.yaml")[0] == 2


@hsettings(max_examples=100)
@given(st.text(max_size=300))
def test_any_file_is_validated_or_refused(text: str) -> None:
    """Whatever the file holds: exit 0 or 2 with a reason, never a crash."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "any.yaml"
        path.write_text(text)
        code, _, err = _validate(path)
    assert code == 0 or (code == 2 and "cronium: error:" in err)
