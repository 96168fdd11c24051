"""Workflows and conditional actions on a real `cronium up` (nats-server, Docker, chdb), driven
through the command line as people drive them, plus raw publishes where a hostile client would
go around the CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest

from cronium_bus.events import utcnow
from cronium_bus.ids import new_id
from tests.test_cli import Stack, running_stack

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def stack(cronium_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`cronium up` with small data limits, so the limits can be reached in a test."""
    with running_stack(
        cronium_bin,
        tmp_path_factory.mktemp("wf"),
        CRONIUM_LIMITS__MAX_WORKFLOW_DATA=str(1024**2),
        CRONIUM_LIMITS__MAX_OUTPUT_OBJECT=str(1024**2),
        CRONIUM_RUNNER__WARM_RUNTIMES='["bash", "python"]',
    ) as up:
        yield up


def write(tmp_path: Path, definition: dict[str, Any]) -> Path:
    path = tmp_path / f"{definition['name']}.json"
    path.write_text(json.dumps(definition))
    return path


def show(stack: Stack, workflow_id: str) -> dict[str, Any]:
    done = stack.cli("workflow", "show", workflow_id, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def execution(stack: Stack, execution_id: str) -> dict[str, Any]:
    done = stack.cli("show", execution_id, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["state"]  # type: ignore[no-any-return]


def until(check: Any, timeout: float = 60.0, step: float = 0.5) -> Any:
    """Poll ``check`` (bounded) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"not true after {timeout}s")


DIAMOND: dict[str, Any] = {
    "name": "diamond",
    "input": {"rows": 3},
    "nodes": [
        {
            "name": "fetch",
            "runtime": "python",
            "input_schema": {"type": "object", "required": ["rows"]},
            "code": "import cronium\nrows = cronium.input()['rows']\nprint('fetched', rows)\n"
            "cronium.output({'rows': rows})\ncronium.setCondition(rows > 2)\n",
        },
        {
            "name": "left",
            "runtime": "bash",
            "code": "echo left starts; sleep 2; echo left done",
        },
        {
            "name": "right",
            "runtime": "python",
            "code": "import time, cronium\nprint('right starts', flush=True)\ntime.sleep(2)\n"
            "cronium.output({'r': cronium.input()['rows'] * 10})\nraise SystemExit(3)\n",
        },
        {"name": "big", "runtime": "bash", "code": "echo big"},
        {"name": "small", "runtime": "bash", "code": "echo never"},
        {"name": "after_small", "runtime": "bash", "code": "echo never"},
        {
            "name": "cleanup",
            "runtime": "python",
            "code": "import cronium\nx = cronium.input()\nprint('cleanup got', x)\n"
            "cronium.output(x)\n",
        },
        {
            "name": "report",
            "runtime": "python",
            "code": "import cronium, json\nx = cronium.input()\n"
            "print('report got', json.dumps(x, sort_keys=True))\ncronium.output(x)\n",
        },
    ],
    "edges": [
        {"from": "fetch", "to": "left", "when": "on_success"},
        {"from": "fetch", "to": "right", "when": "on_success"},
        {"from": "fetch", "to": "big", "when": "on_condition"},
        {"from": "fetch", "to": "small", "when": "on_failure"},
        {"from": "small", "to": "after_small", "when": "always"},
        {"from": "right", "to": "cleanup", "when": "on_failure"},
        {"from": "left", "to": "report", "when": "on_success"},
        {"from": "cleanup", "to": "report", "when": "always"},
    ],
}


def test_a_diamond_runs_in_order_with_its_inputs_skips_and_status(
    stack: Stack, tmp_path: Path
) -> None:
    """The diamond: left and right in parallel (overlapping), big by fetch's condition, small
    skipped (fetch did not fail) and after_small with it, cleanup on right's failure with
    right's output, report joining left and cleanup; the workflow failed (right failed)."""
    path = write(tmp_path, DIAMOND)
    done = stack.cli("workflow", "run", str(path), "--id", "wf-diamond")
    assert done.returncode == 1, done.stderr  # a node that ran failed: Cronium's rule
    lines = done.stdout.splitlines()
    assert "[fetch] fetched 3" in lines
    assert "[left] left starts" in lines and "[left] left done" in lines
    assert "[cleanup] cleanup got {'r': 30}" in lines
    assert '[report] report got {"cleanup": {"r": 30}, "left": null}' in lines
    assert "[right] failed: the script exited with code 3" in done.stderr
    assert "[small] skipped: fetch did not satisfy on_failure" in done.stderr

    wf = show(stack, "wf-diamond")
    assert wf["status"] == "failed"
    nodes = {n["node"]: n for n in wf["nodes"]}
    assert {k: v["status"] for k, v in nodes.items()} == {
        "fetch": "succeeded",
        "left": "succeeded",
        "right": "failed",
        "big": "succeeded",
        "small": "skipped",
        "after_small": "skipped",
        "cleanup": "succeeded",
        "report": "succeeded",
    }
    assert nodes["after_small"]["reason"] == "every predecessor was skipped"
    assert nodes["fetch"]["execution_id"].startswith("wf-diamond-0-")
    assert nodes["cleanup"]["input_bytes"] == len(b'{"r":30}')

    states = {
        name: execution(stack, n["execution_id"]) for name, n in nodes.items() if n["execution_id"]
    }
    assert states["report"]["output"] == {"left": None, "cleanup": {"r": 30}}

    def span(name: str) -> tuple[datetime, datetime]:
        attempt = states[name]["attempts"][-1]
        return (
            datetime.fromisoformat(attempt["started_at"]),
            datetime.fromisoformat(attempt["ended_at"]),
        )

    (l0, l1), (r0, r1) = span("left"), span("right")
    assert l0 < r1 and r0 < l1, "the parallel branches did not overlap"
    f1 = span("fetch")[1]
    c0, (j0, _) = span("cleanup")[0], span("report")
    assert f1 <= l0 and f1 <= r0 and r1 <= c0 and max(l1, span("cleanup")[1]) <= j0

    def history() -> list[dict[str, Any]]:
        out = stack.cli("history", "--json", "--limit", "50")
        rows = [r for r in json.loads(out.stdout) if r["workflow_id"] == "wf-diamond"]
        return rows if len(rows) == 6 else []

    rows = until(history)
    assert {r["node"] for r in rows} == set(nodes) - {"small", "after_small"}

    def workflow_rows() -> list[dict[str, Any]]:
        out = stack.cli("history", "--workflows", "--json")
        return [r for r in json.loads(out.stdout) if r["workflow_id"] == "wf-diamond"]

    (row,) = until(workflow_rows)
    assert (row["status"], row["nodes"], row["succeeded"], row["failed"], row["skipped"]) == (
        "failed",
        8,
        5,
        1,
        2,
    )
    only = json.loads(stack.cli("history", "--workflow", "wf-diamond", "--json").stdout)
    assert {r["execution_id"] for r in only} == {r["execution_id"] for r in rows}
    stats = json.loads(stack.cli("stats", "--json").stdout)
    assert any(
        (r["name"], r["status"], r["runs"]) == ("diamond", "failed", 1) for r in stats["workflows"]
    ), stats["workflows"]
    replayed = stack.cli("replay")  # the workflows table is rebuilt like the others
    assert replayed.returncode == 0, replayed.stderr
    assert workflow_rows()[0]["node_states"] == row["node_states"]


def test_an_input_that_violates_a_nodes_schema_rejects_the_node_naming_the_field(
    stack: Stack, tmp_path: Path
) -> None:
    strict = {
        "name": "strict",
        "nodes": [
            {
                "name": "make",
                "runtime": "python",
                "code": "import cronium; cronium.output({'rows': 'three'})",
            },
            {
                "name": "use",
                "runtime": "bash",
                "code": "echo never",
                "input_schema": {
                    "type": "object",
                    "properties": {"rows": {"type": "integer"}},
                    "required": ["rows"],
                },
            },
            {"name": "on_bad", "runtime": "bash", "code": "echo handled"},
        ],
        "edges": [
            {"from": "make", "to": "use"},
            {"from": "use", "to": "on_bad", "when": "on_failure"},
        ],
    }
    done = stack.cli("workflow", "run", str(write(tmp_path, strict)), "--json")
    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)
    nodes = {n["node"]: n for n in result["nodes"]}
    assert nodes["use"]["status"] == "rejected"
    assert (
        "$.rows" in nodes["use"]["reason"]
        and "'three' is not of type 'integer'" in (nodes["use"]["reason"])
    )
    assert nodes["on_bad"]["status"] == "succeeded"  # a rejection is a failure for its edges

    # the start nodes' schemas refuse the workflow's input at once: exit 2
    done = stack.cli("workflow", "run", str(write(tmp_path, DIAMOND)), "--input", '{"cols": 1}')
    assert done.returncode == 2 and "node fetch's input_schema at $: 'rows'" in done.stderr


def test_a_cycle_is_refused_naming_it(stack: Stack, tmp_path: Path) -> None:
    cyclic = {
        "name": "cyclic",
        "nodes": [{"name": n, "runtime": "bash", "code": "true"} for n in ("s", "a", "b", "c")],
        "edges": [
            {"from": "s", "to": "a"},
            {"from": "a", "to": "b"},
            {"from": "b", "to": "c"},
            {"from": "c", "to": "a"},
        ],
    }
    path = str(write(tmp_path, cyclic))
    validate = [stack.binary, "workflow", "validate", path]  # offline: no stack needed
    for done in (
        subprocess.run(validate, capture_output=True, text=True, check=False, timeout=60),
        stack.cli("workflow", "run", path),
    ):
        assert done.returncode == 2, done.stderr
        assert "the edges make a cycle: a → b → c → a" in done.stderr


def test_outputs_and_a_workflows_data_have_limits(stack: Stack, tmp_path: Path) -> None:
    """With 1 MiB limits: an output over the limit is refused (the node fails, saying so); a
    700 KB output passes to one node through the payload store, and the second copy takes the
    workflow's data over its limit, so that node is rejected."""
    big = {
        "name": "big",
        "nodes": [
            {
                "name": "huge",
                "runtime": "python",
                "code": "import cronium; cronium.output('x' * 1_200_000)",
            },
            {
                "name": "large",
                "runtime": "python",
                "code": "import cronium; cronium.output('y' * 700_000)",
            },
            {
                "name": "one",
                "runtime": "python",
                "code": "import cronium; print(len(cronium.input()))",
            },
            {
                "name": "two",
                "runtime": "python",
                "code": "import cronium; print(len(cronium.input()))",
            },
        ],
        "edges": [
            {"from": "large", "to": "one"},
            {"from": "one", "to": "two", "when": "always"},
            {"from": "large", "to": "two"},
        ],
    }
    done = stack.cli("workflow", "run", str(write(tmp_path, big)), "--id", "wf-big")
    assert done.returncode == 1, done.stderr
    assert "[one] 700000" in done.stdout.splitlines()
    nodes = {n["node"]: n for n in show(stack, "wf-big")["nodes"]}
    assert nodes["huge"]["status"] == "failed"
    assert "limits.max_output_object" in done.stderr
    assert nodes["one"]["status"] == "succeeded" and nodes["one"]["input_bytes"] == 700_002
    assert nodes["two"]["status"] == "rejected"
    assert "over its limit of 1 MiB" in nodes["two"]["reason"]


def test_cancel_stops_a_workflow_and_its_running_nodes(stack: Stack, tmp_path: Path) -> None:
    slow = {
        "name": "slow",
        "nodes": [
            {"name": "a", "runtime": "bash", "code": "echo a; sleep 60"},
            {"name": "b", "runtime": "bash", "code": "echo b; sleep 60"},
            {"name": "c", "runtime": "bash", "code": "echo c"},
        ],
        "edges": [{"from": "a", "to": "c", "when": "always"}, {"from": "b", "to": "c"}],
    }
    follower = stack.popen("workflow", "run", str(write(tmp_path, slow)), "--id", "wf-slow")

    def node_b() -> str | None:
        if stack.cli("workflow", "show", "wf-slow").returncode != 0:
            return None
        b = show(stack, "wf-slow")["nodes"][1]
        return b["execution_id"] if b["status"] == "running" else None

    b_id = until(node_b)
    until(lambda: execution(stack, b_id)["status"] == "started")
    done = stack.cli("cancel", "wf-slow")
    assert done.returncode == 0, done.stderr
    _, err = follower.communicate(timeout=60)
    assert follower.returncode == 130, err
    nodes = {n["node"]: n["status"] for n in show(stack, "wf-slow")["nodes"]}
    assert nodes == {"a": "cancelled", "b": "cancelled", "c": "skipped"}  # b did not succeed
    again = stack.cli("cancel", "wf-slow")
    assert "already ended: cancelled" in again.stdout


def test_conditional_actions_fire_in_cronium_order(stack: Stack, tmp_path: Path) -> None:
    """always, then success, then condition; failure's do not fire. The run action gets the
    output as its input; the notify message is rendered from the execution's facts."""
    on = {
        "always": [{"notify": {"message": "{{execution_id}} ended {{status}}", "channel": "ops"}}],
        "success": [
            {"run": {"runtime": "python", "code": "import cronium; print('got', cronium.input())"}}
        ],
        "failure": [{"notify": {"message": "never"}}],
        "condition": [{"notify": {"message": "condition of {{execution_id}}: {{output}}"}}],
    }
    done = stack.cli(
        "run",
        "--id",
        "act-1",
        "--runtime",
        "python",
        "--on",
        json.dumps(on),
        "-c",
        "import cronium; cronium.output({'n': 5}); cronium.setCondition(True)",
    )
    assert done.returncode == 0, done.stderr

    def fired() -> list[dict[str, Any]]:
        events = json.loads(stack.cli("show", "act-1", "--json").stdout)["events"]
        got = [
            e for e in events if e["type"] in ("execution.action_fired", "notification.requested")
        ]
        return got if len(got) == 5 else []

    events = until(fired)
    assert [(e["type"].split(".")[1], e["when"]) for e in events] == [
        ("requested", "always"),
        ("action_fired", "always"),
        ("action_fired", "success"),
        ("requested", "condition"),
        ("action_fired", "condition"),
    ]
    assert events[0]["message"] == "act-1 ended succeeded" and events[0]["channel"] == "ops"
    assert events[3]["message"] == 'condition of act-1: {"n":5}'
    run_id = events[2]["target_id"]
    assert run_id.startswith("act-1-s0-")
    until(lambda: execution(stack, run_id)["status"] == "succeeded")
    assert stack.cli("logs", run_id).stdout == "got {'n': 5}\n"

    bad = stack.cli(
        "run",
        "--runtime",
        "bash",
        "-c",
        "true",
        "--on",
        json.dumps({"always": [{"notify": {"message": "{{__class__}}"}}]}),
    )
    assert bad.returncode == 2 and "unknown field {{__class__}}" in bad.stderr


# --------------------------------------------------------------------------- hostile clients


async def _publish_raw(stack: Stack, subject: str, body: bytes, creds: Path) -> list[str]:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    name = creds.stem
    nc = await nats.connect(
        stack.url,
        user_credentials=str(creds),
        error_cb=on_error,
        inbox_prefix=f"_INBOX_{name}".encode(),
    )
    try:
        await nc.publish(subject, body, headers={"Nats-Msg-Id": new_id("m")})
        await nc.flush()
        await asyncio.sleep(0.5)
    finally:
        await nc.close()
    return errors


def _user(stack: Stack, name: str) -> Path:
    done = stack.cli("user", "add", name)
    if done.returncode != 0 and "exists" in done.stderr:
        return stack.data / "auth" / "users" / f"{name}.creds"
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip())


