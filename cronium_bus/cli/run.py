"""``cronium run``: publish a request, stream its output live, exit with the script's code."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import msgspec

from cronium_bus.bus import Bus
from cronium_bus.cli import exitcodes
from cronium_bus.cli.common import add_client_options, fail, run_client
from cronium_bus.cli.watch import Watch
from cronium_bus.errors import ERROR_KINDS, PermissionDeniedError
from cronium_bus.events import (
    PRIORITIES,
    Actions,
    AnyEvent,
    Limits,
    Request,
    Requested,
    RetryPolicy,
    Runtime,
    new_request,
    utcnow,
)
from cronium_bus.ids import is_valid_id, new_id
from cronium_bus.payloads import get_json_payload, put_payload
from cronium_bus.reading import events_of
from cronium_bus.servers import adhoc_name
from cronium_bus.state import ExecutionState, fold
from cronium_bus.units import format_size, parse_duration, parse_size

_EXTENSIONS: Final[dict[str, Runtime]] = {
    ".sh": "bash",
    ".bash": "bash",
    ".py": "python",
    ".js": "node",
    ".mjs": "node",
    ".cjs": "node",
}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``cronium run``."""
    p = sub.add_parser(
        "run",
        help="run a script and stream its output",
        description="Publish an execution request, print the script's stdout and stderr live on "
        "the matching streams, wait for the end and exit with the script's exit code.",
        epilog=exitcodes.TABLE + "\nexamples:\n"
        "  cronium run --runtime python -c 'print(6*7)'\n"
        "  cronium run job.sh --timeout 5m --memory 256m --input '{\"n\": 3}'\n"
        "  echo 'console.log(1)' | cronium run --runtime node -\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_request_options(p)
    p.add_argument("--id", metavar="ID", help="execution id to use (idempotency key)")
    p.add_argument("--user", metavar="NAME", help="user the execution belongs to")
    p.add_argument("--detach", action="store_true", help="print the execution id and return")
    p.add_argument(
        "--json",
        action="store_true",
        help="print a JSON summary on stdout; the script's output goes to stderr",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    add_client_options(p)
    p.set_defaults(handler=main)


def add_request_options(p: argparse.ArgumentParser, *, delay: bool = True) -> None:
    """The options that describe a request (``run``, ``schedule add``)."""
    p.add_argument(
        "file", nargs="?", metavar="FILE", help="script file to run ('-' reads standard input)"
    )
    p.add_argument("-c", dest="code", metavar="CODE", help="script text to run instead of FILE")
    p.add_argument(
        "--runtime",
        choices=["bash", "python", "node"],
        help="interpreter (default: from FILE's extension)",
    )
    p.add_argument("--timeout", metavar="DUR", help="stop the script after DUR (e.g. 30s, 5m, 1h)")
    p.add_argument("--cpus", metavar="N", type=float, help="CPU limit (e.g. 0.5)")
    p.add_argument("--memory", metavar="SIZE", help="memory limit (e.g. 256m, 1g)")
    p.add_argument("--pids", metavar="N", type=int, help="process limit")
    p.add_argument(
        "--input",
        metavar="JSON|@FILE",
        help="input for the script, JSON or @file (over limits.max_input, 256 KiB by default, "
        "it travels through the payload store)",
    )
    p.add_argument("--priority", choices=list(reversed(PRIORITIES)), default="normal")
    p.add_argument(
        "--target",
        metavar="SERVER",
        action="append",
        default=[],
        help="run over SSH on a registered server, or on ssh://USER@HOST:PORT with --ssh-key "
        "and --known-hosts; repeat to run on several servers in parallel",
    )
    p.add_argument("--ssh-key", type=Path, metavar="FILE", help="private key for ssh:// targets")
    p.add_argument(
        "--known-hosts",
        type=Path,
        metavar="FILE",
        help="known_hosts for ssh:// targets (host keys are always verified)",
    )
    p.add_argument(
        "--secret",
        metavar="NAME",
        action="append",
        default=[],
        help="a stored secret the script may read (repeatable)",
    )
    p.add_argument(
        "--retries",
        metavar="N",
        type=int,
        default=0,
        help="run again up to N times when an attempt fails with a kind in --retry-on",
    )
    p.add_argument(
        "--retry-on",
        metavar="KIND",
        action="append",
        choices=sorted(ERROR_KINDS - {"cancelled", "validation"}),
        help="error kind that is retried (repeatable; default runner_lost and infrastructure)",
    )
    p.add_argument("--backoff", choices=["exponential", "fixed"], default="exponential")
    p.add_argument("--retry-delay", metavar="DUR", default="1s", help="first retry delay")
    if delay:
        p.add_argument("--delay", metavar="DUR", help="do not start before DUR from now (e.g. 10m)")
    p.add_argument("--event", metavar="NAME", help="the Cronium event this run belongs to")
    p.add_argument(
        "--on",
        metavar="JSON|@FILE",
        help="conditional actions after the run: {always|success|failure|condition: "
        "[{run: REQUEST} | {notify: {message, channel, to}}]} (README, Conditional actions)",
    )
    p.add_argument(
        "--input-schema",
        metavar="JSON|@FILE",
        help="a JSON Schema (2020-12) the input must satisfy, or the run is rejected",
    )


class UsageError(Exception):
    """A flag or the script could not be used."""


def build_request(args: argparse.Namespace) -> Request:
    """The request the flags describe, or :class:`UsageError` saying what is wrong."""
    if args.code is not None and args.file is not None:
        raise UsageError("give either FILE or -c CODE, not both")
    if args.code is not None:
        code = args.code
    elif args.file == "-":
        code = sys.stdin.read()
    elif args.file:
        path = Path(args.file)
        try:
            code = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {path}: {exc}") from exc
    else:
        raise UsageError("nothing to run: give FILE or -c CODE")
    runtime = args.runtime or (
        _EXTENSIONS.get(Path(args.file).suffix) if args.file and args.file != "-" else None
    )
    if runtime is None:
        raise UsageError("say which interpreter: --runtime bash|python|node")
    try:
        timeout = parse_duration(args.timeout) if args.timeout else None
        memory = parse_size(args.memory) if args.memory else None
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if args.cpus is not None and not args.cpus > 0:
        raise UsageError("--cpus must be a positive number")
    if args.pids is not None and args.pids <= 0:
        raise UsageError("--pids must be a positive number")
    if not 0 <= args.retries <= 99:
        raise UsageError("--retries must be between 0 and 99")
    try:
        retry_base = parse_duration(args.retry_delay)
        delay = parse_duration(args.delay) if getattr(args, "delay", None) else None
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    retry = None
    if args.retries:
        retry = RetryPolicy(
            max_attempts=args.retries + 1,
            backoff=args.backoff,
            base_s=retry_base,
            retry_on=tuple(args.retry_on or RetryPolicy().retry_on),
        )
    on = None
    if args.on is not None:
        try:
            on = msgspec.convert(read_input(args.on, "--on"), Actions)
        except msgspec.ValidationError as exc:
            raise UsageError(f"--on is not a set of actions: {exc}") from exc
    schema = read_input(args.input_schema, "--input-schema")
    if schema is not None and not isinstance(schema, dict):
        raise UsageError("--input-schema is a JSON object (a JSON Schema)")
    return Request(
        on=on,
        input_schema=schema,
        runtime=runtime,
        code=code,
        timeout_s=timeout,
        limits=Limits(cpus=args.cpus, memory_bytes=memory or None, pids=args.pids),
        input=read_input(args.input),
        priority=args.priority,
        secrets=tuple(args.secret),
        runner="ssh" if args.target else "container",
        targets=tuple(args.target),
        retry=retry,
        not_before=utcnow() + timedelta(seconds=delay) if delay else None,
        event_ref=args.event,
    )


def read_input(value: str | None, flag: str = "--input") -> Any:
    """``--input`` (or another JSON flag) as JSON: inline, or ``@FILE``."""
    if value is None:
        return None
    text = value
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read input file {value[1:]}: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{flag} is not valid JSON: {exc}") from exc


async def offload_input(bus: Bus, request: Request, execution_id: str) -> Request:
    """An input over the inline limit goes to the payload store; the request carries its
    reference (``input_ref``) instead."""
    lim = bus.settings.limits
    encoded = msgspec.json.encode(request.input)
    if len(encoded) <= lim.max_input:
        return request
    if len(encoded) > lim.max_input_object:
        raise UsageError(
            f"--input is {format_size(len(encoded))}, over the limit of "
            f"{format_size(lim.max_input_object)}"
        )
    if bus.role not in (None, "admin"):
        raise PermissionDeniedError(
            f"--input is {format_size(len(encoded))}: over {format_size(lim.max_input)} it goes "
            f"to the payload store, which a {bus.role} may not write (one rollup would purge it)",
            hint=f"pass at most {format_size(lim.max_input)} inline, or let a service identity "
            "or an admin send it",
        )
    ref = await put_payload(bus.js, f"input/{execution_id}", encoded)
    return msgspec.structs.replace(request, input=None, input_ref=ref)


def exit_code_of(state: ExecutionState) -> int:
    """The process exit code for a final state (see ``exitcodes``)."""
    kind = state.error.kind if state.error else None
    if state.children:  # a fan-out: all targets, or not
        return exitcodes.OK if state.status == "succeeded" else exitcodes.FAILURE
    if state.status == "succeeded":
        return exitcodes.OK
    if state.status == "rejected":
        return exitcodes.USAGE
    if state.status == "timed_out":
        return exitcodes.TIMED_OUT
    if state.status == "cancelled":
        return exitcodes.CANCELLED
    if kind in ("oom", "tmpfs_full"):  # both: killed at the memory limit
        return exitcodes.OOM
    if kind == "output_limit":
        return exitcodes.OUTPUT_LIMIT
    if kind == "nonzero_exit" and state.exit_code is not None:
        return state.exit_code
    return exitcodes.INFRASTRUCTURE


def summary(state: ExecutionState, output: Any = None) -> dict[str, Any]:
    """The ``--json`` summary of a final state (``output``: the value of an output kept in the
    payload store, read by the caller)."""
    current = state.attempt_state(state.attempt)
    return {
        "execution_id": state.execution_id,
        "status": state.status,
        "attempt": state.attempt,
        "exit_code": state.exit_code,
        "error": msgspec.to_builtins(state.error) if state.error else None,
        "output": output if state.output_ref is not None else state.output,
        "condition": state.condition,
        "runner": current.runner if current else None,
    }


def main(args: argparse.Namespace) -> int:
    """Entry point of ``cronium run``."""
    try:
        request = build_request(args)
    except UsageError as exc:
        return fail(str(exc), "see `cronium run --help`", exitcodes.USAGE)
    if args.id is not None and not is_valid_id(args.id):
        return fail(
            f"--id {args.id!r} is not a valid id", "use 1-64 of [A-Za-z0-9_-]", exitcodes.USAGE
        )
    execution_id = args.id or new_id("ex")
    progress = not args.quiet and not args.json and sys.stderr.isatty()

    async def body(bus: Bus) -> int:
        nonlocal request
        user = bus.acting_user(args.user)
        if any(t.startswith("ssh://") for t in request.targets):
            request = await register_inline_targets(bus, request, args)
        try:
            request = await offload_input(bus, request, execution_id)
        except UsageError as exc:
            hint = "pass a smaller input, or raise limits.max_input_object"
            return fail(str(exc), hint, exitcodes.USAGE)
        event = new_request(execution_id, request, producer=bus.producer, user=user)
        size = len(msgspec.json.encode(event))
        if size > bus.settings.limits.max_request:
            return fail(
                f"the request is {size:,} bytes, over the limit of "
                f"{bus.settings.limits.max_request:,}",
                "make the script or input smaller",
                exitcodes.USAGE,
            )
        if args.detach:
            await publish_request(bus, event, chosen=args.id is not None)
            print(json.dumps({"execution_id": execution_id}) if args.json else execution_id)
            return exitcodes.OK

        def on_event(ev: AnyEvent, state: ExecutionState) -> None:
            if progress and ev.type != "log.chunk":
                print(f"\x1b[2m▸ {describe(ev, state)}\x1b[0m", file=sys.stderr, flush=True)

        watch = Watch(
            bus, execution_id, out=sys.stderr if args.json else sys.stdout, on_event=on_event
        )
        await watch.start()
        try:
            await publish_request(bus, event, chosen=args.id is not None)
            state = await watch.wait_final()
        finally:
            await watch.close()
        if args.json:
            output = None
            if state.output_ref is not None:
                limit = bus.settings.limits.max_output_object
                output = await get_json_payload(bus.js, state.output_ref, limit)
            print(json.dumps(summary(state, output)))
        elif state.error and state.error.kind != "nonzero_exit":
            print(f"cronium: {state.status}: {state.error.message}", file=sys.stderr)
            if state.error.hint:
                print(f"hint: {state.error.hint}", file=sys.stderr)
        return exit_code_of(state)

    try:
        return run_client(args, body)
    except UsageError as exc:
        return fail(str(exc), "see `cronium run --help`", exitcodes.USAGE)


async def publish_request(bus: Bus, event: Requested, *, chosen: bool) -> None:
    """Publish a request. An id the user ``chosen`` (``--id``) that already names one of
    their executions is an idempotent retry when the request is the same, and refused when it
    differs; when the stream calls a publish a duplicate, the id must hold a request of this
    user's, not someone else's."""
    limit = bus.settings.streams.max_msg_size
    if chosen:
        known = await events_of(bus, event.execution_id, max_bytes=limit)
        earlier = [e for e in known if isinstance(e, Requested) and e.user == event.user]
        if earlier and earlier[0].request != event.request:
            state = fold(known)
            raise UsageError(
                f"execution {event.execution_id} already exists "
                f"({state.status if state else 'requested'}) with another request; "
                "use a fresh --id, or `cronium show` it"
            )
        if earlier:
            return  # the same request again: follow the one that exists
    ack = await bus.publish(event)
    if not ack.duplicate:
        return
    stored = await events_of(bus, event.execution_id, max_bytes=limit)
    if any(e.type == "execution.requested" and e.user == event.user for e in stored):
        return
    raise UsageError(
        f"execution id {event.execution_id} is already taken by another request; "
        "this one was not stored"
    )


async def register_inline_targets(bus: Bus, request: Request, args: argparse.Namespace) -> Request:
    """Register ``ssh://`` targets as servers (named by a hash of the URL) and use the names."""
    from cronium_bus.cli.servers import register

    if args.ssh_key is None or args.known_hosts is None:
        raise UsageError("ssh:// targets need --ssh-key FILE and --known-hosts FILE")
    try:
        key = args.ssh_key.read_bytes()
        known = args.known_hosts.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    names = []
    for target in request.targets:
        if target.startswith("ssh://"):
            server = await register(bus, adhoc_name(target), target, key, known)
            names.append(server.name)
        else:
            names.append(target)
    return msgspec.structs.replace(request, targets=tuple(names))


def describe(event: AnyEvent, state: ExecutionState) -> str:
    """One progress line for a lifecycle event."""
    text = f"{event.type.split('.', 1)[-1]} {event.execution_id}"
    if event.attempt > 1:
        text += f" (attempt {event.attempt})"
    current = state.attempt_state(event.attempt)
    if event.type == "execution.started" and current and current.runner:
        text += f" on {current.runner}"
    if state.final and state.error:
        text += f": {state.error.message}"
    return text
