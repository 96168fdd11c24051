"""Schedules' pure parts (spec checks, what nats-server is told, next fires, the fold) and the
scheduler's management endpoint under generated hostile requests (real nats-server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import nats
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from cronium_bus.bus import Bus
from cronium_bus.events import (
    Request,
    ScheduleCreated,
    ScheduleDeleted,
    ScheduleFired,
    ScheduleFireQueued,
    ScheduleFireSkipped,
    SchedulePaused,
    ScheduleResumed,
    ScheduleRunEnded,
    ScheduleSpec,
    utcnow,
)
from cronium_bus.health import read_beats
from cronium_bus.ids import new_id
from cronium_bus.schedules.spec import (
    ScheduleError,
    check,
    nats_headers,
    next_fires,
    run_id,
    schedule_id,
    six_fields,
)
from cronium_bus.schedules.state import fold_schedule
from cronium_bus.settings import Settings
from tests.conftest import Embedded

NOW = datetime(2026, 3, 27, 12, 0, tzinfo=UTC)
REQ = Request(runtime="bash", code="true")


def spec(**fields: Any) -> ScheduleSpec:
    return ScheduleSpec(name="s", request=REQ, **fields)


def test_cron_in_a_zone_follows_its_wall_clock_across_dst() -> None:
    nine = spec(cron="0 9 * * *", tz="Europe/Amsterdam")
    fires = next_fires(nine, NOW, 4)
    assert [f.astimezone(ZoneInfo("Europe/Amsterdam")).hour for f in fires] == [9, 9, 9, 9]
    assert [f.hour for f in fires] == [8, 7, 7, 7]  # CET, then CEST from March 29
    assert nats_headers(nine, "t", start_now=True) == {
        "Nats-Schedule-Target": "t",
        "Nats-Schedule-TTL": "1h",
        "Nats-Schedule": "0 0 9 * * *",
        "Nats-Schedule-Time-Zone": "Europe/Amsterdam",
    }


def test_five_fields_get_seconds_and_names_are_expanded() -> None:
    assert six_fields("*/5  *  * * *") == "0 */5 * * * *"
    assert six_fields("30 0 9 * * mon") == "30 0 9 * * mon"
    assert six_fields("@Hourly") == "0 0 * * * *"
    assert next_fires(spec(cron="*/15 * * * * *"), NOW, 2) == [
        NOW + timedelta(seconds=15),
        NOW + timedelta(seconds=30),
    ]


def test_next_fires_stop_at_the_end_of_the_calendar() -> None:
    late = spec(every_s=60, start=datetime(9999, 12, 31, 23, 0, tzinfo=UTC))
    assert len(next_fires(late, NOW, 5)) <= 5  # no OverflowError: fewer fires
    assert next_fires(spec(cron="0 0 29 2 *"), datetime(9999, 3, 1, tzinfo=UTC), 3) == []


def test_intervals_start_and_end() -> None:
    every = spec(every_s=10, start=NOW + timedelta(seconds=25), end=NOW + timedelta(seconds=60))
    # armed at the start, an interval fires one interval after it (as nats-server does)
    assert next_fires(every, NOW, 10) == [NOW + timedelta(seconds=s) for s in (35, 45, 55)]
    assert next_fires(spec(every_s=2), NOW, 2, anchor=NOW - timedelta(seconds=1)) == [
        NOW + timedelta(seconds=1),
        NOW + timedelta(seconds=3),
    ]
    armed = nats_headers(every, "t", start_now=False)
    assert armed["Nats-Schedule"] == "@at 2026-03-27T12:00:25Z"
    assert nats_headers(every, "t", start_now=True)["Nats-Schedule"] == "@every 10s"
    at = spec(at=NOW + timedelta(hours=1))
    assert next_fires(at, NOW, 3) == [NOW + timedelta(hours=1)]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({}, "exactly one of every, cron or at"),
        ({"every_s": 5, "cron": "* * * * *"}, "exactly one of"),
        ({"cron": "61 * * * *"}, "not valid"),
        ({"cron": "* * *"}, "has 3 fields"),
        ({"cron": "0 9 * * *", "tz": "Nowhere/Land"}, "unknown time zone"),
        ({"every_s": 5, "tz": "Europe/Paris"}, "applies to a cron"),
        ({"every_s": 1.5}, "whole number of seconds"),
        ({"at": NOW - timedelta(seconds=1)}, "in the past"),
        ({"every_s": 5, "start": NOW, "end": NOW}, "not after --start"),
        ({"every_s": 5, "end": NOW - timedelta(days=1)}, "in the past"),
        ({"cron": "0 0 LW * *"}, "not supported|unknown value"),
        ({"cron": "0 0 * * 0-7"}, "weekdays are 0-6"),
        ({"cron": "0 0 * foo *"}, "unknown value"),
        ({"at": datetime(2263, 1, 1, tzinfo=UTC)}, "too far ahead"),
    ],
)
def test_specs_that_cannot_fire_are_refused_naming_why(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(ScheduleError, match=reason):
        check(spec(**fields), NOW)


def test_ids_are_distinct_per_owner_and_runs_unguessable() -> None:
    assert schedule_id("alice", "nightly") != schedule_id("bob", "nightly")
    assert schedule_id("alice", "nightly").startswith("sch-nightly-")
    sid = schedule_id("alice", "n" * 40)
    one = run_id(sid, NOW, "ev_v1")
    assert len(one) <= 64 and one == run_id(sid, NOW, "ev_v1") != run_id(sid, NOW, "ev_v2")


def _env(**extra: Any) -> dict[str, Any]:
    return {
        "event_id": new_id("ev"),
        "time": utcnow(),
        "execution_id": "sch-s-1",
        "correlation_id": "sch-s-1",
        "producer": "t",
        "user": "alice",
        **extra,
    }


def test_the_fold_counts_from_the_events_once_per_fire() -> None:
    created = ScheduleCreated(**_env(), spec=spec(every_s=1, overlap="queue"))
    t = [NOW + timedelta(seconds=i) for i in range(4)]
    events: list[Any] = [
        created,
        ScheduleFired(**_env(), fire_at=t[0], run_id="r0", next_at=t[1]),
        ScheduleFired(**_env(), fire_at=t[0], run_id="r0-again"),  # a redelivery: ignored
        ScheduleFireSkipped(**_env(), fire_at=t[1], reason="still running"),
        ScheduleFireQueued(**_env(), fire_at=t[2]),
        ScheduleRunEnded(**_env(), run_id="r0", status="succeeded"),
        ScheduleFired(**_env(), fire_at=t[2], run_id="r2", queued=True),  # the queued starts
        ScheduleRunEnded(**_env(), run_id="r2", status="failed"),
        ScheduleRunEnded(**_env(), run_id="r2", status="succeeded"),  # one end per run
        SchedulePaused(**_env(), reason="max_runs 2 reached"),
        ScheduleFired(**_env(user="mallory"), fire_at=t[3], run_id="x"),  # another owner's
    ]
    state = fold_schedule(events)
    assert state is not None
    assert (state.runs, state.successes, state.failures, state.skipped) == (2, 1, 1, 1)
    assert state.status == "paused" and state.reason == "max_runs 2 reached"
    assert [f.run_id for f in state.fires.values()] == ["r0", None, "r2"]
    assert state.last_outcome() == "failed" and state.queued() == []
    assert fold_schedule(events[1:]) is None  # nothing before it was created


def _event_strategy() -> st.SearchStrategy[Any]:
    """Schedule events over a few fire times and runs, in any order and repeated."""
    at = st.integers(0, 400).map(lambda i: NOW + timedelta(seconds=i))
    run = st.integers(0, 30).map(lambda i: f"r{i}")
    user = st.sampled_from(["alice", "alice", "alice", "mallory"])
    return st.one_of(
        st.builds(
            lambda a, r, u: ScheduleFired(**_env(user=u), fire_at=a, run_id=r), at, run, user
        ),
        st.builds(lambda a: ScheduleFireSkipped(**_env(), fire_at=a, reason="x"), at),
        st.builds(lambda a: ScheduleFireQueued(**_env(), fire_at=a), at),
        st.builds(
            lambda r, ok: ScheduleRunEnded(
                **_env(), run_id=r, status="succeeded" if ok else "failed"
            ),
            run,
            st.booleans(),
        ),
        st.just(SchedulePaused(**_env(), reason="p")),
        st.just(ScheduleResumed(**_env())),
        st.just(ScheduleDeleted(**_env(), reason="rm")),
        st.just(ScheduleCreated(**_env(), spec=spec(every_s=1))),
    )


def _snapshot(state: Any) -> Any:
    """What the scheduler stores and reads back (a deep copy through JSON)."""
    if state is None:
        return None
    return msgspec.json.decode(msgspec.json.encode(state), type=type(state))


@hsettings(max_examples=300, deadline=None)
@given(st.lists(_event_strategy(), max_size=60), st.data())
def test_the_fold_resumes_from_any_snapshot_to_the_same_state(events: list[Any], data: Any) -> None:
    """fold(later, start=snapshot(fold(earlier))) is fold(earlier + later), for any split."""
    events = [ScheduleCreated(**_env(), spec=spec(every_s=1, overlap="queue")), *events]
    whole = fold_schedule(events)
    split = data.draw(st.integers(0, len(events)))
    resumed = fold_schedule(events[split:], start=_snapshot(fold_schedule(events[:split])))
    assert msgspec.to_builtins(resumed) == msgspec.to_builtins(whole)


def test_a_long_lived_schedule_keeps_its_counters_and_a_bounded_state() -> None:
    """2,000 fires, each run ending, folded 100 events at a time from snapshots: the counters
    count all of them, the state keeps the latest 200 fires, and a late duplicate of a fire
    let go long ago is still known as decided (and counted once)."""
    from cronium_bus.schedules.state import MAX_FIRES

    times = [NOW + timedelta(seconds=i) for i in range(2000)]
    events: list[Any] = [ScheduleCreated(**_env(), spec=spec(every_s=1))]
    for i, t in enumerate(times):
        events.append(ScheduleFired(**_env(), fire_at=t, run_id=f"r{i}"))
        events.append(
            ScheduleRunEnded(**_env(), run_id=f"r{i}", status="failed" if i % 10 else "succeeded")
        )
    events.append(ScheduleFired(**_env(), fire_at=times[5], run_id="r5-again"))
    events.append(ScheduleRunEnded(**_env(), run_id="r5", status="succeeded"))
    state = None
    for first in range(0, len(events), 100):
        state = fold_schedule(events[first : first + 100], start=_snapshot(state))
    assert state is not None
    assert (state.runs, state.successes, state.failures) == (2000, 200, 1800)
    assert len(state.fires) == MAX_FIRES and len(msgspec.json.encode(state)) < 64 * 1024
    assert state.decided(int(times[5].timestamp() * 1000))
    assert msgspec.to_builtins(state) == msgspec.to_builtins(fold_schedule(events))  # at once
    assert state.last_run() is not None and state.last_run().run_id == "r1999"  # type: ignore[union-attr]


def test_two_fires_in_one_second_share_their_run_and_its_end() -> None:
    """Run ids are by the fire's second: two fires in one second (a cron with seconds, a
    catch-up) started one run, and its end settles both, as the whole fold always did."""
    at = NOW + timedelta(milliseconds=200)
    events: list[Any] = [
        ScheduleCreated(**_env(), spec=spec(every_s=1, overlap="allow")),
        ScheduleFired(**_env(), fire_at=at, run_id="r"),
        ScheduleFired(**_env(), fire_at=at + timedelta(milliseconds=500), run_id="r"),
        ScheduleRunEnded(**_env(), run_id="r", status="succeeded"),
    ]
    state = fold_schedule(events)
    assert state is not None
    assert [f.status for f in state.fires.values()] == ["succeeded", "succeeded"]
    assert (state.runs, state.successes) == (2, 2)


def test_queued_and_running_fires_are_kept_past_the_bound() -> None:
    """A run that goes on while 300 fires are skipped, with a queued fire waiting: neither the
    running fire nor the queued one is let go, so the run's end is counted and the queued fire
    can still start."""
    events: list[Any] = [
        ScheduleCreated(**_env(), spec=spec(every_s=1, overlap="queue")),
        ScheduleFired(**_env(), fire_at=NOW, run_id="long"),
        ScheduleFireQueued(**_env(), fire_at=NOW + timedelta(seconds=1)),
    ]
    events += [
        ScheduleFireSkipped(**_env(), fire_at=NOW + timedelta(seconds=2 + i), reason="busy")
        for i in range(300)
    ]
    events.append(ScheduleRunEnded(**_env(), run_id="long", status="succeeded"))
    state = fold_schedule(events)
    assert state is not None
    assert (state.runs, state.successes, state.skipped) == (1, 1, 300)
    assert [f.fire_at for f in state.queued()] == [NOW + timedelta(seconds=1)]


# --------------------------------------------------------------------------- the endpoint


@pytest.fixture
async def asker(settings: Settings) -> AsyncIterator[nats.NATS]:
    """A connection whose replies come to ``_INBOX_tester``, as a user tester's would."""
    nc = await nats.connect(
        settings.nats_url, user_credentials=str(settings.creds), inbox_prefix=b"_INBOX_tester"
    )
    yield nc
    await nc.close()


