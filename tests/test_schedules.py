"""Schedules on a real `cronium up` (nats-server fires them; Docker runs them), driven through
the command line, plus what a hostile user tries around it."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import nats
import pytest

from cronium_bus.schedules.spec import schedule_id
from tests.test_cli import Stack, running_stack

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def stack(cronium_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        cronium_bin,
        tmp_path_factory.mktemp("sched"),
        CRONIUM_RUNNER__WARM_RUNTIMES='["bash"]',
    ) as up:
        yield up


def show(stack: Stack, name: str, *extra: str) -> dict[str, Any]:
    done = stack.cli("schedule", "show", name, "--json", *extra)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def until(check: Any, timeout: float = 60.0, step: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"not true after {timeout}s")


def runs_of(stack: Stack, name: str, count: int) -> list[dict[str, Any]]:
    """The history rows of a schedule's runs, once ``count`` are final (oldest first)."""

    def rows() -> list[dict[str, Any]]:
        out = json.loads(stack.cli("history", "--json", "--limit", "500").stdout)
        mine = [r for r in out if r["schedule"] == name and r["ended_at"]]
        return sorted(mine, key=lambda r: r["started_at"]) if len(mine) >= count else []

    return until(rows)  # type: ignore[no-any-return]


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def test_every_2s_with_max_runs_3_runs_three_times_then_pauses(stack: Stack) -> None:
    done = stack.cli(
        "schedule", "add", "tick", "--every", "2s", "--max-runs", "3",
        "--runtime", "bash", "-c", "echo tick",
    )  # fmt: skip
    assert done.returncode == 0 and "schedule tick created" in done.stdout, done.stderr
    rows = runs_of(stack, "tick", 3)
    time.sleep(4.5)  # would be two more fires, had it not paused
    state = show(stack, "tick")
    assert (state["state"], state["reason"], state["runs"]) == ("paused", "max_runs 3 reached", 3)
    assert state["successes"] == 3 and state["last_outcome"] == "succeeded"
    rows = runs_of(stack, "tick", 3)
    assert len(rows) == 3, rows
    starts = [_at(r["started_at"]) for r in rows]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
    assert all(1.5 <= g <= 2.6 for g in gaps), gaps
    assert all(r["execution_id"].startswith(state["schedule_id"]) for r in rows)
    listed = json.loads(stack.cli("schedule", "list", "--json").stdout)
    assert [r["name"] for r in listed if r["name"] == "tick"] == ["tick"]
    resumed = stack.cli("schedule", "resume", "tick")
    assert resumed.returncode == 2 and "ran its 3 runs" in resumed.stderr
    again = stack.cli(
        "schedule", "add", "tick", "--replace", "--every", "2s", "--max-runs", "3",
        "--runtime", "bash", "-c", "echo tick",
    )  # fmt: skip
    assert again.returncode == 2 and "ran 3 runs already" in again.stderr, again.stderr


