"""``cronium history``, ``stats``, ``audit verify|export`` and ``replay``: answered by the
projector process, which owns the warehouse."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

import msgspec
import nats.errors

from cronium_bus.bus import Bus
from cronium_bus.cli import exitcodes
from cronium_bus.cli.common import add_client_options, fail, run_client
from cronium_bus.errors import CroniumError, PermissionDeniedError
from cronium_bus.units import parse_duration

_Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
_QUERY_TIMEOUT_S = 30.0
_REPLAY_SILENCE_S = 60.0  # the projector reports progress at least every few seconds


class QueryError(CroniumError):
    """The query service refused or could not answer."""


async def ask(bus: Bus, name: str, payload: dict[str, Any]) -> Any:
    """Send a query to the projector's query service and return its result."""
    # a user asks on their own name (the only subject they may use) and sees only their own
    subject = (
        f"cronium.query.user.{bus.identity}.{name}"
        if bus.role == "user"
        else f"cronium.query.{name}"
    )
    reply = await bus.ask(
        subject,
        msgspec.json.encode(payload),
        timeout=_QUERY_TIMEOUT_S,
        service="projector",
        error=QueryError,
    )
    if not reply.get("ok"):
        raise QueryError(f"query refused: {reply.get('error')}")
    return reply["result"]


def when(text: str) -> str:
    """A time for queries: ISO 8601, or a duration ago ('1h', '2d')."""
    try:
        return (datetime.now(UTC) - timedelta(seconds=parse_duration(text))).isoformat()
    except ValueError:
        datetime.fromisoformat(text)  # raises ValueError with a readable message
        return text


def add_parsers(sub: _Sub) -> None:
    """Register ``history`` and ``audit``."""
    p = sub.add_parser("history", help="list executions from the warehouse (newest first)")
    p.add_argument("--status", help="e.g. succeeded, failed, timed_out, rejected, partial")
    p.add_argument("--user")
    p.add_argument("--since", metavar="T", help="ISO time, or a duration ago (1h, 2d)")
    p.add_argument("--limit", type=int, default=50, metavar="N")
    p.add_argument("--workflow", metavar="ID", help="only the node executions of workflow ID")
    p.add_argument(
        "--workflows", action="store_true", help="list workflows (status, nodes) instead"
    )
    p.add_argument("--json", action="store_true")
    add_client_options(p)
    p.set_defaults(handler=history_cmd)

    p = sub.add_parser(
        "stats",
        help="dashboard figures: runs per status per hour, run-time percentiles per event",
    )
    p.add_argument("--since", default="24h", metavar="T", help="ISO time or duration ago")
    p.add_argument("--json", action="store_true")
    add_client_options(p)
    p.set_defaults(handler=stats_cmd)

    p = sub.add_parser(
        "replay",
        help="rebuild every projection from the streams, then swap it in atomically",
        description="Rebuild the warehouse (history, audit trail, log archive) from the "
        "JetStream streams into fresh tables, showing progress, and swap them in with one "
        "atomic EXCHANGE. Queries keep answering from the old tables until the swap. Archived "
        "log lines older than the log stream are carried over. Refused when lifecycle events "
        "have aged out of the stream (their history would be lost) unless --force.",
    )
    p.add_argument("--force", action="store_true", help="replay even if events have aged out")
    add_client_options(p)
    p.set_defaults(handler=replay_cmd)

    p = sub.add_parser("audit", help="verify or export the audit trail")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("verify", help="recompute the hash chain; exit 1 naming a bad row")
    add_client_options(a)
    a = actions.add_parser("export", help="export audit rows between two times")
    a.add_argument("--since", required=True, metavar="T")
    a.add_argument("--until", default="0s", metavar="T")
    a.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    add_client_options(a)
    p.set_defaults(handler=audit_cmd)


def history_cmd(args: argparse.Namespace) -> int:
    """``cronium history``."""
    try:
        since = when(args.since) if args.since else None
    except ValueError as exc:
        return fail(f"cannot read --since: {exc}", code=exitcodes.USAGE)
    if not 1 <= args.limit <= 10_000:
        return fail("--limit must be between 1 and 10000", code=exitcodes.USAGE)

    async def body(bus: Bus) -> int:
        if bus.role == "user" and args.user not in (None, bus.identity):
            raise PermissionDeniedError(
                f"{bus.identity} sees only their own history, not {args.user}'s",
                hint="drop --user",
            )
        query = {"status": args.status, "user": args.user, "since": since, "limit": args.limit}
        rows = await ask(
            bus,
            "history",
            {**query, "workflow_id": args.workflow, "workflows": args.workflows},
        )
        if args.json:
            print(json.dumps(rows))
            return exitcodes.OK
        if args.workflows:
            for r in rows:
                print(
                    f"{r['requested_at'] or '':<27} {r['workflow_id']:<32} {r['status']:<10} "
                    f"{r['user']:<12} {r['name']:<20} {r['succeeded']}/{r['nodes']} succeeded, "
                    f"{r['failed']} failed, {r['skipped']} skipped"
                )
            return exitcodes.OK
        for r in rows:
            print(
                f"{r['requested_at'] or '':<27} {r['execution_id']:<32} #{r['attempt']} "
                f"{r['status']:<16} {r['user']:<12} {r['runtime']:<7} exit {r['exit_code']}"
            )
        return exitcodes.OK

    return run_client(args, body)


