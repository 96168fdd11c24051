"""Queries users run, the same SQL on both backends."""

from __future__ import annotations

from typing import Any, Final

import msgspec

from projections.ddl import DATABASE
from projections.rows import GENESIS, chain_hash

MAX_LIMIT: Final = 10_000


class HistoryFilter(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Filters of ``cronium history`` (all optional)."""

    status: str | None = None
    user: str | None = None
    since: str | None = None
    execution_id: str | None = None
    workflow_id: str | None = None
    workflows: bool = False
    """List workflows (the ``workflows`` table) instead of executions."""
    limit: int = 50


def workflow_history(wh: Any, f: HistoryFilter, db: str = DATABASE) -> list[dict[str, Any]]:
    """Latest row of each workflow, newest first."""
    conditions = {
        "wid": (f.workflow_id, "workflow_id = {wid:String}"),
        "status": (f.status, "status = {status:String}"),
        "user": (f.user, "user = {user:String}"),
        "since": (f.since, "requested_at >= parseDateTime64BestEffort({since:String}, 6, 'UTC')"),
    }
    where = ["1", *(sql for value, sql in conditions.values() if value)]
    params: dict[str, Any] = {name: value for name, (value, _) in conditions.items() if value}
    params["limit"] = max(1, min(f.limit, MAX_LIMIT))
    rows: list[dict[str, Any]] = wh.query(
        f"SELECT * EXCEPT version FROM {db}.workflows FINAL WHERE {' AND '.join(where)} "
        "ORDER BY requested_at DESC, workflow_id LIMIT {limit:UInt32}",
        params,
    )
    for r in rows:
        r["node_states"] = msgspec.json.decode(r["node_states"])
    return rows


def history(wh: Any, f: HistoryFilter, db: str = DATABASE) -> list[dict[str, Any]]:
    """Latest row of each (execution, attempt), newest first (or workflows: ``f.workflows``)."""
    if f.workflows:
        return workflow_history(wh, f, db)
    conditions = {
        "wid": (f.workflow_id, "workflow_id = {wid:String}"),
        "eid": (f.execution_id, "execution_id = {eid:String}"),
        "status": (f.status, "status = {status:String}"),
        "user": (f.user, "user = {user:String}"),
        "since": (f.since, "requested_at >= parseDateTime64BestEffort({since:String}, 6, 'UTC')"),
    }
    where = ["1", *(sql for value, sql in conditions.values() if value)]
    params: dict[str, Any] = {name: value for name, (value, _) in conditions.items() if value}
    params["limit"] = max(1, min(f.limit, MAX_LIMIT))
    sql = (
        f"SELECT * EXCEPT version FROM {db}.executions FINAL WHERE {' AND '.join(where)} "
        "ORDER BY requested_at DESC, execution_id, attempt LIMIT {limit:UInt32}"
    )
    result: list[dict[str, Any]] = wh.query(sql, params)
    return result


def archived_logs(
    wh: Any, execution_id: str, db: str = DATABASE, *, owner: str | None = None
) -> list[dict[str, Any]]:
    """Every archived line of an execution, per attempt and stream in sequence order; with
    ``owner``, nothing unless the execution is that user's."""
    if owner is not None:
        owned = wh.query(
            f"SELECT count() AS n FROM {db}.executions FINAL "
            "WHERE execution_id = {eid:String} AND user = {owner:String}",
            {"eid": execution_id, "owner": owner},
        )
        if not owned or not int(owned[0]["n"]):
            return []
    result: list[dict[str, Any]] = wh.query(
        f"SELECT attempt, stream, seq, source, line FROM {db}.log_archive FINAL "
        "WHERE execution_id = {eid:String} ORDER BY attempt, time, stream, seq",
        {"eid": execution_id},
    )
    return result


def audit_rows(wh: Any, since: str, until: str, db: str = DATABASE) -> list[dict[str, Any]]:
    """Audit rows between two times, in chain order."""
    result: list[dict[str, Any]] = wh.query(
        f"SELECT * FROM {db}.audit WHERE time >= parseDateTime64BestEffort({{since:String}}, 6, "
        "'UTC') AND time < parseDateTime64BestEffort({until:String}, 6, 'UTC') ORDER BY seq",
        {"since": since, "until": until},
    )
    return result


def verify_audit(wh: Any, db: str = DATABASE) -> dict[str, Any]:
    """Recompute the hash chain; name the first row that was changed or whose predecessor went
    missing."""
    rows = wh.query(f"SELECT * FROM {db}.audit ORDER BY seq")
    prev = GENESIS
    for row in rows:
        if row["prev_hash"] != prev:
            return {
                "ok": False,
                "rows": len(rows),
                "seq": int(row["seq"]),
                "reason": f"row seq {row['seq']} does not follow the row before it "
                "(a row was removed or reordered)",
            }
        if chain_hash(prev, row) != row["hash"]:
            return {
                "ok": False,
                "rows": len(rows),
                "seq": int(row["seq"]),
                "reason": f"row seq {row['seq']} ({row['action']} of {row['execution_id']}) "
                "was changed after it was written",
            }
        prev = row["hash"]
    return {"ok": True, "rows": len(rows), "seq": None, "reason": ""}


def audit_gaps(wh: Any, lo: int, hi: int, db: str = DATABASE) -> list[tuple[int, int]]:
    """Ranges ``(first, last)`` of stream sequences in ``[lo, hi]`` with no audit row, found by
    ClickHouse (a window over the sorted sequences), not by reading every row here."""
    if hi < lo:
        return []
    rows = wh.query(
        f"""SELECT prev + 1 AS first, seq - 1 AS last FROM (
                SELECT seq, lagInFrame(seq, 1, toUInt64({{lo:UInt64}} - 1))
                       OVER (ORDER BY seq ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS prev
                FROM (SELECT DISTINCT seq FROM {db}.audit
                      WHERE seq BETWEEN {{lo:UInt64}} AND {{hi:UInt64}})
            ) WHERE seq > prev + 1
            UNION ALL
            SELECT if(count() = 0, toUInt64({{lo:UInt64}} - 1), max(seq)) + 1 AS first,
                   toUInt64({{hi:UInt64}}) AS last
            FROM {db}.audit WHERE seq BETWEEN {{lo:UInt64}} AND {{hi:UInt64}}
            HAVING first <= last
            ORDER BY first""",
        {"lo": lo, "hi": hi},
    )
    return [(int(r["first"]), int(r["last"])) for r in rows]


def aggregates(wh: Any, since: str, db: str = DATABASE) -> dict[str, Any]:
    """Dashboard figures from the views: runs per status per hour since ``since``, and run-time
    percentiles per event (all retained history)."""
    hours: list[dict[str, Any]] = wh.query(
        f"SELECT hour, status, runs FROM {db}.runs_per_hour "
        "WHERE hour >= toStartOfHour(parseDateTime64BestEffort({since:String}, 6, 'UTC')) "
        "ORDER BY hour, status",
        {"since": since},
    )
    events: list[dict[str, Any]] = wh.query(
        f"SELECT * FROM {db}.durations_by_event ORDER BY runs DESC, event_ref, runtime LIMIT 1000"
    )
    workflows: list[dict[str, Any]] = wh.query(
        f"SELECT name, status, count() AS runs, "
        "quantile(0.5)(dateDiff('millisecond', requested_at, ended_at)) AS p50_ms "
        f"FROM {db}.workflows FINAL "
        "WHERE requested_at >= parseDateTime64BestEffort({since:String}, 6, 'UTC') "
        "GROUP BY name, status ORDER BY name, status LIMIT 1000",
        {"since": since},
    )
    return {"runs_per_hour": hours, "durations_by_event": events, "workflows": workflows}


RUN_TIME_BUCKETS_S: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
"""Upper bounds of the run-time histogram (seconds); +Inf is the count."""


def attempt_totals(wh: Any, db: str = DATABASE) -> list[dict[str, Any]]:
    """Attempts by current status over all retained history (for the metrics exporter)."""
    rows: list[dict[str, Any]] = wh.query(
        f"SELECT status, count() AS attempts FROM {db}.executions FINAL "
        "GROUP BY status ORDER BY status"
    )
    return rows


def run_time_histogram(wh: Any, db: str = DATABASE) -> list[dict[str, Any]]:
    """Per runtime, attempts that ran to an end: their count, summed run time (s) and the count
    at or under each of :data:`RUN_TIME_BUCKETS_S` (cumulative, as Prometheus wants it)."""
    buckets = ", ".join(
        f"countIf(run_ms <= {bound * 1000:.0f}) AS le_{i}"
        for i, bound in enumerate(RUN_TIME_BUCKETS_S)
    )
    rows: list[dict[str, Any]] = wh.query(
        f"SELECT runtime, count() AS runs, sum(run_ms) / 1000 AS sum_s, {buckets} "
        f"FROM {db}.executions FINAL WHERE started_at IS NOT NULL AND ended_at IS NOT NULL "
        "GROUP BY runtime ORDER BY runtime"
    )
    return [
        {
            "runtime": r["runtime"],
            "runs": int(r["runs"]),
            "sum_s": float(r["sum_s"]),
            "buckets": [int(r[f"le_{i}"]) for i in range(len(RUN_TIME_BUCKETS_S))],
        }
        for r in rows
    ]


def archive_size(wh: Any, db: str = DATABASE) -> dict[str, Any]:
    """The log archive on disk: rows (before merges remove redelivered copies), compressed and
    uncompressed bytes."""
    rows: list[dict[str, Any]] = wh.query(
        "SELECT sum(rows) AS lines, sum(data_compressed_bytes) AS compressed_bytes, "
        "sum(data_uncompressed_bytes) AS uncompressed_bytes FROM system.parts "
        "WHERE database = {db:String} AND table = 'log_archive' AND active",
        {"db": db},
    )
    return rows[0]


def user_aggregates(wh: Any, since: str, user: str, db: str = DATABASE) -> dict[str, Any]:
    """The dashboard figures of one user's own executions: runs per status per hour since
    ``since``, and run-time percentiles per event (``cronium.query.user.<name>.stats``)."""
    params = {"since": since, "user": user}
    hours: list[dict[str, Any]] = wh.query(
        f"SELECT toStartOfHour(requested_at) AS hour, status, count() AS runs "
        f"FROM {db}.executions FINAL WHERE user = {{user:String}} AND requested_at IS NOT NULL "
        "AND requested_at >= toStartOfHour(parseDateTime64BestEffort({since:String}, 6, 'UTC')) "
        "GROUP BY hour, status ORDER BY hour, status",
        params,
    )
    events: list[dict[str, Any]] = wh.query(
        f"SELECT event_ref, runtime, count() AS runs, quantile(0.5)(run_ms) AS p50_ms, "
        "quantile(0.95)(run_ms) AS p95_ms, max(run_ms) AS max_ms "
        f"FROM {db}.executions FINAL WHERE user = {{user:String}} AND ended_at IS NOT NULL "
        "GROUP BY event_ref, runtime ORDER BY runs DESC, event_ref, runtime LIMIT 100",
        params,
    )
    return {"runs_per_hour": hours, "durations_by_event": events}