def test_overlap_skip_never_overlaps_and_shows_the_skipped_fires(stack: Stack) -> None:
    done = stack.cli(
        "schedule", "add", "slow", "--every", "1s", "--overlap", "skip",
        "--runtime", "bash", "-c", "sleep 3.5",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    runs_of(stack, "slow", 2)
    assert stack.cli("schedule", "pause", "slow").returncode == 0
    time.sleep(4)  # the last run ends
    rows = runs_of(stack, "slow", 2)
    spans = [(_at(r["started_at"]), _at(r["ended_at"])) for r in rows]
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start, spans  # never two at once
    fires = show(stack, "slow")["fires"]
    skipped = [f for f in fires if f["skipped"]]
    running = [f for f in skipped if "is still running" in f["skipped"]]
    assert len(running) >= 3, fires
    # the rest: fires nats-server had made before the pause reached it
    assert all(f in running or f["skipped"].startswith("paused") for f in skipped), fires
    out = stack.cli("schedule", "show", "slow").stdout
    assert "skipped: the previous run sch-slow-" in out


def test_a_cron_schedule_in_a_time_zone_lists_and_fires_at_the_right_instants(
    stack: Stack,
) -> None:
    """Its next fires are the zone's wall-clock times (DST included, from the same rule the
    server applies), and nats-server fires it at the instant listed."""
    done = stack.cli(
        "schedule", "add", "kolkata", "--cron", "0 9 * * mon-fri", "--tz", "Asia/Kolkata",
        "--runtime", "bash", "-c", "true",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    nexts = [datetime.fromisoformat(t) for t in show(stack, "kolkata")["next_fires"]]
    assert len(nexts) == 5
    for t in nexts:
        local = t.astimezone(ZoneInfo("Asia/Kolkata"))
        assert (local.hour, local.minute, local.weekday() < 5) == (9, 0, True), t
        assert t.astimezone(UTC).strftime("%H:%M") == "03:30"
    assert nexts == sorted(nexts) and nexts[0] > datetime.now(UTC)

    # a fire a few seconds ahead, written in the zone's wall clock (six fields)
    zone = ZoneInfo("America/St_Johns")  # UTC-3:30 or -2:30: an offset nobody assumes
    when = (datetime.now(UTC) + timedelta(seconds=6)).astimezone(zone)
    cron = f"{when.second} {when.minute} {when.hour} * * *"
    done = stack.cli(
        "schedule", "add", "soon", "--cron", cron, "--tz", "America/St_Johns",
        "--runtime", "bash", "-c", "echo on time",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    listed = datetime.fromisoformat(show(stack, "soon")["next_fires"][0])
    assert abs((listed - when).total_seconds()) < 1, (listed, when)
    (row,) = runs_of(stack, "soon", 1)
    fired = _at(row["requested_at"])
    assert abs((fired - when).total_seconds()) < 2, (fired, when)
    assert stack.cli("logs", row["execution_id"]).stdout == "on time\n"


def test_start_delays_the_first_fire(stack: Stack) -> None:
    begin = datetime.now(UTC)
    done = stack.cli(
        "schedule", "add", "later", "--every", "1s", "--start", "4s", "--max-runs", "1",
        "--runtime", "bash", "-c", "true",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (row,) = runs_of(stack, "later", 1)
    assert _at(row["requested_at"]) - begin >= timedelta(seconds=4)


def test_schedules_refuse_what_cannot_fire_with_a_reason(stack: Stack) -> None:
    cases = [
        (["--every", "0.5s"], "under 1s"),
        (["--cron", "61 * * * *"], "Bad minute"),
        (["--cron", "* * *"], "has 3 fields"),
        (["--cron", "0 9 * * *", "--tz", "Mars/Olympus"], "unknown time zone"),
        (["--every", "5s", "--tz", "Europe/Paris"], "--tz applies to a cron"),
        (["--at", "2020-01-01T00:00:00Z"], "in the past"),
        (["--every", "5s", "--start", "2h", "--end", "1h"], "--end is not after --start"),
        (["--every", "5s", "--max-runs", "0"], "--max-runs is at least 1"),
        (["--every", "5s", "--memory", "100g"], "the maximum is"),
        (["--cron", "0 0 L * *"], "names an unknown value"),  # cronsim reads it, nats does not
        (["--cron", "0 0 * * 1#2"], "is not supported"),
        (["--cron", "0 0 * * 7"], "weekdays are 0-6"),
        (["--at", "2263-01-01T00:00:00Z"], "too far ahead"),  # nats-server would fire it at once
        (["--every", "5s", "--start", "2300-01-01T00:00:00Z"], "too far ahead"),
    ]
    for flags, reason in cases:
        done = stack.cli("schedule", "add", "bad", *flags, "--runtime", "bash", "-c", "true")
        assert done.returncode == 2, (flags, done.stderr)
        assert reason in done.stderr, (flags, done.stderr)
    for name in ("a.b", "x" * 41, "../x"):
        done = stack.cli("schedule", "add", name, "--every", "5s", "--runtime", "bash", "-c", "x")
        assert done.returncode == 2, (name, done.stderr)
    first = stack.cli("schedule", "add", "dup", "--every", "1h", "--runtime", "bash", "-c", "x")
    again = stack.cli("schedule", "add", "dup", "--every", "1h", "--runtime", "bash", "-c", "y")
    assert first.returncode == 0 and again.returncode == 2 and "--replace" in again.stderr
    assert stack.cli("schedule", "rm", "dup").returncode == 0
    assert stack.cli("schedule", "pause", "dup").returncode == 2  # gone


def _user(stack: Stack, name: str) -> Path:
    done = stack.cli("user", "add", name)
    if done.returncode != 0 and "exists" in done.stderr:
        return stack.data / "auth" / "users" / f"{name}.creds"
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip())


def test_only_the_owner_or_an_admin_manages_a_schedule(stack: Stack) -> None:
    alice, bob = _user(stack, "alice"), _user(stack, "bob")
    add = stack.cli(
        "schedule", "add", "hers", "--every", "1h", "--runtime", "bash", "-c", "true",
        "--creds", str(alice),
    )  # fmt: skip
    assert add.returncode == 0, add.stderr
    for action in ("pause", "rm", "show"):
        done = stack.cli("schedule", action, "hers", "--creds", str(bob))
        assert done.returncode == 2 and "no schedule 'hers'" in done.stderr, (action, done.stderr)
        done = stack.cli("schedule", action, "hers", "--user", "alice", "--creds", str(bob))
        assert done.returncode == 77, (action, done.stderr)
    listed = json.loads(stack.cli("schedule", "list", "--json", "--creds", str(bob)).stdout)
    assert listed == []
    mine = json.loads(stack.cli("schedule", "list", "--json", "--creds", str(alice)).stdout)
    assert [r["name"] for r in mine] == ["hers"] and mine[0]["owner"] == "alice"
    admin = stack.cli("schedule", "pause", "hers", "--user", "alice")
    assert admin.returncode == 0 and "paused" in admin.stdout
    everyone = json.loads(stack.cli("schedule", "list", "--user", "*", "--json").stdout)
    assert "hers" in {r["name"] for r in everyone}


async def test_raw_clients_cannot_write_schedules_or_fires(stack: Stack) -> None:
    """A user's publish to the schedule stream's subjects (a forged fire, a schedule message of
    their own aimed at someone else's fire subject) and an admin's are refused by the server;
    malformed management requests are answered with the reason."""
    bob = _user(stack, "bob")
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(
        stack.url, user_credentials=str(bob), error_cb=on_error, inbox_prefix=b"_INBOX_bob"
    )
    try:
        for subject in ("cronium.sched.fire.alice.hers", "cronium.sched.def.bob.mine"):
            await nc.publish(subject, b"{}", headers={"Nats-Schedule": "@every 1s"})
        await nc.flush()
        await asyncio.sleep(0.5)
        assert sum("permissions violation" in e.lower() for e in errors) == 2, errors
        for body in (b"not json", b'{"spec": {"name": "x"}}', b"[]", b'{"name": 5}'):
            msg = await nc.request("cronium.ctl.schedules.user.bob.add", body, timeout=10)
            reply = json.loads(msg.data)
            assert reply["ok"] is False and "malformed add request" in reply["error"], reply
        msg = await nc.request("cronium.ctl.schedules.user.bob.explode", b"{}", timeout=10)
        assert "unknown action" in json.loads(msg.data)["error"]
    finally:
        await nc.close()
    added = stack.cli("user", "add", "carol", "--role", "admin")  # a person who is an admin
    admin = Path(added.stdout.strip()) if added.returncode == 0 else stack.data / "x"
    assert admin.exists(), added.stderr
    errors.clear()
    nc = await nats.connect(
        stack.url, user_credentials=str(admin), error_cb=on_error, inbox_prefix=b"_INBOX_carol"
    )
    try:
        await nc.publish("cronium.sched.fire.alice.hers", b"{}")
        await nc.flush()
        await asyncio.sleep(0.5)
    finally:
        await nc.close()
    assert any("permissions violation" in e.lower() for e in errors), errors


def test_status_lists_the_scheduler(stack: Stack) -> None:
    out = stack.cli("status").stdout
    assert any(line.split()[:1] == ["scheduler"] and "healthy" in line for line in out.splitlines())


def test_overlap_queue_runs_each_fire_after_the_previous_one(stack: Stack) -> None:
    done = stack.cli(
        "schedule", "add", "queued", "--every", "1s", "--overlap", "queue",
        "--runtime", "bash", "-c", "sleep 2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    time.sleep(5)
    assert stack.cli("schedule", "pause", "queued").returncode == 0
    state = until(lambda: (s := show(stack, "queued"))["last_outcome"] != "running" and s, 60)
    fires = state["fires"]
    waited = [f for f in fires if f["queued"]]
    assert waited and any(f["run_id"] for f in waited), fires  # queued, then started
    rows = runs_of(stack, "queued", len([f for f in fires if f["run_id"]]))
    spans = [(_at(r["started_at"]), _at(r["ended_at"])) for r in rows]
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start, spans  # one after the other, never two at once


def test_a_one_shot_fires_once_and_a_removed_users_schedules_stop(stack: Stack) -> None:
    at = (datetime.now(UTC) + timedelta(seconds=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    done = stack.cli("schedule", "add", "once", "--at", at, "--runtime", "bash", "-c", "true")
    assert done.returncode == 0, done.stderr
    runs_of(stack, "once", 1)
    state = until(lambda: (s := show(stack, "once"))["state"] == "paused" and s)
    assert (state["runs"], state["reason"]) == (1, "fired once (--at)")
    resumed = stack.cli("schedule", "resume", "once")
    assert resumed.returncode == 2 and "that is past" in resumed.stderr

    erin = _user(stack, "erin")
    add = stack.cli(
        "schedule", "add", "hers", "--every", "1h", "--runtime", "bash", "-c", "true",
        "--creds", str(erin),
    )  # fmt: skip
    assert add.returncode == 0, add.stderr
    removed = stack.cli("user", "rm", "erin")
    assert removed.returncode == 0 and "paused erin's schedules: hers" in removed.stderr
    assert show(stack, "hers", "--user", "erin")["state"] == "paused"


def test_a_user_past_the_schedule_cap_is_refused_and_others_are_not(
    cronium_bin: str, tmp_path: Path
) -> None:
    """With limits.max_schedules_per_user 3: carol's fourth is refused with the fix; replacing
    one of hers still works; removing one makes room; dave is not counted against her."""
    with running_stack(
        cronium_bin, tmp_path / "capped", CRONIUM_LIMITS__MAX_SCHEDULES_PER_USER="3"
    ) as capped:
        carol, dave = _user(capped, "carol"), _user(capped, "dave")

        def add(name: str, creds: Path, *extra: str) -> Any:
            return capped.cli(
                "schedule", "add", name, "--every", "1h", "--runtime", "bash", "-c", "true",
                "--creds", str(creds), *extra,
            )  # fmt: skip

        for name in ("c1", "c2", "c3"):
            assert add(name, carol).returncode == 0
        over = add("c4", carol)
        assert over.returncode == 2 and "3 schedules" in over.stderr, over.stderr
        assert "schedule rm" in over.stderr
        assert add("c3", carol, "--replace").returncode == 0  # a change is not a new one
        assert add("d1", dave).returncode == 0  # his own count
        assert capped.cli("schedule", "rm", "c1", "--creds", str(carol)).returncode == 0
        assert add("c4", carol).returncode == 0
        assert add("c1", carol).returncode == 2  # full again: c2, c3, c4
        listed = json.loads(capped.cli("schedule", "list", "--json", "--creds", str(carol)).stdout)
        assert sorted(r["name"] for r in listed) == ["c2", "c3", "c4"]


async def _purge_events(stack: Stack, owner: str, *names: str) -> None:
    """Every event these schedules had, gone from CRONIUM_EXEC (as if they aged out)."""
    service = await nats.connect(
        stack.url, user_credentials=str(stack.data / "auth" / "service.creds")
    )
    try:
        js = service.jetstream()
        for name in names:
            subjects = f"cronium.exec.{owner}.{schedule_id(owner, name)}.>"
            await js.purge_stream("CRONIUM_EXEC", subject=subjects)
            left = await js.stream_info("CRONIUM_EXEC", subjects_filter=subjects)
            assert not left.state.subjects  # nothing of it is left in the stream
    finally:
        await service.close()


async def test_a_schedule_outlives_its_events_in_the_stream(stack: Stack) -> None:
    """CRONIUM_EXEC ages events out (30 days): simulated by purging every event a schedule
    had. A running one is still listed and shown with its counters (kept in its snapshot) and
    fires on; one never read since it was added is still there; one removed stays removed; a
    person admin can neither write nor purge the snapshot bucket."""
    add = stack.cli("schedule", "add", "aged", "--every", "2s", "--runtime", "bash", "-c", "true")
    assert add.returncode == 0, add.stderr

    def ran_once() -> dict[str, Any] | None:
        shown = show(stack, "aged")
        return shown if shown["successes"] >= 1 else None

    before = until(ran_once)
    owner = before["owner"]
    for name in ("quiet", "gone"):
        done = stack.cli("schedule", "add", name, "--every", "1h", "--runtime", "bash", "-c", "x")
        assert done.returncode == 0, done.stderr
    assert stack.cli("schedule", "rm", "gone").returncode == 0
    await _purge_events(stack, owner, "aged", "quiet", "gone")
    after = show(stack, "aged")
    assert after["state"] == "active" and after["runs"] >= before["runs"]
    assert after["successes"] >= before["successes"]
    assert show(stack, "quiet")["state"] == "active"  # added, never read, its events gone
    listed = {r["name"] for r in json.loads(stack.cli("schedule", "list", "--json").stdout)}
    assert {"aged", "quiet"} <= listed and "gone" not in listed
    until(lambda: show(stack, "aged")["runs"] > after["runs"])  # it fires on
    made = stack.cli("user", "add", "boss", "--role", "admin")
    assert made.returncode == 0 or "exists" in made.stderr, made.stderr
    boss = stack.data / "auth" / "users" / "boss.creds"
    admin = await nats.connect(stack.url, user_credentials=str(boss), inbox_prefix=b"_INBOX_boss")
    try:
        js = admin.jetstream()
        kv = await js.key_value("cronium_schedules")
        with pytest.raises(nats.errors.Error):
            await kv.put(f"{owner}.{after['schedule_id']}", b'{"forged": true}')
        with pytest.raises(nats.errors.Error):
            await js.purge_stream("KV_cronium_schedules")
    finally:
        await admin.close()
    assert show(stack, "aged")["runs"] >= after["runs"]  # untouched
    for name in ("aged", "quiet"):
        assert stack.cli("schedule", "rm", name).returncode == 0
    listed = {r["name"] for r in json.loads(stack.cli("schedule", "list", "--json").stdout)}
    assert not {"aged", "quiet", "gone"} & listed
    assert stack.cli("schedule", "show", "aged").returncode == 2
