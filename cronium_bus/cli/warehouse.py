"""``cronium history`` and ``cronium audit verify|export``: queries answered by the projector."""

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
from cronium_bus.errors import CroniumError
from cronium_bus.units import parse_duration

_Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
_QUERY_TIMEOUT_S = 30.0


class QueryError(CroniumError):
    """The query service refused or could not answer."""


async def ask(bus: Bus, name: str, payload: dict[str, Any]) -> Any:
    """Send a query to the projector's query service and return its result."""
    try:
        msg = await bus.nc.request(
            f"cronium.query.{name}", msgspec.json.encode(payload), timeout=_QUERY_TIMEOUT_S
        )
    except nats.errors.NoRespondersError as exc:
        raise QueryError(
            "no projector is running to answer queries",
            hint="start the stack with `cronium up` (it runs the projector)",
        ) from exc
    except nats.errors.TimeoutError as exc:
        raise QueryError("the projector did not answer in time") from exc
    reply = msgspec.json.decode(msg.data)
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
    p.add_argument("--json", action="store_true")
    add_client_options(p)
    p.set_defaults(handler=history_cmd)

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
        rows = await ask(
            bus,
            "history",
            {"status": args.status, "user": args.user, "since": since, "limit": args.limit},
        )
        if args.json:
            print(json.dumps(rows))
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
