"""``cronium check`` and ``cronium dlq list|retry``: operating the delivery guarantees."""

from __future__ import annotations

import argparse
import json
from typing import TypeAlias

import msgspec

from cronium_bus.bus import Bus
from cronium_bus.check import as_dict, check
from cronium_bus.cli import exitcodes
from cronium_bus.cli.common import add_client_options, fail, run_client

_Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_parsers(sub: _Sub) -> None:
    """Register ``check`` and ``dlq``."""
    p = sub.add_parser(
        "check",
        help="check the streams: one terminal event per attempt, gapless logs, no orphans",
        description="Read every lifecycle event and log chunk in the streams (and the local "
        "Docker engine) and report: attempts without exactly one terminal event, gaps in log "
        "sequence numbers, containers left behind by ended executions. Exit 0 when there is no "
        "violation, 1 otherwise.",
    )
    p.add_argument("--final", action="store_true", help="also require every execution to be final")
    p.add_argument("--no-containers", action="store_true", help="do not look at Docker")
    p.add_argument(
        "--grace",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds a container may outlive its execution before it counts as orphaned",
    )
    p.add_argument("--json", action="store_true")
    add_client_options(p)
    p.set_defaults(handler=check_cmd)

    p = sub.add_parser(
        "dlq",
        help="list or retry dead letters (messages a consumer gave up on)",
        description="Messages that could not be processed — undecodable, unattributable, or "
        "failing in a runner runner.max_deliver times — are parked on cronium.dlq.<source> "
        "with the reason.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("list", help="list parked messages with their reason")
    a.add_argument("--json", action="store_true")
    add_client_options(a)
    a = actions.add_parser(
        "retry", help="put one back to work (a job becomes a new attempt) and remove it"
    )
    a.add_argument("id", metavar="ID", type=int, help="the id shown by `cronium dlq list`")
    a.add_argument(
        "--force",
        action="store_true",
        help="run a job again even though its execution already went on to a later attempt",
    )
    add_client_options(a)
    a = actions.add_parser("drop", help="remove one without running it")
    a.add_argument("id", metavar="ID", type=int, help="the id shown by `cronium dlq list`")
    add_client_options(a)
    p.set_defaults(handler=dlq_cmd)


def check_cmd(args: argparse.Namespace) -> int:
    """``cronium check``."""
    if args.grace < 0:
        return fail("--grace must be zero or more seconds", code=exitcodes.USAGE)

    async def body(bus: Bus) -> int:
        report = await check(
            bus.js,
            max_bytes=bus.settings.streams.max_msg_size,
            containers=not args.no_containers,
            require_final=args.final,
            grace_s=args.grace,
        )
        if args.json:
            print(json.dumps(as_dict(report)))
        else:
            print(
                f"{report.executions} executions ({report.final} final, {len(report.open)} in "
                f"flight), {report.workflows} workflows, {report.log_streams} log streams, "
                + (
                    f"{report.containers} containers"
                    if report.containers_checked
                    else "containers not checked"
                )
            )
            for v in report.violations:
                print(f"VIOLATION {v.kind:<20} {v.execution_id:<32} {v.detail}")
            print("ok: no violations" if report.ok else f"{len(report.violations)} violations")
        return exitcodes.OK if report.ok else exitcodes.FAILURE

    return run_client(args, body)


def dlq_cmd(args: argparse.Namespace) -> int:
    """``cronium dlq list|retry``."""
    from consumers.dlq import drop_dead_letter, list_dead_letters, retry_dead_letter

    async def body(bus: Bus) -> int:
        if args.action == "list":
            letters = await list_dead_letters(bus)
            if args.json:
                print(json.dumps(msgspec.to_builtins(letters)))
                return exitcodes.OK
            if not letters:
                print("no dead letters")
            for d in letters:
                print(
                    f"{d.id:>6} {d.time[:19]} {d.source:<12} {d.execution_id or '-':<32} {d.reason}"
                )
            return exitcodes.OK
        if args.action == "drop":
            await drop_dead_letter(bus, args.id)
            print(f"dead letter {args.id}: dropped")
            return exitcodes.OK
        result = await retry_dead_letter(bus, args.id, force=args.force)
        where = (
            f"execution {result['execution_id']} attempt {result['attempt']} queued"
            if "attempt" in result
            else f"published again on {result['subject']}"
        )
        print(f"dead letter {args.id}: {where}")
        return exitcodes.OK

    return run_client(args, body)
