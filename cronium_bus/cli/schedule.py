"""``cronium schedule add|list|show|pause|resume|rm``: schedules, fired by nats-server.

Every command asks the scheduler (``cronium.ctl.schedules.<role>.<you>.<action>``), which
checks who may: a user manages their own schedules, an admin anyone's (``--user``).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from cronium_bus.bus import Bus
from cronium_bus.cli import exitcodes
from cronium_bus.cli.common import add_client_options, fail, run_client
from cronium_bus.cli.run import UsageError, add_request_options, build_request
from cronium_bus.cli.secret import result_of
from cronium_bus.events import ScheduleSpec
from cronium_bus.schedules.spec import ScheduleError
from cronium_bus.units import parse_duration

_Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
_TIMEOUT_S: Final = 15.0


def add_parsers(sub: _Sub) -> None:
    """Register ``cronium schedule``."""
    p = sub.add_parser(
        "schedule",
        help="run scripts on a schedule (every DUR, a cron expression, or at a time)",
        description="Schedules are fired by nats-server itself (JetStream message schedules); "
        "the scheduler consumer turns each fire into an execution whose id derives from the "
        "schedule and the fire time, so no fire runs twice. A user manages their own "
        "schedules, an admin anyone's (--user).",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser(
        "add",
        help="create a schedule (--replace changes one)",
        description="Create schedule NAME running FILE or -c CODE with the options of "
        "`cronium run`. Exactly one of --every (at least 1s), --cron (five fields as people "
        "write them, or six with seconds first; @hourly, @daily, ...) or --at (one shot).",
        epilog="examples:\n"
        "  cronium schedule add tick --every 2s --max-runs 3 --runtime bash -c 'date'\n"
        "  cronium schedule add report --cron '0 9 * * mon-fri' --tz Europe/Paris report.py\n"
        "  cronium schedule add once --at 2026-12-24T18:00:00+01:00 -c 'echo ho' --runtime bash",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a.add_argument("name", metavar="NAME", help="1-40 of [A-Za-z0-9_-]")
    when = a.add_mutually_exclusive_group(required=True)
    when.add_argument("--every", metavar="DUR", help="an interval: 2s, 5m, 1h (at least 1s)")
    when.add_argument("--cron", metavar="EXPR", help="'MIN HOUR DAY MONTH WEEKDAY' (or 6 fields)")
    when.add_argument("--at", metavar="TIME", help="one shot at TIME (ISO 8601; --tz if naive)")
    a.add_argument("--tz", metavar="ZONE", help="IANA time zone of --cron and of naive times")
    a.add_argument("--start", metavar="T", help="fire from T on (ISO time, or a duration ahead)")
    a.add_argument("--end", metavar="T", help="fire until T (ISO time, or a duration ahead)")
    a.add_argument("--max-runs", type=int, metavar="N", help="pause after N runs")
    a.add_argument(
        "--overlap",
        choices=["skip", "queue", "allow"],
        default="skip",
        help="a fire while the previous run still runs: skip it (default), queue it, or run it",
    )
    a.add_argument(
        "--missed",
        choices=["once", "skip"],
        default="once",
        help="fires missed while the service was down: run once (default), or skip them",
    )
    a.add_argument("--replace", action="store_true", help="replace an existing schedule NAME")
    a.add_argument("--user", metavar="NAME", help="an admin: whose schedule it is")
    add_request_options(a, delay=False)
    add_client_options(a)
    a.set_defaults(handler=add)

    for name, text in (
        ("pause", "stop firing (fires so far are kept)"),
        ("resume", "fire again"),
        ("rm", "remove the schedule (its history stays)"),
        ("show", "state, next fires, and recent fires with their executions or why skipped"),
    ):
        q = actions.add_parser(name, help=text, description=text)
        q.add_argument("name", metavar="NAME")
        q.add_argument("--user", metavar="NAME", help="an admin: whose schedule")
        if name == "show":
            q.add_argument("--json", action="store_true")
        add_client_options(q)
        q.set_defaults(handler=named)
    q = actions.add_parser(
        "list", help="schedules: state, next fire, runs, last outcome", description="Schedules."
    )
    q.add_argument("--user", metavar="NAME", help="an admin: whose (* for everyone's)")
    q.add_argument("--json", action="store_true")
    add_client_options(q)
    q.set_defaults(handler=list_cmd)


async def ask(bus: Bus, action: str, body: dict[str, Any]) -> Any:
    """Ask the scheduler as this connection's identity; its result, or its refusal."""
    role = "admin" if bus.role in (None, "admin") else "user"
    subject = f"cronium.ctl.schedules.{role}.{bus.acting_user(None)}.{action}"
    reply = await bus.ask(
        subject, msgspec.json.encode(body), timeout=_TIMEOUT_S, service="scheduler"
    )
    return result_of(reply, ScheduleError)