def _request_body(workflow_id: str, user: str, definition: Any) -> bytes:
    """A workflow.requested body as a raw client writes it (the definition unchecked)."""
    return msgspec.json.encode(
        {
            "type": "workflow.requested",
            "event_id": new_id("ev"),
            "time": utcnow().isoformat(),
            "execution_id": workflow_id,
            "correlation_id": workflow_id,
            "producer": "raw",
            "user": user,
            "definition": definition,
        }
    )


async def test_forged_and_malformed_workflow_requests_get_a_reason(
    stack: Stack, tmp_path: Path
) -> None:
    """alice publishes, around the CLI: junk, deep nesting, a definition with a cycle, one whose
    node claims a workflow, a body naming bob; each ends in workflow.rejected with the reason.
    Workflow events only the service says (node_ended, succeeded) are refused by the server."""
    alice = _user(stack, "alice")
    cycle = {
        "name": "c",
        "nodes": [{"name": n, "runtime": "bash", "code": "true"} for n in ("s", "a", "b")],
        "edges": [{"from": "s", "to": "a"}, {"from": "a", "to": "b"}, {"from": "b", "to": "a"}],
    }
    claims = {
        "name": "w",
        "nodes": [
            {
                "name": "a",
                "runtime": "bash",
                "code": "true",
                "workflow": {"workflow_id": "x", "node": "a"},
            }
        ],
    }
    cases = {
        "junk": (b"{not json", "malformed JSON"),
        "deep": (b'{"a":' * 200 + b"1" + b"}" * 200, "nest"),
        "cycle": (_request_body("wf-h-cycle", "alice", cycle), "cycle: a → b → a"),
        "claims": (_request_body("wf-h-claims", "alice", claims), "sets workflow"),
        "bob": (_request_body("wf-h-bob", "bob", cycle), "user 'bob'"),
    }
    for case, (body, _) in cases.items():
        workflow_id = f"wf-h-{case}"
        subject = f"cronium.exec.alice.{workflow_id}.workflow_requested"
        assert await _publish_raw(stack, subject, body, alice) == []
    for case, (_, reason) in cases.items():
        workflow_id = f"wf-h-{case}"

        def rejected(workflow_id: str = workflow_id) -> dict[str, Any] | None:
            done = stack.cli("show", workflow_id, "--json")
            if done.returncode != 0:
                return None
            events = json.loads(done.stdout)["events"]
            return next((e for e in events if e["type"] == "workflow.rejected"), None)

        event = until(rejected, timeout=30)
        assert reason in event["error"]["message"], (case, event)
    for kind in ("workflow_node_ended", "workflow_succeeded", "workflow_node_requested"):
        errors = await _publish_raw(stack, f"cronium.exec.alice.wf-x.{kind}", b"{}", alice)
        assert any("permissions violation" in e.lower() for e in errors), (kind, errors)
    errors = await _publish_raw(stack, "cronium.exec.bob.wf-x.workflow_requested", b"{}", alice)
    assert any("permissions violation" in e.lower() for e in errors)


