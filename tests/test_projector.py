"""The projector against a real nats-server and the real ClickHouse engine (chdb)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import nats.js.errors
import pytest

from cronium_bus.bus import Bus
from cronium_bus.events import (
    ErrorInfo,
    Failed,
    LogChunk,
    Queued,
    Rejected,
    RetryScheduled,
    Started,
    Succeeded,
    TimedOut,
    follow_up,
    make_terminal,
)
from cronium_bus.history import execution_state
from cronium_bus.ids import new_id
from cronium_bus.lifecycle import Stopper
from projections.projector import Projector
from projections.queries import (
    HistoryFilter,
    aggregates,
    archived_logs,
    history,
    verify_audit,
)
from projections.replay import Replay, ReplayError
from projections.warehouse import ChdbWarehouse
from tests.helpers import requested


class Running:
    def __init__(self, bus: Bus, path: Path) -> None:
        self.bus, self.path = bus, path
        self.wh = ChdbWarehouse(path)
        self.projector = Projector(bus, self.wh)
        self.projector.setup()
        self.stopper = Stopper()
        self.task = asyncio.create_task(self.projector.run(self.stopper))

    async def stop(self) -> None:
        self.stopper.stop()
        await asyncio.wait_for(self.task, 30)

    async def settle(self, want_rows: int, timeout: float = 60) -> None:
        """Wait until the executions table has ``want_rows`` rows."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.task.done():
                self.task.result()  # surface the projector's failure
            async with self.projector._lock:
                rows = self.wh.query("SELECT count() AS n FROM cronium.executions FINAL")
            if rows and int(rows[0]["n"]) >= want_rows:
                await asyncio.sleep(0.5)  # let trailing batches land
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"projection did not reach {want_rows} rows")

    async def caught_up(self, timeout: float = 60) -> None:
        """Wait until both durable consumers have nothing pending or unacknowledged."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            infos = [
                await self.bus.js.consumer_info(stream, durable)
                for stream, durable in (
                    ("CRONIUM_EXEC", "projector-exec"),
                    ("CRONIUM_LOGS", "projector-logs"),
                )
            ]
            if all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos):
                return
            await asyncio.sleep(0.1)
        raise AssertionError("projector did not catch up with the streams")


@pytest.fixture
async def projector(bus: Bus, tmp_path: Path) -> AsyncIterator[Running]:
    # a fresh warehouse per test: projected from the start of the (module-wide) streams
    for stream, durable in (("CRONIUM_EXEC", "projector-exec"), ("CRONIUM_LOGS", "projector-logs")):
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await bus.js.delete_consumer(stream, durable)
    running = Running(bus, tmp_path / "warehouse")
    yield running
    if not running.task.done():
        await running.stop()
    running.wh.close()


async def publish_lifecycle(bus: Bus, kind: str, n: int, execution_id: str = "") -> str:
    """Publish the events a dispatcher and runner would for one execution."""
    req = requested(f"print({n})", user=f"user{n % 5}", event_ref=f"event{n % 3}")
    if execution_id:
        req = msgspec.structs.replace(req, execution_id=execution_id, correlation_id=execution_id)
    await bus.publish(req)
    if kind == "rejected":
        await bus.publish(
            Rejected(**follow_up(req, "t"), error=ErrorInfo(kind="validation", message="too big"))
        )
        return req.execution_id
    attempts = 2 if kind == "retried" else 1
    for attempt in range(1, attempts + 1):
        await bus.publish(
            Queued(
                **follow_up(req, "t", attempt=attempt),
                request=req.request,
                lane="cronium.jobs.container.normal",
            )
        )
        await bus.publish(Started(**follow_up(req, "t", attempt=attempt), runner="r"))
        env = follow_up(req, "t", attempt=attempt)
        if kind == "retried" and attempt == 1:
            await bus.publish(
                make_terminal(
                    Failed,
                    env,
                    runner="r",
                    exit_code=1,
                    error=ErrorInfo(kind="nonzero_exit", message="exit 1"),
                )
            )
            await bus.publish(
                RetryScheduled(
                    **follow_up(req, "t"),
                    next_attempt=2,
                    at=env["time"],
                    reason=ErrorInfo(kind="nonzero_exit", message="exit 1"),
                )
            )
        elif kind in ("succeeded", "retried"):
            await bus.publish(make_terminal(Succeeded, env, runner="r", exit_code=0))
        elif kind == "failed":
            await bus.publish(
                make_terminal(
                    Failed,
                    env,
                    runner="r",
                    exit_code=3,
                    error=ErrorInfo(kind="nonzero_exit", message="exit 3"),
                )
            )
        else:
            await bus.publish(
                make_terminal(
                    TimedOut, env, runner="r", error=ErrorInfo(kind="timeout", message="too slow")
                )
            )
    return req.execution_id


async def test_history_agrees_with_the_stream_and_survives_redelivery(
    bus: Bus, projector: Running, tmp_path: Path
) -> None:
    """200 executions with mixed outcomes: history's final status of each equals the fold of
    its events; redelivering every event again changes no query result."""
    rng = random.Random(7)
    kinds = ["succeeded", "failed", "timed_out", "rejected", "retried"]
    ids = {await publish_lifecycle(bus, rng.choice(kinds), n): n for n in range(200)}
    states = {i: await execution_state(bus.js, i, max_bytes=1 << 20) for i in ids}
    want_rows = sum(len(s.attempts) or 1 for s in states.values() if s)
    await projector.settle(want_rows)
    async with projector.projector._lock:
        rows = history(projector.wh, HistoryFilter(limit=10_000))
        verified = verify_audit(projector.wh)
    latest = {}
    for r in rows:
        if r["attempt"] >= latest.get(r["execution_id"], {"attempt": 0})["attempt"]:
            latest[r["execution_id"]] = r
    assert set(latest) == set(ids)
    for execution_id, state in states.items():
        assert state is not None
        expected = "retry_scheduled" if state.status == "retry_scheduled" else state.status
        assert latest[execution_id]["status"] == expected, execution_id
    assert verified["ok"], verified

    # redeliver everything: drop the durable consumers, start a fresh projector on the same dir
    await projector.stop()
    projector.wh.close()
    for durable in ("projector-exec", "projector-logs"):
        await bus.js.delete_consumer(
            "CRONIUM_EXEC" if durable.endswith("exec") else "CRONIUM_LOGS", durable
        )
    again = Running(bus, projector.path)
    try:
        await asyncio.sleep(3)
        await again.settle(want_rows)
        async with again.projector._lock:
            assert history(again.wh, HistoryFilter(limit=10_000)) == rows
            total = again.wh.query("SELECT count() AS n FROM cronium.executions FINAL")
            audit = verify_audit(again.wh)
        assert int(total[0]["n"]) == want_rows
        assert audit["ok"] and audit["rows"] == verified["rows"]
    finally:
        await again.stop()
        again.wh.close()


async def test_history_filters(bus: Bus, projector: Running) -> None:
    ids = [
        await publish_lifecycle(bus, k, n)
        for n, k in enumerate(["succeeded", "failed", "rejected", "succeeded"])
    ]
    await projector.settle(4)
    await projector.caught_up()
    async with projector.projector._lock:
        failed = [
            r
            for r in history(projector.wh, HistoryFilter(status="failed", limit=10_000))
            if r["execution_id"] in ids
        ]
        one = history(projector.wh, HistoryFilter(execution_id=ids[3]))
        limited = history(projector.wh, HistoryFilter(limit=2))
    assert [r["execution_id"] for r in failed] == [ids[1]]
    assert one[0]["status"] == "succeeded" and one[0]["user"] == "user3"
    assert len(limited) == 2


async def test_editing_or_removing_an_audit_row_is_detected(bus: Bus, projector: Running) -> None:
    """`audit verify` fails and names the row that was changed, or the one after a removal."""
    for n in range(5):
        await publish_lifecycle(bus, "succeeded", n)
    await projector.settle(5)
    await projector.stop()
    wh = projector.wh
    assert verify_audit(wh)["ok"]
    seqs = [int(r["seq"]) for r in wh.query("SELECT seq FROM cronium.audit ORDER BY seq")]
    target = seqs[7]
    wh.command(
        f"ALTER TABLE cronium.audit UPDATE detail = '{{}}' WHERE seq = {target} "
        "SETTINGS mutations_sync = 1"
    )
    result = verify_audit(wh)
    assert not result["ok"] and result["seq"] == target and "changed" in result["reason"]
    wh.command(f"ALTER TABLE cronium.audit DELETE WHERE seq = {target} SETTINGS mutations_sync = 1")
    result = verify_audit(wh)
    assert not result["ok"] and result["seq"] == seqs[8] and "removed" in result["reason"]


async def test_log_archive_is_gapless(bus: Bus, projector: Running) -> None:
    """20,000 lines in chunks land in the archive with complete sequence numbers."""
    req = requested("print(1)")
    await bus.publish(req)
    lines = [
        f"2026-11-27T12:00:{i % 60:02d}Z INFO worker[{i % 7}] processed item {i} in "
        f"{(i * 37) % 1000} ms"
        for i in range(20_000)
    ]
    for first in range(0, len(lines), 500):
        await bus.publish(
            LogChunk(
                **follow_up(req, "t"),
                stream="stdout",
                first_seq=first,
                lines=tuple(lines[first : first + 500]),
            )
        )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    archived: list[dict[str, object]] = []
    while loop.time() < deadline:
        async with projector.projector._lock:
            archived = archived_logs(projector.wh, req.execution_id)
        if len(archived) >= len(lines):
            break
        await asyncio.sleep(0.2)
    assert [int(r["seq"]) for r in archived] == list(range(len(lines)))  # type: ignore[call-overload]
    assert [r["line"] for r in archived] == lines


async def publish_logs(bus: Bus, execution_id: str, lines: int, chunk: int = 500) -> None:
    """Log chunks of ``lines`` numbered lines for an execution (as a runner's log pump would)."""
    req = requested("print(1)")
    env = {**follow_up(req, "t"), "execution_id": execution_id, "correlation_id": execution_id}
    for first in range(0, lines, chunk):
        await bus.publish(
            LogChunk(
                **env,
                stream="stdout",
                first_seq=first,
                lines=tuple(f"line {i}" for i in range(first, min(first + chunk, lines))),
            )
        )


def snapshot(running: Running) -> dict[str, object]:
    """Every query users run, plus the raw audit rows (for identity after a replay)."""
    wh = running.wh
    ids = [
        r["execution_id"] for r in wh.query("SELECT DISTINCT execution_id FROM cronium.executions")
    ]
    return {
        "history": history(wh, HistoryFilter(limit=10_000)),
        "audit": wh.query("SELECT * FROM cronium.audit ORDER BY seq"),
        "verify": verify_audit(wh),
        "logs": {i: archived_logs(wh, i) for i in sorted(ids)},
        "stats": aggregates(wh, "2000-01-01"),
        "raw": wh.query("SELECT count() AS n FROM cronium.events_raw FINAL"),
    }


async def test_aggregates_count_what_history_lists(bus: Bus, projector: Running) -> None:
    """runs_per_hour agrees with the executions rows; durations are per event_ref."""
    for n, kind in enumerate(["succeeded", "failed", "succeeded", "timed_out", "rejected"]):
        await publish_lifecycle(bus, kind, n)
    await projector.settle(5)
    await projector.caught_up()
    async with projector.projector._lock:
        rows = history(projector.wh, HistoryFilter(limit=10_000))
        stats = aggregates(projector.wh, "2000-01-01")
    per_status: dict[str, int] = {}
    for r in rows:
        per_status[r["status"]] = per_status.get(r["status"], 0) + 1
    counted: dict[str, int] = {}
    for r in stats["runs_per_hour"]:
        counted[r["status"]] = counted.get(r["status"], 0) + int(r["runs"])
    assert counted == per_status
    events = {r["event_ref"]: int(r["runs"]) for r in stats["durations_by_event"]}
    ended = [r for r in rows if r["ended_at"] is not None]
    assert sum(events.values()) == len(ended) and set(events) <= {"event0", "event1", "event2"}


async def test_replay_rebuilds_identical_projections_and_swaps_atomically(
    bus: Bus, projector: Running
) -> None:
    """A replay on a populated warehouse yields identical query results; events published
    while it runs are not lost; progress is reported; a second replay changes nothing."""
    rng = random.Random(11)
    kinds = ["succeeded", "failed", "timed_out", "rejected", "retried"]
    ids = [await publish_lifecycle(bus, rng.choice(kinds), n) for n in range(60)]
    for execution_id in ids[:3]:
        await publish_logs(bus, execution_id, 1200)
    await projector.settle(1)
    await projector.caught_up()
    async with projector.projector._lock:
        before = snapshot(projector)
    assert before["verify"]["ok"]  # type: ignore[index]

    reports: list[dict[str, object]] = []

    async def report(p: dict[str, object]) -> None:
        reports.append(p)

    result = await Replay(projector.projector, projector.projector._lock, report).run()
    async with projector.projector._lock:
        after = snapshot(projector)
        staging = projector.wh.query("SELECT name FROM system.databases WHERE name LIKE '%replay%'")
    assert after == before
    assert staging == []
    assert int(result["executions"]) >= len(ids) and int(result["log_chunks"]) >= 9
    phases = {p["phase"] for p in reports}
    assert {"carry over archived log lines", "swap"} <= phases

    # a replay while events keep arriving: nothing published meanwhile is lost
    later: list[str] = []

    async def publish_more() -> None:
        for n in range(100, 120):
            later.append(await publish_lifecycle(bus, "succeeded", n))

    await asyncio.gather(
        Replay(projector.projector, projector.projector._lock, report).run(), publish_more()
    )
    await projector.caught_up()
    async with projector.projector._lock:
        rows = history(projector.wh, HistoryFilter(limit=10_000))
        assert verify_audit(projector.wh)["ok"]
    statuses = {r["execution_id"]: r["status"] for r in rows}
    assert all(statuses[i] == "succeeded" for i in later)


async def test_replay_refuses_when_events_aged_out(bus: Bus, projector: Running) -> None:
    """Once the exec stream no longer starts at 1, replay is refused unless forced."""
    for n in range(4):
        await publish_lifecycle(bus, "succeeded", n)
    await projector.settle(4)
    await bus.js.purge_stream("CRONIUM_EXEC", keep=10)

    async def report(_p: dict[str, object]) -> None:
        return None

    with pytest.raises(ReplayError, match="aged out"):
        await Replay(projector.projector, projector.projector._lock, report).run()
    result = await Replay(projector.projector, projector.projector._lock, report).run(force=True)
    assert int(result["events"]) == 10


async def test_a_message_that_cannot_be_stored_is_dead_lettered_alone(
    bus: Bus, projector: Running
) -> None:
    """When storing a batch fails while the warehouse answers (here: the warehouse refuses the
    rows of one execution), the batch is projected message by message: the poison's messages
    are dead-lettered with the reason, every other execution is in history and in an intact
    audit, and the projector stays up."""
    real = projector.projector.project_exec
    poison = new_id("ex")  # the fault is in place before anything is published

    def refuse_poison(batch: list[tuple[int, Any, bytes]], *, refold: bool = True) -> None:
        if any(event.execution_id == poison for _, event, _ in batch):
            raise ValueError("the warehouse refused these rows")
        real(batch, refold=refold)

    projector.projector.project_exec = refuse_poison  # type: ignore[method-assign]
    ids = [await publish_lifecycle(bus, "succeeded", n) for n in range(3)]
    await publish_lifecycle(bus, "failed", 3, execution_id=poison)
    ids += [await publish_lifecycle(bus, "succeeded", n) for n in range(4, 7)]
    await projector.settle(len(ids))
    await projector.caught_up()
    assert not projector.task.done()
    async with projector.projector._lock:
        rows = history(projector.wh, HistoryFilter(limit=1000))
        audit = verify_audit(projector.wh)
    listed = {r["execution_id"] for r in rows}
    assert set(ids) <= listed and poison not in listed
    assert audit["ok"], audit
    dead = await bus.js.stream_info("CRONIUM_DLQ", subjects_filter=">")
    assert dead.state.messages == 4  # the poison's requested, queued, started and failed
    last = await bus.js.get_msg("CRONIUM_DLQ", subject="cronium.dlq.projector-exec")
    assert last.headers is not None
    assert "the warehouse refused these rows" in last.headers["Cronium-Reason"]
    from projections.completeness import unaudited
    from projections.queries import audit_gaps

    async def gaps(lo: int, hi: int) -> list[tuple[int, int]]:
        async with projector.projector._lock:
            return audit_gaps(projector.wh, lo, hi)

    # dead-lettered with a reason is accounted for: nothing is silently missing
    assert await unaudited(bus.js, gaps, max_bytes=1 << 20) == ([], True)


async def test_audit_completeness_names_an_event_missing_at_the_tail(
    bus: Bus, projector: Running
) -> None:
    """The hash chain cannot see rows cut off its end; the completeness check can: every event
    the projector acknowledged has an audit row, and a removed last row is named by its stream
    sequence and execution."""
    from projections.completeness import unaudited
    from projections.queries import audit_gaps

    ids = [await publish_lifecycle(bus, "succeeded", n) for n in range(3)]
    await projector.settle(len(ids))
    await projector.caught_up()

    async def gaps(lo: int, hi: int) -> list[tuple[int, int]]:
        async with projector.projector._lock:
            return audit_gaps(projector.wh, lo, hi)

    assert await unaudited(bus.js, gaps, max_bytes=1 << 20) == ([], True)
    async with projector.projector._lock:
        last = projector.wh.query("SELECT max(seq) AS s FROM cronium.audit")[0]["s"]
        projector.wh.command(
            f"ALTER TABLE cronium.audit DELETE WHERE seq = {int(last)} SETTINGS mutations_sync = 1"
        )
        assert verify_audit(projector.wh)["ok"]  # the chain alone says intact
    missing, complete = await unaudited(bus.js, gaps, max_bytes=1 << 20)
    assert complete and [seq for seq, _ in missing] == [int(last)]
    assert missing[0][1] == ids[-1]


async def test_stored_events_come_in_pages_as_small_as_asked(bus: Bus) -> None:
    """A reader asks for pages of at most max_bytes (a browser decodes each between frames):
    page after page, every chunk exactly once, in order; a bound outside 64 KiB..8 MiB is
    refused by the query's type."""
    from projections.reads import MAX_REPLY_BYTES, EventsQuery, stored_events

    execution_id = new_id("ex")
    await publish_logs(bus, execution_id, 20_000, chunk=200)
    small = 64 * 1024
    firsts: list[int] = []
    after, pages = 0, 0
    while pages < 1000:  # bounded: 100 chunks need far fewer pages
        pages += 1
        page = await stored_events(
            bus,
            EventsQuery(execution_id=execution_id, kind="logs", after=after, max_bytes=small),
            "*",
        )
        sizes = [len(m["data"]) for m in page["messages"]]
        assert sum(sizes[:-1]) <= small  # the last message may cross the bound, never two
        firsts += [
            msgspec.json.decode(base64.b64decode(m["data"]))["first_seq"] for m in page["messages"]
        ]
        if page["complete"]:
            break
        assert page["last"] > after
        after = page["last"]
    assert firsts == list(range(0, 20_000, 200)) and pages > 3
    whole = await stored_events(bus, EventsQuery(execution_id=execution_id, kind="logs"), "*")
    assert whole["complete"] and len(whole["messages"]) == 100
    for bound in (0, small - 1, MAX_REPLY_BYTES + 1, "1 MiB"):
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(
                msgspec.json.encode({"execution_id": execution_id, "max_bytes": bound}),
                type=EventsQuery,
            )
