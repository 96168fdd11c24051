"""Pure parts of workflows and conditional actions: the workflow fold, the checker's workflow
rules, the notify template, the order of actions and their validation (no I/O)."""

from __future__ import annotations

import random
import time
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from consumers.dispatcher.validate import MAX_ACTIONS, validate_request
from consumers.workflow.actions import action_execution_id, due
from cronium_bus.check import find_violations
from cronium_bus.events import (
    Actions,
    Definition,
    ErrorInfo,
    Event,
    NodeEnded,
    NodeRequested,
    NodeSkipped,
    Request,
    Requested,
    Started,
    WorkflowFailed,
    WorkflowRequested,
    WorkflowSucceeded,
    utcnow,
)
from cronium_bus.ids import new_id
from cronium_bus.schemacheck import SchemaChecker, SchemaCheckError, violation
from cronium_bus.settings import load_settings
from cronium_bus.state import ExecutionState
from cronium_bus.workflows import template
from cronium_bus.workflows.state import fold_workflow

SETTINGS = load_settings(secret_key="test-secret-key-0123456789abcdef")
DEF = msgspec.convert(
    {
        "name": "w",
        "nodes": [{"name": n, "runtime": "bash", "code": "true"} for n in ("a", "b")],
        "edges": [{"from": "a", "to": "b"}],
    },
    Definition,
)


def env(execution_id: str = "wf1", **extra: Any) -> dict[str, Any]:
    return {
        "event_id": new_id("ev"),
        "time": utcnow(),
        "execution_id": execution_id,
        "correlation_id": execution_id,
        "producer": "t",
        "user": "alice",
        **extra,
    }


def history() -> list[Event]:
    return [
        WorkflowRequested(**env(), definition=DEF, input={"x": 1}),
        NodeRequested(**env(), node="a", node_execution_id="wf1-0", input_bytes=7),
        NodeEnded(**env(), node="a", node_execution_id="wf1-0", status="succeeded", output=3),
        NodeRequested(**env(), node="b", node_execution_id="wf1-1", input_bytes=1),
        NodeEnded(
            **env(),
            node="b",
            node_execution_id="wf1-1",
            status="failed",
            error=ErrorInfo(kind="nonzero_exit", message="exit 3"),
        ),
        WorkflowFailed(**env()),
    ]


def test_the_fold_reads_a_workflows_story() -> None:
    state = fold_workflow(history())
    assert state is not None
    assert state.status == "failed" and state.input == {"x": 1} and state.data_bytes() == 8
    assert state.nodes["a"].status == "succeeded" and state.nodes["a"].output == 3
    assert state.nodes["b"].reason == "exit 3"
    assert state.fold_states()["b"].status == "failed"


@hsettings(max_examples=100)
@given(st.randoms(use_true_random=False), st.integers(min_value=0, max_value=3))
def test_repeated_events_change_nothing(rng: random.Random, copies: int) -> None:
    """Redelivered events (any of them, again, later) leave the fold as it was: the first of
    each kind per node wins, and so does the first terminal."""
    events = history()
    again = events + [rng.choice(events[1:]) for _ in range(copies)]
    late = NodeEnded(**env(), node="a", node_execution_id="wf1-0", status="failed")
    first, second = fold_workflow(events), fold_workflow([*again, late, WorkflowSucceeded(**env())])
    assert first is not None and second is not None
    assert msgspec.to_builtins(first.nodes) == msgspec.to_builtins(second.nodes)
    assert second.status == "failed"


def test_events_before_the_request_or_of_unknown_nodes_are_ignored() -> None:
    junk = [NodeSkipped(**env(), node="a", reason="early")]
    assert fold_workflow(junk) is None
    state = fold_workflow(
        [WorkflowRequested(**env(), definition=DEF), NodeSkipped(**env(), node="zz", reason="?")]
    )
    assert state is not None and set(state.nodes) == {"a", "b"} and state.input is None


def test_the_checker_names_a_second_terminal_a_missing_node_and_a_double_start() -> None:
    events: list[Any] = [
        *history(),
        WorkflowSucceeded(**env()),
        Requested(
            **env("wf1-0"),
            request=Request(runtime="bash", code="true"),
        ),
        Started(**env("wf1-0"), runner="r1"),
        Started(**env("wf1-0"), runner="r2"),
    ]
    report = find_violations(events, [], None)
    kinds = sorted(v.kind for v in report.violations)
    assert kinds == ["node_never_started", "node_started_twice", "workflow_terminal"], kinds
    assert report.workflows == 1
    detail = {v.kind: v.detail for v in report.violations}
    assert "2 terminal events" in detail["workflow_terminal"]
    assert "wf1-1 was never requested" in detail["node_never_started"]


def test_a_running_workflow_is_open_not_broken_unless_final_is_required() -> None:
    running = [*history()[:2], Requested(**env("wf1-0"), request=Request(runtime="bash", code="x"))]
    assert find_violations(running, [], None).violations == []
    required = find_violations(running, [], None, require_final=True)
    assert {v.kind for v in required.violations} >= {"workflow_not_final"}