def test_a_user_runs_and_sees_only_their_own_workflows(stack: Stack, tmp_path: Path) -> None:
    alice, bob = _user(stack, "alice"), _user(stack, "bob")
    path = write(
        tmp_path,
        {"name": "mine", "nodes": [{"name": "a", "runtime": "bash", "code": "echo alices"}]},
    )
    done = stack.cli("workflow", "run", str(path), "--id", "wf-alice", "--creds", str(alice))
    assert done.returncode == 0 and done.stdout == "[a] alices\n", done.stderr
    assert stack.cli("workflow", "show", "wf-alice", "--creds", str(alice)).returncode == 0
    seen = stack.cli("workflow", "show", "wf-alice", "--creds", str(bob))
    assert seen.returncode == 1 and "no workflow wf-alice" in seen.stderr
    cancel = stack.cli("cancel", "wf-alice", "--creds", str(bob))
    assert cancel.returncode != 0
    assert show(stack, "wf-alice")["status"] == "succeeded"


def test_a_hostile_input_schema_costs_the_dispatcher_a_second_at_most(stack: Stack) -> None:
    """A pattern that backtracks forever, and a $ref to a URL: each is rejected with the reason
    (the check runs in a worker with a time limit; references never leave the schema), and
    someone else's run meanwhile goes through."""
    hostile = stack.popen(
        "run", "--runtime", "bash", "-c", "true", "--input", json.dumps("a" * 40 + "!"),
        "--input-schema", json.dumps({"type": "string", "pattern": "^(a+)+$"}),
    )  # fmt: skip
    began = time.monotonic()
    other = stack.cli("run", "--runtime", "bash", "-c", "echo unaffected")
    assert other.returncode == 0 and other.stdout == "unaffected\n", other.stderr
    assert time.monotonic() - began < 30
    _, err = hostile.communicate(timeout=60)
    assert hostile.returncode == 2 and "took longer than 1 s to check" in err, err
    remote = stack.cli(
        "run", "--runtime", "bash", "-c", "true", "--input", "1",
        "--input-schema", json.dumps({"$ref": "http://127.0.0.1:9/schema.json"}),
    )  # fmt: skip
    assert remote.returncode == 2 and "cannot be applied" in remote.stderr, remote.stderr


