"""The warehouse contract, parametrized over the backends: embedded chdb always; a ClickHouse
server through clickhouse-connect wherever ``CRONIUM_CLICKHOUSE_URL`` is set (DESIGN.md: these
machines have no modern ClickHouse server, so that half runs on machines that do).

Each test works in its own database, so a shared server is left as it was found."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cronium_bus.bus import Bus
from cronium_bus.codec import encode
from cronium_bus.events import (
    AnyEvent,
    ErrorInfo,
    Failed,
    LogChunk,
    Queued,
    Started,
    Succeeded,
    follow_up,
    make_terminal,
)
from cronium_bus.ids import new_id
from projections.ddl import TABLES
from projections.projector import Projector
from projections.queries import (
    HistoryFilter,
    aggregates,
    archived_logs,
    attempt_totals,
    history,
    run_time_histogram,
    verify_audit,
)
from projections.warehouse import ChdbWarehouse, ServerWarehouse, Warehouse
from tests.helpers import requested

SERVER_URL = os.environ.get("CRONIUM_CLICKHOUSE_URL")


# the server backend is one more parameter wherever a server is configured (DESIGN.md: these
# machines have none); chdb always runs
BACKENDS = ["chdb", "server"] if SERVER_URL else ["chdb"]


@pytest.fixture(params=BACKENDS)
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Warehouse]:
    if request.param == "server":
        assert SERVER_URL is not None
        wh: Warehouse = ServerWarehouse(SERVER_URL)
    else:
        wh = ChdbWarehouse(tmp_path / "warehouse")
    yield wh
    wh.close()


@pytest.fixture
def projector(bus: Bus, warehouse: Warehouse) -> Iterator[Projector]:
    db = new_id("contract").replace("-", "_")
    p = Projector(bus, warehouse, db=db)
    p.setup()
    yield p
    warehouse.command(f"DROP DATABASE IF EXISTS {db}")


def lifecycle(user: str, ok: bool, event_ref: str = "nightly") -> list[AnyEvent]:
    req = requested("print(1)", user=user, event_ref=event_ref)
    env = follow_up(req, "t")
    queued = Queued(**env, request=req.request, lane="cronium.jobs.container.normal")
    started = Started(**follow_up(req, "t"), runner="r")
    end = follow_up(req, "t")
    terminal = (
        make_terminal(Succeeded, end, runner="r", exit_code=0)
        if ok
        else make_terminal(
            Failed, end, runner="r", exit_code=2, error=ErrorInfo(kind="nonzero_exit", message="2")
        )
    )
    return [req, queued, started, terminal]


def project(p: Projector, events: list[AnyEvent], first_seq: int = 1) -> None:
    p.project_exec([(first_seq + i, e, encode(e)) for i, e in enumerate(events)])


def test_setup_is_idempotent_and_creates_tables_and_views(projector: Projector) -> None:
    projector.setup()  # again: nothing changes, nothing fails
    names = {
        r["name"]
        for r in projector.wh.query(
            "SELECT name FROM system.tables WHERE database = {db:String}", {"db": projector.db}
        )
    }
    assert set(TABLES) | {"runs_per_hour", "durations_by_event"} <= names


def test_history_audit_and_aggregates_agree_and_survive_redelivery(projector: Projector) -> None:
    events = lifecycle("alice", True) + lifecycle("bob", False) + lifecycle("alice", False)
    project(projector, events)
    db = projector.db
    rows = history(projector.wh, HistoryFilter(limit=100), db=db)
    assert sorted((r["user"], r["status"]) for r in rows) == [
        ("alice", "failed"),
        ("alice", "succeeded"),
        ("bob", "failed"),
    ]
    failed = history(projector.wh, HistoryFilter(status="failed", user="bob"), db=db)
    assert [r["exit_code"] for r in failed] == [2]
    assert failed[0]["error_kind"] == "nonzero_exit" and failed[0]["event_ref"] == "nightly"
    stats = aggregates(projector.wh, "2000-01-01", db=db)
    assert sum(int(r["runs"]) for r in stats["runs_per_hour"]) == 3
    assert [(r["event_ref"], int(r["runs"])) for r in stats["durations_by_event"]] == [
        ("nightly", 3)
    ]
    verified = verify_audit(projector.wh, db=db)
    assert verified["ok"] and verified["rows"] == len(events)
    totals = attempt_totals(projector.wh, db=db)  # what `cronium metrics` exports
    assert [(r["status"], int(r["attempts"])) for r in totals] == [("failed", 2), ("succeeded", 1)]
    histogram = run_time_histogram(projector.wh, db=db)
    assert [(h["runtime"], h["runs"]) for h in histogram] == [("python", 3)]
    assert histogram[0]["buckets"] == sorted(histogram[0]["buckets"])  # cumulative
    assert histogram[0]["buckets"][-1] <= 3

    project(projector, events)  # the whole batch redelivered
    assert history(projector.wh, HistoryFilter(limit=100), db=db) == rows
    assert aggregates(projector.wh, "2000-01-01", db=db) == stats
    assert verify_audit(projector.wh, db=db) == verified
    assert attempt_totals(projector.wh, db=db) == totals
    assert run_time_histogram(projector.wh, db=db) == histogram


def test_log_lines_round_trip_exactly(projector: Projector) -> None:
    """Quotes, backslashes, unicode, control characters, empty and 16 KiB lines survive."""
    req = requested("print(1)")
    lines = ["", 'it\'s "quoted"', "back\\slash \\n", "ünïcødé ✓ 日本", "\ttab\x01ctl", "x" * 16384]
    projector.project_logs(
        [LogChunk(**follow_up(req, "t"), stream="stderr", first_seq=0, lines=tuple(lines))]
    )
    got = archived_logs(projector.wh, req.execution_id, db=projector.db)
    assert [r["line"] for r in got] == lines
    assert [int(r["seq"]) for r in got] == list(range(len(lines)))
    assert {r["stream"] for r in got} == {"stderr"}


def test_hostile_filter_values_are_parameters_not_sql(projector: Projector) -> None:
    project(projector, lifecycle("carol", True))
    for value in ("' OR 1=1 --", "carol' --", "\\'; DROP TABLE x; --", "{user:String}"):
        assert history(projector.wh, HistoryFilter(user=value), db=projector.db) == []
    ids = ["it's", "a\\b", "]"]
    assert projector.wh.query(
        "SELECT count() AS n FROM " + projector.db + ".executions WHERE execution_id IN "
        "{ids:Array(String)}",
        {"ids": ids},
    ) == [{"n": 0}]


def test_exchange_swaps_every_table_at_once(projector: Projector, bus: Bus) -> None:
    """The swap replay relies on: EXCHANGE TABLES over all four pairs in one statement."""
    project(projector, lifecycle("dave", True))
    other = Projector(bus, projector.wh, db=projector.db + "_other")
    other.setup()
    try:
        project(other, lifecycle("erin", True) + lifecycle("erin", False))
        pairs = ", ".join(f"{projector.db}.{t} AND {other.db}.{t}" for t in TABLES)
        projector.wh.command(f"EXCHANGE TABLES {pairs}")
        users = [r["user"] for r in history(projector.wh, HistoryFilter(), db=projector.db)]
        assert users == ["erin", "erin"]
        assert verify_audit(projector.wh, db=projector.db)["rows"] == 8
    finally:
        projector.wh.command(f"DROP DATABASE IF EXISTS {other.db}")


def test_changing_the_log_retention_alters_the_archive(projector: Projector, bus: Bus) -> None:
    def ttl() -> str:
        return str(
            projector.wh.query(
                "SELECT create_table_query AS q FROM system.tables "
                "WHERE database = {db:String} AND name = 'log_archive'",
                {"db": projector.db},
            )[0]["q"]
        )

    assert "toIntervalSecond(7776000)" in ttl()  # 90 days, the default
    bus.settings = bus.settings.model_copy(
        update={"warehouse": bus.settings.warehouse.model_copy(update={"log_retention": 7 * 86400})}
    )
    Projector(bus, projector.wh, db=projector.db).setup()
    assert "toIntervalSecond(604800)" in ttl()