def audit_cmd(args: argparse.Namespace) -> int:
    """``cronium audit verify|export``."""
    if args.action == "export":
        try:
            span = {"since": when(args.since), "until": when(args.until)}
        except ValueError as exc:
            return fail(f"cannot read the time: {exc}", code=exitcodes.USAGE)

    async def body(bus: Bus) -> int:
        if args.action == "verify":
            result = await ask(bus, "audit.verify", {})
            if result["ok"]:
                print(f"audit trail intact: {result['rows']} rows chained")
                return exitcodes.OK
            return fail(f"audit trail broken at seq {result['seq']}: {result['reason']}")
        rows = await ask(bus, "audit.export", span)
        if args.format == "jsonl":
            for r in rows:
                print(json.dumps(r))
        elif rows:
            writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return exitcodes.OK

    return run_client(args, body)


def stats_cmd(args: argparse.Namespace) -> int:
    """``cronium stats``."""
    try:
        since = when(args.since)
    except ValueError as exc:
        return fail(f"cannot read --since: {exc}", code=exitcodes.USAGE)

    async def body(bus: Bus) -> int:
        result = await ask(bus, "stats", {"since": since})
        if args.json:
            print(json.dumps(result))
            return exitcodes.OK
        print("runs per hour")
        for r in result["runs_per_hour"]:
            print(f"  {r['hour']:<20} {r['status']:<16} {r['runs']:>8}")
        a = result.get("archive") or {"lines": 0}  # (a user's own figures have no archive)
        if a["lines"]:
            ratio = a["uncompressed_bytes"] / a["compressed_bytes"] if a["compressed_bytes"] else 0
            print(
                f"log archive: {a['lines']:,} lines (before merges), {a['compressed_bytes']:,} "
                f"bytes on disk, {ratio:.1f}x compressed"
            )
        if result.get("workflows"):
            print("workflows                      runs      p50 (ms)")
            for r in result["workflows"]:
                name = f"{r['name']} [{r['status']}]"
                print(f"  {name:<26} {r['runs']:>8} {r['p50_ms'] or 0:>10.0f}")
        print("run time per event (ms)        runs      p50      p95      p99")
        for r in result["durations_by_event"]:
            name = f"{r['event_ref'] or '(ad hoc)'} [{r['runtime']}]"
            print(
                f"  {name:<26} {r['runs']:>8} {r['p50_ms']:>8.0f} {r['p95_ms']:>8.0f} "
                f"{r['p99_ms']:>8.0f}"
            )
        return exitcodes.OK

    return run_client(args, body)


def _show_progress(p: dict[str, Any]) -> None:
    if p["total"]:
        pct = 100.0 * p["done"] / p["total"]
        text = f"replay: {p['phase']}: {p['done']:,}/{p['total']:,} ({pct:.0f}%)"
    else:
        text = f"replay: {p['phase']}"
    if sys.stderr.isatty():
        print(f"\r\033[K{text}", end="", file=sys.stderr, flush=True)
    else:
        print(text, file=sys.stderr, flush=True)


def replay_cmd(args: argparse.Namespace) -> int:
    """``cronium replay``: progress on stderr, a summary on stdout."""

    async def body(bus: Bus) -> int:
        inbox = bus.nc.new_inbox()
        sub = await bus.nc.subscribe(inbox)
        payload = msgspec.json.encode({"force": args.force})
        await bus.nc.publish("cronium.query.replay", payload, reply=inbox)
        first = True
        while True:
            try:
                msg = await sub.next_msg(timeout=10.0 if first else _REPLAY_SILENCE_S)
            except nats.errors.TimeoutError as exc:
                raise QueryError(
                    "no projector answered" if first else "the projector went silent",
                    hint="is `cronium up` running? see `cronium status`",
                ) from exc
            if msg.headers and msg.headers.get("Status") == "503":
                raise QueryError(
                    "no projector is running to replay into",
                    hint="start the stack with `cronium up` (it runs the projector)",
                )
            first = False
            reply = msgspec.json.decode(msg.data)
            if "progress" in reply:
                _show_progress(reply["progress"])
                continue
            if sys.stderr.isatty():
                print(file=sys.stderr)
            if not reply.get("ok"):
                return fail(f"replay failed: {reply.get('error')}", reply.get("hint", ""))
            r = reply["result"]
            print(
                f"replayed {r['events']:,} lifecycle events and {r['log_chunks']:,} log chunks "
                f"into {r['executions']:,} executions in {r['seconds']:.1f} s; swapped in"
            )
            return exitcodes.OK

    return run_client(args, body)