@pytest.fixture
async def scheduler(bus: Bus, dispatcher: Embedded) -> AsyncIterator[Embedded]:
    from consumers.scheduler.service import Scheduler

    emb = Embedded()
    emb.tasks.append(asyncio.create_task(Scheduler(bus).run(emb.stopper)))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while loop.time() < deadline and not any(
        b.kind == "scheduler" for b in await read_beats(bus.js)
    ):
        await asyncio.sleep(0.1)
    yield emb
    await emb.stop()


_JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.floats(allow_nan=False),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
_GOOD = {"name": "gen", "every_s": 3600, "request": {"runtime": "bash", "code": "true"}}
_BODIES = st.one_of(
    st.binary(max_size=200),
    _JUNK.map(msgspec.json.encode),
    st.fixed_dictionaries(
        {
            "spec": st.fixed_dictionaries({}, optional={k: _JUNK for k in _GOOD}).map(
                lambda d: {**_GOOD, **d}
            )
        },
        optional={"owner": st.sampled_from(["tester", "bob", "", "a.b"]), "replace": _JUNK},
    ).map(msgspec.json.encode),
)


@hsettings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    action=st.sampled_from(["add", "pause", "resume", "rm", "list", "show", "zap", ""]),
    body=_BODIES,
    role=st.sampled_from(["user", "admin", "root"]),
)
async def test_every_management_request_gets_an_answer_and_the_scheduler_stays_up(
    asker: nats.NATS, scheduler: Embedded, action: str, body: bytes, role: str
) -> None:
    subject = f"cronium.ctl.schedules.{role}.tester.{action}".rstrip(".")
    msg = await asker.request(subject, body, timeout=15)
    reply = msgspec.json.decode(msg.data)
    assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), reply
    if not reply["ok"]:
        assert reply["error"] and reply["kind"] in ("validation", "permission"), reply
    else:
        assert role in ("user", "admin") and action in (
            "add",
            "pause",
            "resume",
            "rm",
            "list",
            "show",
        )
    assert all(not t.done() for t in scheduler.tasks)


