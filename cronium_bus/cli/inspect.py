"""``cronium logs | show | status | cancel | config``: looking at and steering executions."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from typing import Any, TypeAlias

import msgspec
import nats.js.errors
from pydantic import ValidationError

from cronium_bus.backlog import lane_jobs
from cronium_bus.bus import Bus
from cronium_bus.cli import exitcodes
from cronium_bus.cli.common import add_client_options, fail, run_client, settings_from
from cronium_bus.cli.watch import Watch
from cronium_bus.events import (
    ActionFired,
    CancelRequested,
    LogChunk,
    NotificationRequested,
    Terminal,
    utcnow,
)
from cronium_bus.health import read_beats
from cronium_bus.ids import is_valid_id, new_id
from cronium_bus.payloads import get_json_payload
from cronium_bus.provision import kv_value, stream_configs
from cronium_bus.reading import events_of
from cronium_bus.state import fold
from cronium_bus.subjects import ANY_OWNER, DLQ_STREAM, EXEC_STREAM, LOGS_STREAM, META_BUCKET
from cronium_bus.workflows.state import fold_workflow

_Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_parsers(sub: _Sub) -> None:
    """Register the inspection commands."""
    p = sub.add_parser(
        "logs",
        help="print an execution's output",
        description="Print the stored output of an execution; with --follow, "
        "keep printing live lines until it ends.",
    )
    p.add_argument("execution_id", metavar="ID")
    p.add_argument("-f", "--follow", action="store_true", help="follow live output to the end")
    add_client_options(p)
    p.set_defaults(handler=logs)

    p = sub.add_parser("show", help="show an execution's lifecycle timeline")
    p.add_argument("execution_id", metavar="ID")
    p.add_argument("--json", action="store_true", help="print the events and state as JSON")
    add_client_options(p)
    p.set_defaults(handler=show)

    p = sub.add_parser(
        "status",
        help="check the stack and list its consumers",
        description="Exit 0 when the stack answers; list consumers with pid and "
        f"health. Exit {exitcodes.UNAVAILABLE} when NATS is unreachable, "
        f"{exitcodes.FAILURE} when streams are missing.",
    )
    p.add_argument("--json", action="store_true")
    add_client_options(p)
    p.set_defaults(handler=status)

    p = sub.add_parser("cancel", help="cancel a queued or running execution")
    p.add_argument("execution_id", metavar="ID")
    p.add_argument("--reason", default="", help="why (recorded in the event)")
    p.add_argument("--wait", action="store_true", help="wait until the execution has ended")
    add_client_options(p)
    p.set_defaults(handler=cancel)

    p = sub.add_parser(
        "config",
        help="print the effective settings (secrets redacted)",
        description="Settings come from flags, CRONIUM_* environment variables "
        "(nested with __, e.g. CRONIUM_LIMITS__MAX_MEMORY=1g) and a TOML file "
        "(--config or CRONIUM_CONFIG).",
    )
    add_client_options(p)
    p.set_defaults(handler=config)


def _check_id(execution_id: str) -> int | None:
    if is_valid_id(execution_id):
        return None
    return fail(
        f"{execution_id!r} is not an execution id", "ids are 1-64 of [A-Za-z0-9_-]", exitcodes.USAGE
    )


def not_found(bus: Bus, execution_id: str) -> int:
    """No execution of this id that the connection may see: exit 77 for a ``user`` (it may
    exist, owned by someone else — which a user is not told), 1 otherwise."""
    if bus.scope != ANY_OWNER:
        return fail(
            f"no execution {execution_id} among {bus.scope}'s",
            "a user sees only their own executions",
            exitcodes.PERMISSION,
        )
    return fail(f"no execution {execution_id}", "check the id (see `cronium history`)")


def logs(args: argparse.Namespace) -> int:
    """``cronium logs ID [--follow]``."""
    if (bad := _check_id(args.execution_id)) is not None:
        return bad

    async def body(bus: Bus) -> int:
        max_bytes = bus.settings.streams.max_msg_size
        events = await events_of(bus, args.execution_id, max_bytes=max_bytes)
        if not events:
            return not_found(bus, args.execution_id)
        if args.follow:
            watch = Watch(bus, args.execution_id)
            await watch.start()
            try:
                await watch.wait_final()
            finally:
                await watch.close()
            return exitcodes.OK
        found = False
        for chunk in await events_of(bus, args.execution_id, max_bytes=max_bytes, kind="logs"):
            if isinstance(chunk, LogChunk):
                found = True
                target = sys.stdout if chunk.stream == "stdout" else sys.stderr
                target.write("".join(f"{line}\n" for line in chunk.lines))
        if not found:  # aged out of the live stream: read the compressed archive
            from cronium_bus.cli.warehouse import QueryError, ask

            try:
                rows = await ask(bus, "logs", {"execution_id": args.execution_id})
            except QueryError:
                rows = []
            for row in rows:
                target = sys.stdout if row["stream"] == "stdout" else sys.stderr
                target.write(f"{row['line']}\n")
        sys.stdout.flush()
        return exitcodes.OK

    return run_client(args, body)


def show(args: argparse.Namespace) -> int:
    """``cronium show ID``: the lifecycle timeline."""
    if (bad := _check_id(args.execution_id)) is not None:
        return bad

    async def body(bus: Bus) -> int:
        events = await events_of(
            bus, args.execution_id, max_bytes=bus.settings.streams.max_msg_size
        )
        state = fold(events)
        if state is None:
            return not_found(bus, args.execution_id)
        if args.json:
            extra: dict[str, Any] = {"seen": None}
            if state.output_ref is not None:  # the value, as for an inline output
                limit = bus.settings.limits.max_output_object
                extra["output"] = await get_json_payload(bus.js, state.output_ref, limit)
            print(
                json.dumps(
                    {
                        "state": msgspec.to_builtins(state, builtin_types=()) | extra,
                        "events": msgspec.to_builtins(events),
                    },
                    default=str,
                )
            )
            return exitcodes.OK
        t0 = events[0].time
        kinds = {e.type.split(".", 1)[0] for e in events}
        if "workflow" in kinds or "schedule" in kinds:  # not an execution: its own events
            what = "workflow" if "workflow" in kinds else "schedule"
            print(
                f"{what} {state.execution_id}  user {events[0].user}  (see `cronium {what} show`)"
            )
        else:
            print(
                f"execution {state.execution_id}  user {state.user}  status {state.status}"
                f"  attempt {state.attempt}"
            )
        for event in events:
            offset = (event.time - t0).total_seconds()
            print(f"  +{offset:8.3f}s  {event.type:<28} #{event.attempt}  {_details(event)}")
        return exitcodes.OK

    return run_client(args, body)


def _details(event: Any) -> str:
    parts: list[str] = []
    if event.type == "execution.requested":
        r = event.request
        parts.append(f"{r.runtime} on {r.runner}, priority {r.priority}")
    if event.type == "execution.queued":
        lim = event.request.limits
        parts.append(
            f"lane {event.lane}; cpus {lim.cpus}, memory {lim.memory_bytes}, "
            f"pids {lim.pids}, timeout {event.request.timeout_s}s"
        )
    if event.type == "execution.started":
        parts.append(f"runner {event.runner}, image {event.image}")
    if isinstance(event, ActionFired):
        parts.append(f"on.{event.when}[{event.index}] {event.action}: {event.detail}")
    if isinstance(event, NotificationRequested):
        parts.append(f"{event.channel}: {event.message[:120]}")
    if event.type == "helper.called":
        parts.append(f"{event.helper}{' ' + event.key if event.key else ''}")
    if isinstance(event, Terminal):
        d = event.durations
        parts.append(
            f"exit {event.exit_code}; setup {d.setup_ms:.0f} ms, run {d.run_ms:.0f} ms,"
            f" cleanup {d.cleanup_ms:.0f} ms; {event.stdout_lines} stdout / "
            f"{event.stderr_lines} stderr lines"
        )
        if event.usage.peak_memory_bytes:
            parts.append(f"peak memory {event.usage.peak_memory_bytes / 1024**2:.1f} MiB")
    error = getattr(event, "error", None)
    if error is not None:
        parts.append(f"{error.kind}: {error.message}")
    return "; ".join(parts)


def status(args: argparse.Namespace) -> int:
    """``cronium status``."""

    async def body(bus: Bus) -> int:
        missing = []
        for config in stream_configs(bus.settings):
            try:
                await bus.js.stream_info(config.name or "")
            except nats.js.errors.NotFoundError:
                missing.append(config.name)
        try:
            beats = await read_beats(bus.js)
        except nats.js.errors.BucketNotFoundError:
            beats = []
        now = time.time()
        rows = [
            {
                "kind": b.kind,
                "instance": b.instance,
                "pid": b.pid,
                "host": b.host,
                "healthy": b.healthy(now),
                "in_flight": b.in_flight,
                "last_beat_s": round(now - b.beat_at, 1),
                "status": b.status,
            }
            for b in beats
        ]
        lanes: dict[str, dict[str, int]] = {}
        for (runner, priority), count in (await lane_jobs(bus.js)).items():
            lanes.setdefault(runner, {})[priority] = count
        backlog: dict[str, int] = {}
        for stream, durable in ((EXEC_STREAM, "projector-exec"), (LOGS_STREAM, "projector-logs")):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                info = await bus.js.consumer_info(stream, durable)
                backlog[durable] = (info.num_pending or 0) + (info.num_ack_pending or 0)
        dead = 0
        with contextlib.suppress(nats.js.errors.NotFoundError):
            dead = (await bus.js.stream_info(DLQ_STREAM)).state.messages
        websocket = None
        with contextlib.suppress(nats.js.errors.Error):
            raw = await kv_value(bus.js, META_BUCKET, "websocket")
            websocket = raw.decode() if raw else None
        if args.json:
            print(
                json.dumps(
                    {
                        "nats_url": bus.settings.nats_url,
                        "websocket": websocket,
                        "streams_missing": missing,
                        "consumers": rows,
                        "lanes": lanes,
                        "projector_backlog": backlog,
                        "dead_letters": dead,
                    }
                )
            )
        else:
            print(f"nats      {bus.settings.nats_url}  (answering)")
            if websocket:
                print(f"websocket {websocket}  (browsers: `cronium user token NAME`)")
            print(f"streams   {'missing: ' + ', '.join(map(str, missing)) if missing else 'ok'}")
            for runner, by_priority in lanes.items():
                waiting = ", ".join(f"{p} {n}" for p, n in by_priority.items() if n)
                print(
                    f"lane      {runner:<10} {sum(by_priority.values())} jobs  {waiting}".rstrip()
                )
            if backlog:
                behind = ", ".join(
                    f"{n} ({d.removeprefix('projector-')})" for d, n in backlog.items()
                )
                print(f"projector {behind} events not yet in the warehouse")
            print(f"dlq       {dead} dead letters" + ("  (see `cronium dlq list`)" if dead else ""))
            if not rows:
                print("consumers none running")
            for r in rows:
                health = "healthy" if r["healthy"] else "STALE"
                print(
                    f"  {r['kind']:<12} pid {r['pid']:<8} {health:<8} in flight "
                    f"{r['in_flight']:<3} last beat {r['last_beat_s']}s ago  {r['instance']}"
                )
        if missing:
            return fail("streams are missing", "start the stack with `cronium up`")
        return exitcodes.OK

    return run_client(args, body)


def cancel(args: argparse.Namespace) -> int:
    """``cronium cancel ID``."""
    if (bad := _check_id(args.execution_id)) is not None:
        return bad

    async def body(bus: Bus) -> int:
        events = await events_of(
            bus, args.execution_id, max_bytes=bus.settings.streams.max_msg_size
        )
        workflow = fold_workflow(events)
        state = fold(events)
        if state is None:
            return not_found(bus, args.execution_id)
        if workflow is not None:  # a workflow: the workflow consumer cancels its nodes
            if workflow.final:
                print(f"workflow {args.execution_id} already ended: {workflow.status}")
                return exitcodes.OK
            state = msgspec.structs.replace(state, user=workflow.user)
        elif state.final:
            print(f"{args.execution_id} already ended: {state.status}")
            return exitcodes.OK
        await bus.publish(
            CancelRequested(
                event_id=new_id("ev"),
                time=utcnow(),
                execution_id=args.execution_id,
                attempt=state.attempt,
                correlation_id=state.correlation_id or args.execution_id,
                producer=bus.producer,
                user=state.user or bus.acting_user(None),  # the owner's subject
                reason=args.reason,
            )
        )
        print(f"cancel requested for {args.execution_id}", file=sys.stderr)
        if args.wait and workflow is not None:
            print("(--wait follows executions; see `cronium workflow show`)", file=sys.stderr)
        elif args.wait:
            watch = Watch(bus, args.execution_id, out=io.StringIO(), err=io.StringIO())
            await watch.start()
            try:
                final = await watch.wait_final(timeout=60)
            finally:
                await watch.close()
            print(f"{args.execution_id} {final.status}")
        return exitcodes.OK

    return run_client(args, body)


def config(args: argparse.Namespace) -> int:
    """``cronium config``."""
    try:
        settings = settings_from(args)
    except (ValidationError, FileNotFoundError) as exc:
        return fail(
            f"invalid settings: {exc}",
            "fix the flag, variable or file named above",
            exitcodes.USAGE,
        )
    print(json.dumps(settings.redacted(), indent=2, default=str))
    return exitcodes.OK
