"""Schedules: checking a spec, what nats-server is told, ids, and the next fires (pure).

nats-server fires the schedules itself (JetStream message schedules, ADR-51): a message on
``cronium.sched.def.<owner>.<name>`` in the ``CRONIUM_SCHED`` stream carries ``Nats-Schedule``
(``@every 5s``, a six-field cron with seconds first, or ``@at <time>``), ``Nats-Schedule-Target``
(``cronium.sched.fire.<owner>.<name>``) and, for a cron, ``Nats-Schedule-Time-Zone``; the server
appends a fire message to the target each time, with ``Nats-Schedule-Next``. A five-field cron,
as people write it, gets ``0`` seconds in front. The next fires ``schedule list`` shows are
computed here with cronsim in the schedule's zone (DST included), the same rule the server
applies.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from cronium_bus.errors import CroniumError, ErrorKind
from cronium_bus.events import ScheduleSpec
from cronium_bus.ids import derived_id

MAX_LIST: Final = 50
LATEST: Final = datetime(2200, 1, 1, tzinfo=UTC)
"""Times a schedule may name end before this (nats-server counts nanoseconds since 1970 and
overflows in 2262: an ``@at`` past that fired at once)."""
_CRON_FIELD: Final = re.compile(r"^[0-9A-Za-z*/,-]{1,80}$")
_NAMES: Final = re.compile(r"[A-Za-z]+")
_DAY_NAMES: Final = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"}
_MONTH_NAMES: Final = {
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
}  # fmt: skip
_PREDEFINED: Final = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}


class ScheduleError(CroniumError):
    """A schedule cannot be created or changed as asked."""

    kind: ErrorKind = "validation"


def schedule_id(owner: str, name: str) -> str:
    """The id of ``owner``'s schedule ``name`` (its events' execution id): readable, and
    distinct between owners."""
    digest = hashlib.sha256(f"{owner}/{name}".encode()).hexdigest()[:8]
    return f"sch-{name[:24]}-{digest}"


def run_id(schedule: str, fire_at: datetime, version: str) -> str:
    """The execution id of the run a fire starts: the schedule's id and the fire's second (so
    a redelivered fire or a second scheduler never starts it twice) and a digest of the spec's
    event id (so no one else can take it first: :func:`cronium_bus.ids.derived_id`)."""
    return derived_id(schedule, str(int(fire_at.timestamp())), version)


def def_subject(owner: str, name: str) -> str:
    """Where the schedule message nats-server fires from lives."""
    return f"cronium.sched.def.{owner}.{name}"


def fire_subject(owner: str, name: str) -> str:
    """Where nats-server appends the fires."""
    return f"cronium.sched.fire.{owner}.{name}"


def six_fields(expr: str) -> str:
    """A cron expression as nats-server reads it: six fields, seconds first."""
    expr = " ".join(expr.split())
    if expr.lower() in _PREDEFINED:
        return _PREDEFINED[expr.lower()]
    fields = expr.split(" ")
    if len(fields) == 5:
        return f"0 {expr}"
    return expr


def zone(spec: ScheduleSpec) -> ZoneInfo:
    """The schedule's time zone (UTC when none)."""
    return ZoneInfo(spec.tz) if spec.tz else ZoneInfo("UTC")