def test_a_rejected_request_fires_none_of_its_actions(stack: Stack) -> None:
    on = {"always": [{"notify": {"message": "never"}}], "failure": [{"notify": {"message": "x"}}]}
    done = stack.cli(
        "run", "--id", "act-rejected", "--runtime", "bash", "-c", "true", "--memory", "100g",
        "--on", json.dumps(on),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    time.sleep(2)  # the workflow consumer has seen the rejection
    events = json.loads(stack.cli("show", "act-rejected", "--json").stdout)["events"]
    assert [e["type"] for e in events] == ["execution.requested", "execution.rejected"]


async def test_a_taken_workflow_id_is_refused_not_lost(stack: Stack, tmp_path: Path) -> None:
    """bob takes the message id alice's workflow request would have (on his own subject):
    her `workflow run --id` says so and exits 2, instead of waiting for nothing."""
    alice, bob = _user(stack, "alice"), _user(stack, "bob")
    nc = await nats.connect(stack.url, user_credentials=str(bob), inbox_prefix=b"_INBOX_bob")
    try:
        await nc.publish(
            "cronium.exec.bob.squat.requested",
            b"{}",
            headers={"Nats-Msg-Id": "wf-taken:1:workflow_requested"},
        )
        await nc.flush()
    finally:
        await nc.close()
    await asyncio.sleep(0.5)
    path = write(
        tmp_path, {"name": "t", "nodes": [{"name": "a", "runtime": "bash", "code": "true"}]}
    )
    done = await asyncio.to_thread(
        stack.cli, "workflow", "run", str(path), "--id", "wf-taken", "--creds", str(alice)
    )
    assert done.returncode == 2 and "already taken" in done.stderr, done.stderr
