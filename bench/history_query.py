"""How fast the warehouse answers: one execution's history, the dashboard aggregates and the
warehouse part of a metrics scrape (attempts by status, run-time histogram) among N
executions, against a baseline measured in the same run — the same rows in a plain table
without a sort key (the seed's "history queries lack indexes"), queried with the same SQL minus
``FINAL`` (a plain table has nothing to deduplicate, which only favours the baseline). Both are
measured right after the inserts (many parts, merges in flight) and once merged (``OPTIMIZE
FINAL``, where background merges bring a table between bursts of inserts).

Run: .venv/bin/python -m bench.history_query [--executions N] [--lookups K]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from projections.ddl import statements
from projections.queries import (
    HistoryFilter,
    aggregates,
    attempt_totals,
    history,
    run_time_histogram,
)
from projections.warehouse import ChdbWarehouse

_GENERATED = """
    SELECT
        concat('ex_', lower(hex(sipHash64(number)))) AS execution_id,
        toUInt32(1 + (number % 7 = 0)) AS attempt,
        concat('user', toString(number % 500)) AS user,
        concat('ex_', lower(hex(sipHash64(number)))) AS correlation_id,
        '' AS parent_id,
        concat('event', toString(number % 50)) AS event_ref,
        ['python', 'bash', 'node'][1 + number % 3] AS runtime,
        'container' AS runner,
        '' AS targets,
        ['normal', 'normal', 'high', 'low'][1 + number % 4] AS priority,
        ['succeeded', 'succeeded', 'succeeded', 'failed', 'timed_out'][1 + number % 5] AS status,
        if(number % 5 = 3, 'nonzero_exit', '') AS error_kind,
        '' AS error_message,
        toInt32(if(number % 5 = 3, 1, 0)) AS exit_code,
        now64(6) - toIntervalSecond(number * {spacing:UInt32}) AS requested_at,
        requested_at + toIntervalMillisecond(300) AS started_at,
        started_at + toIntervalMillisecond(100 + number % 5000) AS ended_at,
        250.0 AS setup_ms, toFloat64(100 + number % 5000) AS run_ms, 20.0 AS cleanup_ms,
        toUInt64(20000000 + number % 1000000) AS peak_memory_bytes, 50.0 AS cpu_time_ms,
        toUInt64(number % 10000) AS output_bytes, number AS version
    FROM numbers({start:UInt64}, {count:UInt64})
"""


class _NoFinal:
    """The warehouse, with ``FINAL`` removed from queries (for the plain baseline table)."""

    def __init__(self, wh: ChdbWarehouse) -> None:
        self.wh = wh

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return self.wh.query(sql.replace(" FINAL", ""), params)


def _fill(wh: ChdbWarehouse, table: str, n: int, batch: int) -> None:
    """Insert in projector-sized batches (many parts, as in production between merges)."""
    for start in range(0, n, batch):
        wh.command(
            f"INSERT INTO {table} " + _GENERATED,
            {"start": start, "count": min(batch, n - start), "spacing": max(1, 86400 * 30 // n)},
        )


def _timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]


def run(executions: int, lookups: int) -> list[dict[str, Any]]:
    """Measure; returns one row per query and table."""
    with tempfile.TemporaryDirectory() as d:
        wh = ChdbWarehouse(Path(d))
        for sql in statements("cronium"):
            wh.command(sql)
        # the baseline: the same columns, no sort key, no skip index, no deduplication
        wh.command("CREATE DATABASE baseline")
        wh.command(
            "CREATE TABLE baseline.executions AS cronium.executions "
            "ENGINE = MergeTree ORDER BY tuple()"
        )
        wh.command("ALTER TABLE baseline.executions DROP INDEX by_user")
        for sql in statements("baseline"):
            if "VIEW" in sql:
                wh.command(sql.replace(" FINAL", ""))
        t = time.perf_counter()
        _fill(wh, "cronium.executions", executions, 10_000)
        fill_s = time.perf_counter() - t
        _fill(wh, "baseline.executions", executions, 10_000)
        rng = random.Random(1)
        ids = [
            r["execution_id"]
            for r in wh.query(
                "SELECT execution_id FROM cronium.executions ORDER BY rand() LIMIT {k:UInt32}",
                {"k": lookups},
            )
        ]
        rng.shuffle(ids)
        results = []
        since = "2000-01-01"
        paths: list[tuple[str, Any]] = [("cronium", wh), ("baseline", _NoFinal(wh))]
        for state in ("as inserted", "merged"):
            if state == "merged":  # what background merges reach between bursts of inserts
                for db, _ in paths:
                    wh.command(f"OPTIMIZE TABLE {db}.executions FINAL")
            for db, conn in paths:
                it = iter(ids * 2)
                history(conn, HistoryFilter(execution_id=ids[0]), db=db)  # warm

                def point_lookup(db: str = db, conn: Any = conn, it: Iterator[str] = it) -> None:
                    history(conn, HistoryFilter(execution_id=next(it)), db=db)

                def dashboard(db: str = db, conn: Any = conn) -> None:
                    aggregates(conn, since, db=db)

                def metrics(db: str = db, conn: Any = conn) -> None:
                    attempt_totals(conn, db=db)
                    run_time_histogram(conn, db=db)

                point = _timed(point_lookup, lookups)
                dash = _timed(dashboard, 5)
                scrape = _timed(metrics, 5)
                results.append(
                    {"db": db, "state": state, "point": point, "dash": dash, "metrics": scrape}
                )
        wh.close()
    print(f"filled {executions:,} executions in {fill_s:.1f} s")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--executions", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=100)
    args = parser.parse_args(argv)
    results = run(args.executions, args.lookups)
    by = {(r["db"], r["state"]): r for r in results}
    print(
        f"{'query (ms)':<34}{'parts':<13}{'warehouse p50':>14}{'p95':>8}{'baseline p50':>14}"
        f"{'ratio':>8}"
    )
    for state in ("as inserted", "merged"):
        for key, name in (
            ("point", "one execution's history"),
            ("dash", "dashboard aggregates"),
            ("metrics", "metrics scrape (warehouse part)"),
        ):
            ours, base = by[("cronium", state)][key], by[("baseline", state)][key]
            p50, base_p50 = statistics.median(ours), statistics.median(base)
            print(
                f"{name:<34}{state:<13}{p50:>14.1f}{_p95(ours):>8.1f}{base_p50:>14.1f}"
                f"{base_p50 / p50:>7.1f}x"
            )


if __name__ == "__main__":
    main()