def check(spec: ScheduleSpec, now: datetime) -> None:
    """Refuse a spec that cannot fire, naming the problem."""
    kinds = [k for k in ("every_s", "cron", "at") if getattr(spec, k) is not None]
    if len(kinds) != 1:
        raise ScheduleError(
            "a schedule has exactly one of every, cron or at",
            hint="pass one of --every DUR, --cron EXPR, --at TIME",
        )
    if spec.tz is not None:
        try:
            ZoneInfo(spec.tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ScheduleError(
                f"unknown time zone {spec.tz[:64]!r}", hint="use an IANA name: Europe/Paris"
            ) from exc
        if spec.cron is None:
            raise ScheduleError(
                "--tz applies to a cron schedule", hint="write --at and --start with an offset"
            )
    for name in ("at", "start", "end"):
        value = getattr(spec, name)
        if value is not None and value >= LATEST:
            raise ScheduleError(
                f"--{name} {value.isoformat()} is too far ahead", hint="before 2200"
            )
    if spec.cron is not None:
        expr = six_fields(spec.cron)
        _nats_grammar(spec.cron, expr)
        if len(expr.split(" ")) != 6:
            raise ScheduleError(
                f"cron {spec.cron[:80]!r} has {len(spec.cron.split())} fields",
                hint="write five fields (minute hour day month weekday), or six with seconds first",
            )
        try:
            next(iter(CronSim(expr, now.astimezone(zone(spec)))))
        except (CronSimError, StopIteration, ValueError) as exc:
            raise ScheduleError(f"cron {spec.cron[:80]!r} is not valid: {exc}") from exc
    if spec.every_s is not None and spec.every_s != int(spec.every_s):
        raise ScheduleError("--every is a whole number of seconds", hint="e.g. 2s, 5m, 1h")
    if spec.at is not None and spec.at <= now:
        raise ScheduleError(
            f"--at {spec.at.isoformat()} is in the past", hint="pick a time to come"
        )
    if spec.start is not None and spec.end is not None and spec.end <= spec.start:
        raise ScheduleError("--end is not after --start")
    if spec.end is not None and spec.end <= now:
        raise ScheduleError(f"--end {spec.end.isoformat()} is in the past")


def _nats_grammar(original: str, expr: str) -> None:
    """Refuse what cronsim reads but nats-server does not (L, W, #, ?, weekday 7): a schedule
    it refuses would never fire."""
    fields = expr.split(" ")
    for i, field in enumerate(fields):
        if not _CRON_FIELD.fullmatch(field):
            raise ScheduleError(
                f"cron {original[:80]!r}: field {field[:40]!r} is not supported",
                hint="use numbers, *, ranges a-b, lists a,b and steps /n (no L, W, # or ?)",
            )
        names = {n.lower() for n in _NAMES.findall(field)}
        allowed = _DAY_NAMES if i == 5 else _MONTH_NAMES if i == 4 else set()
        if names - allowed:
            raise ScheduleError(f"cron {original[:80]!r}: {field[:40]!r} names an unknown value")
        if i == 5 and any(int(d) > 6 for d in re.findall(r"\d+", field)):
            raise ScheduleError(
                f"cron {original[:80]!r}: weekdays are 0-6 (0 is Sunday)", hint="write 0, not 7"
            )


def nats_headers(spec: ScheduleSpec, target: str, *, start_now: bool) -> dict[str, str]:
    """The headers of the schedule message: nats-server fires ``target`` from it. Before its
    start a schedule is armed with an ``@at`` at the start instead (see the scheduler)."""
    headers = {"Nats-Schedule-Target": target, "Nats-Schedule-TTL": "1h"}
    if not start_now and spec.start is not None:
        headers["Nats-Schedule"] = f"@at {_utc(spec.start)}"
    elif spec.every_s is not None:
        headers["Nats-Schedule"] = f"@every {int(spec.every_s)}s"
    elif spec.cron is not None:
        headers["Nats-Schedule"] = six_fields(spec.cron)
        if spec.tz:
            headers["Nats-Schedule-Time-Zone"] = spec.tz
    else:
        assert spec.at is not None
        headers["Nats-Schedule"] = f"@at {_utc(spec.at)}"
    return headers


def _utc(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def next_fires(
    spec: ScheduleSpec, after: datetime, count: int, *, anchor: datetime | None = None
) -> list[datetime]:
    """The next ``count`` fire times after ``after`` (UTC), within start and end. ``anchor``
    is when an interval last fired or began."""
    count = max(0, min(count, MAX_LIST))
    begin = max(after, spec.start) if spec.start else after
    out: list[datetime] = []
    if spec.at is not None:
        out = [spec.at] if spec.at > after else []
    elif spec.every_s is not None:
        step = timedelta(seconds=spec.every_s)
        t = anchor or spec.start or after
        try:
            if t <= begin:
                t += step * (int((begin - t) / step) + 1)
            for _ in range(count):
                out.append(t)
                t += step
        except OverflowError:
            pass  # past the last date a calendar can hold
    else:
        assert spec.cron is not None
        try:
            it = iter(CronSim(six_fields(spec.cron), begin.astimezone(zone(spec))))
            for _ in range(count):
                out.append(next(it).astimezone(UTC))
        except (StopIteration, OverflowError, CronSimError, ValueError):
            pass  # no more fires a calendar can hold
    return [t for t in out if spec.end is None or t <= spec.end][:count]
