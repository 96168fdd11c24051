"""``cronium workflow validate|run|show``: workflows, DAGs of executions.

The definition is YAML or JSON (``schemas/workflow.definition.v1.json``), checked by
``cronium_bus.workflows.definition``. ``run`` publishes ``workflow.requested``; the ``workflow``
consumer runs the nodes as ordinary executions (``<workflow id>-<index>``), and ``run`` follows
them live: every node's lines prefixed ``[node]`` and its transitions on stderr. Exit 0 when the
workflow succeeded, 1 when it failed, 2 when the definition or input is rejected, 130 when
cancelled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any, TextIO, TypeAlias

import msgspec

from cronium_bus.bus import Bus
from cronium_bus.cli import exitcodes
from cronium_bus.cli.common import add_client_options, fail, run_client
from cronium_bus.cli.run import UsageError, read_input
from cronium_bus.cli.watch import Watch
from cronium_bus.events import (
    AnyEvent,
    NodeEnded,
    NodeRequested,
    NodeSkipped,
    WorkflowEnded,
    WorkflowRejected,
    WorkflowRequested,
    utcnow,
)
from cronium_bus.ids import is_valid_id, new_id
from cronium_bus.reading import events_of, follow
from cronium_bus.schemacheck import SchemaCheckError, violation
from cronium_bus.state import ExecutionState
from cronium_bus.units import format_size
from cronium_bus.workflows.definition import MAX_WORKFLOW_ID, Definition, WorkflowError
from cronium_bus.workflows.files import load
from cronium_bus.workflows.state import WorkflowState, fold_workflow

_Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
EXIT: dict[str, int] = {
    "succeeded": exitcodes.OK,
    "failed": exitcodes.FAILURE,
    "rejected": exitcodes.USAGE,
    "cancelled": exitcodes.CANCELLED,
}


def add_parsers(sub: _Sub) -> None:
    """Register ``cronium workflow``."""
    p = sub.add_parser(
        "workflow",
        help="workflows: DAGs of executions with validated data passing",
        description="A workflow is a YAML or JSON file: nodes (each a request: runtime with code "
        "or file, limits, timeout, retry, secrets, priority, on: actions, and an optional "
        "input_schema) and edges {from, to, when: always|on_success|on_failure|on_condition}. "
        "Schema: schemas/workflow.definition.v1.json; semantics: README, Workflows.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    v = actions.add_parser(
        "validate",
        help="check a definition: exit 0, or 2 naming the problem",
        description="Check FILE: a cycle (named), an edge to an unknown "
        "node, a duplicate edge, a node no start node reaches, an invalid input_schema, more "
        "than 100 nodes or 1 MiB. Nodes' `file` is read relative to FILE.",
    )
    v.add_argument("file", type=Path, metavar="FILE")
    v.add_argument("--json", action="store_true", help="print the checked definition as JSON")
    v.set_defaults(handler=validate)

    r = actions.add_parser(
        "run",
        help="run a workflow and follow its nodes live",
        description="Publish the workflow and print every node's lines live, prefixed [node], "
        "and each node's transitions on stderr. Exit 0 when the workflow succeeded, 1 when it "
        "failed, 2 when the definition or input is rejected, 130 when cancelled "
        "(`cronium cancel ID` cancels it and its running nodes).",
    )
    r.add_argument("file", type=Path, metavar="FILE")
    r.add_argument(
        "--input", metavar="JSON|@FILE", help="the start nodes' input (default: the file's)"
    )
    r.add_argument("--id", metavar="ID", help=f"the workflow id (at most {MAX_WORKFLOW_ID} chars)")
    r.add_argument("--detach", action="store_true", help="print the workflow id and return")
    r.add_argument("--json", action="store_true", help="print the outcome as JSON on stdout")
    r.add_argument("--timeout", type=float, metavar="S", help="stop following after S seconds")
    add_client_options(r)
    r.set_defaults(handler=run)

    s = actions.add_parser(
        "show",
        help="a workflow's status and every node's",
        description="The workflow's status, then each node: status, execution id, times, "
        "input size, and why it was skipped or rejected.",
    )
    s.add_argument("workflow_id", metavar="ID")
    s.add_argument("--json", action="store_true", help="print it as JSON")
    add_client_options(s)
    s.set_defaults(handler=show)
    p.set_defaults(handler=validate)


def validate(args: argparse.Namespace) -> int:
    """``cronium workflow validate FILE``."""
    try:
        definition = load(args.file)
    except WorkflowError as exc:
        return fail(exc.message, exc.hint, exitcodes.USAGE)
    if args.json:
        print(json.dumps(msgspec.to_builtins(definition)))
        return exitcodes.OK
    starts = ", ".join(definition.starts)
    print(
        f"workflow {definition.name}: {len(definition.nodes)} nodes, "
        f"{len(definition.edges)} edges; starts with {starts}"
    )
    return exitcodes.OK


def _start_input_refused(definition: Definition, value: Any) -> str | None:
    """Why a start node's input schema refuses the workflow's input (the dispatcher would
    reject the node; refused here at once, exit 2)."""
    for name in definition.starts:
        node = next(n for n in definition.nodes if n.name == name)
        if node.input_schema is not None:
            try:
                why = violation(node.input_schema, value)  # the user's own schema, here
            except SchemaCheckError as exc:
                return f"node {name}'s {exc.message}"
            if why is not None:
                return f"the input does not match node {name}'s input_schema at {why}"
    return None


class _Prefixed:
    """A text stream that prefixes every line it is given."""

    def __init__(self, target: TextIO, prefix: str) -> None:
        self.target, self.prefix = target, prefix

    def write(self, text: str) -> int:
        lines = text.splitlines(keepends=True)
        self.target.write("".join(self.prefix + line for line in lines))
        return len(text)

    def flush(self) -> None:
        self.target.flush()


def _request(definition: Definition, value: Any, workflow_id: str, user: str) -> WorkflowRequested:
    return WorkflowRequested(
        event_id=new_id("ev"),
        time=utcnow(),
        execution_id=workflow_id,
        correlation_id=workflow_id,
        producer="cronium-cli",
        user=user,
        definition=definition,
        input=value,
    )


def run(args: argparse.Namespace) -> int:
    """``cronium workflow run FILE``."""
    try:
        definition = load(args.file)
        value = read_input(args.input)
    except WorkflowError as exc:
        return fail(exc.message, exc.hint, exitcodes.USAGE)
    except UsageError as exc:
        return fail(str(exc), "see `cronium workflow run --help`", exitcodes.USAGE)
    why = _start_input_refused(definition, value if value is not None else definition.input)
    if why is not None:
        return fail(why, "pass an --input the start nodes' input_schema accepts", exitcodes.USAGE)
    workflow_id = args.id or new_id("wf")
    if not is_valid_id(workflow_id) or len(workflow_id) > MAX_WORKFLOW_ID:
        return fail(
            f"--id {workflow_id!r} is not a workflow id",
            f"use 1-{MAX_WORKFLOW_ID} of [A-Za-z0-9_-]",
            exitcodes.USAGE,
        )

    async def body(bus: Bus) -> int:
        event = _request(definition, value, workflow_id, bus.acting_user(None))
        size = len(msgspec.json.encode(event))
        if size > bus.settings.limits.max_request:
            return fail(
                f"the workflow request is {format_size(size)}, over the limit of "
                f"{format_size(bus.settings.limits.max_request)}",
                "make the scripts or the input smaller",
                exitcodes.USAGE,
            )
        if args.detach:
            await _publish(bus, event)
            print(json.dumps({"workflow_id": workflow_id}) if args.json else workflow_id)
            return exitcodes.OK
        follower = _Follow(bus, workflow_id, event.event_id, quiet=args.json)
        await follower.start()
        try:
            await _publish(bus, event)
            print(f"workflow {workflow_id} requested", file=sys.stderr, flush=True)
            state = await asyncio.wait_for(follower.wait(), args.timeout)
        except TimeoutError:
            return fail(
                f"workflow {workflow_id} did not end within --timeout",
                f"it goes on: `cronium workflow show {workflow_id}`",
                exitcodes.FAILURE,
            )
        finally:
            await follower.close()
        if args.json:
            print(json.dumps(_summary(state)))
        else:
            _print_state(state, sys.stderr)
        return EXIT.get(state.status, exitcodes.FAILURE)

    try:
        return run_client(args, body)
    except UsageError as exc:
        return fail(str(exc), f"`cronium workflow show {workflow_id}`", exitcodes.USAGE)


async def _publish(bus: Bus, event: WorkflowRequested) -> None:
    """Publish the request; refuse an id whose message id is taken (by an earlier request of
    this id, or by anyone who guessed it), as nothing would run."""
    ack = await bus.publish(event)
    if not ack.duplicate:
        return
    known = fold_workflow(
        await events_of(bus, event.execution_id, max_bytes=bus.settings.streams.max_msg_size)
    )
    if known is not None and known.request_event_id == event.event_id:
        return
    raise UsageError(
        f"workflow id {event.execution_id} is already taken; this request was not stored "
        "(use a fresh --id)"
    )


class _Follow:
    """Follows a workflow's events, and each node's lines and transitions as it is requested."""

    def __init__(self, bus: Bus, workflow_id: str, request_id: str, *, quiet: bool) -> None:
        self.bus = bus
        self.workflow_id = workflow_id
        self.request_id = request_id
        self.quiet = quiet
        self.events: list[AnyEvent] = []
        self.watches: dict[str, Watch] = {}
        self._events = follow(bus, workflow_id, "exec", max_bytes=bus.settings.streams.max_msg_size)

    async def start(self) -> None:
        await self._events.start()

    async def wait(self) -> WorkflowState:
        """Until the workflow's terminal event, then until its nodes' lines are printed."""
        async for event in self._events:
            self.events.append(event)
            if isinstance(event, NodeRequested) and event.node not in self.watches:
                await self._watch(event.node, event.node_execution_id)
            elif isinstance(event, NodeSkipped) and not self.quiet:
                print(f"[{event.node}] skipped: {event.reason}", file=sys.stderr, flush=True)
            elif isinstance(event, NodeEnded) and event.status == "rejected" and not self.quiet:
                why = event.error.message if event.error else ""
                print(f"[{event.node}] rejected: {why}", file=sys.stderr, flush=True)
            if isinstance(event, WorkflowEnded | WorkflowRejected):
                state = fold_workflow(self.events)
                if state is not None and state.request_event_id == self.request_id:
                    break  # (a rejection of junk published under this id earlier is not ours)
        for watch in self.watches.values():
            if watch.state is not None and watch.state.final:
                await watch.wait_final(timeout=10)
        state = fold_workflow(self.events)
        assert state is not None
        return state

    async def _watch(self, node: str, execution_id: str) -> None:
        prefix = f"[{node}] "

        def on_event(ev: AnyEvent, state: ExecutionState) -> None:
            if not self.quiet and ev.type != "log.chunk" and ev.type.startswith("execution."):
                text = ev.type.split(".", 1)[1]
                if state.final and state.error:
                    text += f": {state.error.message}"
                print(f"{prefix}{text}", file=sys.stderr, flush=True)

        out: Any = _Prefixed(sys.stderr if self.quiet else sys.stdout, prefix)
        err: Any = _Prefixed(sys.stderr, prefix)
        watch = Watch(self.bus, execution_id, out=out, err=err, on_event=on_event)
        await watch.start()
        self.watches[node] = watch

    async def close(self) -> None:
        for watch in self.watches.values():
            await watch.close()
        await self._events.close()


def _summary(state: WorkflowState) -> dict[str, Any]:
    return {
        "workflow_id": state.workflow_id,
        "name": state.definition.name,
        "user": state.user,
        "status": state.status,
        "error": msgspec.to_builtins(state.error) if state.error else None,
        "requested_at": state.requested_at.isoformat(),
        "ended_at": state.ended_at.isoformat() if state.ended_at else None,
        "data_bytes": state.data_bytes(),
        "nodes": [
            {
                "node": v.name,
                "status": v.status,
                "execution_id": v.execution_id,
                "input_bytes": v.input_bytes,
                "reason": v.reason,
                "requested_at": v.requested_at.isoformat() if v.requested_at else None,
                "ended_at": v.ended_at.isoformat() if v.ended_at else None,
            }
            for v in state.nodes.values()
        ],
    }


def _print_state(state: WorkflowState, out: TextIO) -> None:
    print(f"workflow {state.workflow_id} ({state.definition.name}): {state.status}", file=out)
    if state.error is not None:
        print(f"  {state.error.message}", file=out)
    for v in state.nodes.values():
        took = ""
        if v.requested_at and v.ended_at:
            took = f" in {(v.ended_at - v.requested_at).total_seconds():.1f}s"
        status = "not started" if v.status == "pending" and state.final else v.status
        line = f"  {v.name:<16} {status:<11} {v.execution_id or '-'}{took}"
        if v.input_bytes:
            line += f" input {format_size(v.input_bytes)}"
        if v.reason:
            line += f" — {v.reason}"
        print(line, file=out)


def show(args: argparse.Namespace) -> int:
    """``cronium workflow show ID``."""
    if not is_valid_id(args.workflow_id):
        return fail(f"{args.workflow_id!r} is not an id", "use [A-Za-z0-9_-]{1,64}", 2)

    async def body(bus: Bus) -> int:
        events = await events_of(bus, args.workflow_id, max_bytes=bus.settings.streams.max_msg_size)
        state = fold_workflow(events)
        if state is None:
            return fail(
                f"no workflow {args.workflow_id} (or not yours)",
                "list yours with `cronium history`",
                exitcodes.FAILURE,
            )
        if args.json:
            print(json.dumps(_summary(state)))
        else:
            _print_state(state, sys.stdout)
        return exitcodes.OK

    return run_client(args, body)