async def test_concurrent_requests_are_served_at_once_and_one_name_is_added_once(
    asker: nats.NATS, scheduler: Embedded
) -> None:
    """Requests are served concurrently: 12 adds of one new name at once make exactly one
    schedule (the others are told it exists), 12 adds of distinct names all succeed, and a
    list answers meanwhile."""
    name = f"race{new_id('x')[-6:]}"

    def add(n: str) -> bytes:
        spec = {"name": n, "every_s": 3600, "request": {"runtime": "bash", "code": "true"}}
        return msgspec.json.encode({"spec": spec})

    async def ask(action: str, body: bytes) -> dict[str, Any]:
        msg = await asker.request(f"cronium.ctl.schedules.user.tester.{action}", body, timeout=30)
        return msgspec.json.decode(msg.data)  # type: ignore[no-any-return]

    same = await asyncio.gather(*(ask("add", add(name)) for _ in range(12)))
    assert sum(r["ok"] for r in same) == 1, same
    assert all("exists" in r["error"] for r in same if not r["ok"])
    names = [f"{name}-{i}" for i in range(12)]
    distinct, listed = await asyncio.gather(
        asyncio.gather(*(ask("add", add(n)) for n in names)), ask("list", b"{}")
    )
    assert all(r["ok"] for r in distinct), distinct
    assert listed["ok"]
    final = await ask("list", b"{}")
    assert {name, *names} <= {r["name"] for r in final["result"]}
    for n in (name, *names):
        assert (await ask("rm", msgspec.json.encode({"name": n})))["ok"]
    assert all(not t.done() for t in scheduler.tasks)