def test_templates_fill_known_fields_and_nothing_else() -> None:
    message = "{{execution_id}} {{ status }} {{output}} {{__class__}} {{a.b}} {{{x}}}"
    assert template.unknown_fields(message) == ["__class__", "a.b", "x"]
    rendered = template.render(message, {"execution_id": "e1", "status": "ok", "output": "{}"})
    assert rendered.startswith("e1 ok {}  ")
    assert len(template.render("{{output}}" * 10, {"output": "x" * 5000})) == template.MAX_MESSAGE


@given(st.text(max_size=300))
def test_rendering_any_text_terminates_and_never_grows_past_the_cap(message: str) -> None:
    out = template.render(message, dict.fromkeys(template.FIELDS, "v" * 100))
    assert len(out) <= template.MAX_MESSAGE


def _state(status: str, condition: bool | None) -> ExecutionState:
    return ExecutionState(
        execution_id="e1", status=status, final=True, attempt=1, condition=condition
    )  # type: ignore[arg-type]


ON = msgspec.convert(
    {
        "always": [{"notify": {"message": "A"}}],
        "success": [{"notify": {"message": "S"}}, {"run": {"runtime": "bash", "code": "true"}}],
        "failure": [{"notify": {"message": "F"}}],
        "condition": [{"notify": {"message": "C"}}],
    },
    Actions,
)


def test_actions_fire_in_cronium_order() -> None:
    request = Request(runtime="bash", code="true", on=ON)
    order = [(w, i) for w, i, _ in due(_state("succeeded", True), request)]
    assert order == [("always", 0), ("success", 0), ("success", 1), ("condition", 0)]
    order = [(w, i) for w, i, _ in due(_state("timed_out", None), request)]
    assert order == [("always", 0), ("failure", 0)]


def test_action_ids_are_stable_unguessable_and_fit() -> None:
    one = action_execution_id("ex1", "success", 2, "ev_a")
    assert one.startswith("ex1-s2-") and one == action_execution_id("ex1", "success", 2, "ev_a")
    assert one != action_execution_id("ex1", "success", 2, "ev_b")
    long = action_execution_id("x" * 64, "condition", 9, "ev_a")
    assert len(long) <= 64 and long != action_execution_id("x" * 63 + "y", "condition", 9, "ev_a")


def _refusal(on: Any) -> str:
    request = msgspec.convert({"runtime": "bash", "code": "true", "on": on}, Request)
    result = validate_request(request, SETTINGS)
    assert isinstance(result, ErrorInfo), result
    return result.message


def test_malformed_actions_are_refused_with_a_reason() -> None:
    run = {"runtime": "bash", "code": "true"}
    assert "exactly one of run or notify" in _refusal({"always": [{}]})
    assert "exactly one of run or notify" in _refusal(
        {"always": [{"run": run, "notify": {"message": "x"}}]}
    )
    assert "unknown field {{secret}}" in _refusal(
        {"always": [{"notify": {"message": "{{secret}}"}}]}
    )
    assert "sets its own input" in _refusal({"success": [{"run": {**run, "input": 1}}]})
    assert "the script is empty" in _refusal({"success": [{"run": {**run, "code": " "}}]})
    chain: dict[str, Any] = run
    for _ in range(4):
        chain = {**run, "on": {"always": [{"run": chain}]}}
    assert "more than 3 levels deep" in _refusal(chain["on"])
    many = {
        "always": [{"notify": {"message": "x"}}] * 10,
        "success": [{"run": run}] * 10,
        "failure": [{"notify": {"message": "y"}}] * 1,
    }
    assert f"more than {MAX_ACTIONS}" in _refusal(many)


def test_an_input_schema_must_be_a_schema() -> None:
    bad = msgspec.convert(
        {"runtime": "bash", "code": "true", "input_schema": {"type": "nope"}}, Request
    )
    result = validate_request(bad, SETTINGS)
    assert isinstance(result, ErrorInfo) and "not a valid JSON Schema" in result.message


def test_a_violation_names_the_path_and_refs_stay_inside_the_schema() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "maximum": 3}}}
    assert violation(schema, {"n": 5}) == "$.n: 5 is greater than the maximum of 3"
    assert violation(schema, {"n": 2}) is None
    local = {"$defs": {"n": {"type": "integer"}}, "$ref": "#/$defs/n"}
    assert violation(local, 3) is None and violation(local, "x") is not None
    for ref in ("#/$defs/nope", "http://127.0.0.1:9/schema.json", "file:///etc/passwd"):
        with pytest.raises(SchemaCheckError, match="cannot be applied"):
            violation({"$ref": ref}, 1)


async def test_a_schema_that_backtracks_forever_is_given_up_within_the_limit() -> None:
    """``^(a+)+$`` against 40 a's and a ! would take years in the service's own process; the
    worker is killed at the limit and the next check works."""
    checker = SchemaChecker(timeout=1.0)
    try:
        await checker.start()
        began = time.monotonic()
        with pytest.raises(SchemaCheckError, match="longer than 1 s"):
            await checker.violation({"type": "string", "pattern": "^(a+)+$"}, "a" * 40 + "!")
        assert time.monotonic() - began < 5
        assert (
            await checker.violation({"type": "integer"}, "x") == "$: 'x' is not of type 'integer'"
        )
        with pytest.raises(SchemaCheckError, match="cannot be applied"):
            await checker.violation({"$ref": "http://127.0.0.1:9/x"}, 1)
    finally:
        checker.close()