def _time(value: str | None, tz: str | None, flag: str) -> datetime | None:
    """An ISO time (naive: in ``tz``, else UTC) or a duration from now."""
    if value is None:
        return None
    try:
        return datetime.now(UTC) + timedelta(seconds=parse_duration(value))
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise UsageError(f"{flag} {value!r} is neither an ISO time nor a duration") from exc
    if parsed.tzinfo is None:
        try:
            parsed = parsed.replace(tzinfo=ZoneInfo(tz) if tz else UTC)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise UsageError(f"unknown time zone {tz!r}") from exc
    return parsed.astimezone(UTC)


def spec_from(args: argparse.Namespace) -> ScheduleSpec:
    """The spec the flags describe, or :class:`UsageError`."""
    request = build_request(args)
    if any(t.startswith("ssh://") for t in request.targets):
        raise UsageError("a schedule runs on registered servers: `cronium servers add` first")
    try:
        every = parse_duration(args.every) if args.every else None
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if args.tz and not args.cron and not (args.at or args.start or args.end):
        raise UsageError("--tz applies to a cron schedule (and to naive --at, --start, --end)")
    if every is not None and every < 1:
        raise UsageError(f"--every {args.every} is under 1s: schedules fire at most every second")
    if args.max_runs is not None and args.max_runs < 1:
        raise UsageError("--max-runs is at least 1")
    fields: dict[str, Any] = {
        "name": args.name,
        "every_s": every,
        "cron": args.cron,
        "at": _time(args.at, args.tz, "--at"),
        "tz": args.tz if args.cron else None,
        "start": _time(args.start, args.tz, "--start"),
        "end": _time(args.end, args.tz, "--end"),
        "max_runs": args.max_runs,
        "overlap": args.overlap,
        "missed": args.missed,
        "request": request,
    }
    try:
        return msgspec.convert(fields, ScheduleSpec, from_attributes=True)
    except msgspec.ValidationError as exc:
        raise UsageError(f"invalid schedule: {exc}") from exc


def add(args: argparse.Namespace) -> int:
    """``cronium schedule add``."""
    try:
        spec = spec_from(args)
    except UsageError as exc:
        return fail(str(exc), "see `cronium schedule add --help`", exitcodes.USAGE)

    async def body(bus: Bus) -> int:
        result = await ask(
            bus,
            "add",
            {"spec": msgspec.to_builtins(spec), "owner": args.user, "replace": args.replace},
        )
        verb = "replaced" if result["replaced"] else "created"
        print(f"schedule {result['name']} {verb} ({result['schedule_id']})")
        return exitcodes.OK

    return run_client(args, body)


def named(args: argparse.Namespace) -> int:
    """``cronium schedule pause|resume|rm|show NAME``."""

    async def body(bus: Bus) -> int:
        result = await ask(bus, args.action, {"name": args.name, "owner": args.user})
        if args.action != "show":
            print(f"schedule {args.name}: {result}")
            return exitcodes.OK
        if args.json:
            print(json.dumps(result))
            return exitcodes.OK
        _print_row(result)
        if result["reason"]:
            print(f"  {result['state']}: {result['reason']}")
        for t in result["next_fires"]:
            print(f"  next  {t}")
        for f in result["fires"]:
            what = (
                f"{f['run_id']} {f['status']}"
                if f["run_id"]
                else ("queued" if f["queued"] else f"skipped: {f['skipped']}")
            )
            print(f"  fire  {f['fire_at']}  {what}")
        return exitcodes.OK

    return run_client(args, body)


def _print_row(r: dict[str, Any]) -> None:
    upcoming = r["next_fires"][0] if r["next_fires"] else "-"
    print(
        f"{r['name']:<20} {r['state']:<7} {r['when']:<32} next {upcoming:<26} "
        f"runs {r['runs']} ({r['successes']} ok, {r['failures']} failed, "
        f"{r['skipped']} skipped) last {r['last_outcome']}"
    )


def list_cmd(args: argparse.Namespace) -> int:
    """``cronium schedule list``."""

    async def body(bus: Bus) -> int:
        rows = await ask(bus, "list", {"owner": args.user})
        if args.json:
            print(json.dumps(rows))
            return exitcodes.OK
        if not rows:
            print("no schedules", file=sys.stderr)
        for r in rows:
            _print_row(r)
        return exitcodes.OK

    return run_client(args, body)
