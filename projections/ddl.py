"""Tables and views of the warehouse; one DDL for the embedded (chdb) and server backends.

ORDER BY keys follow the queries: one execution's history is a point lookup on
``(execution_id, attempt)``; logs are read per (execution, attempt, stream) in sequence order;
the audit trail is read and verified in stream order. ReplacingMergeTree keys make a redelivered
event replace its earlier copy (queries read with ``FINAL``), so redelivery never doubles a row.

Codecs: log lines are ZSTD(9) (≈ 0.93× the size of gzip -6 of the same text, see
``bench/archive_compression.py``); sequence numbers and times are delta-encoded first, which
makes the per-line metadata almost free. ``executions`` uses small granules and compression
blocks: a point lookup decompresses one small block per column instead of 8192 rows' worth
(``bench/history_query.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Final

DATABASE: Final = "cronium"
TABLES: Final = ("events_raw", "executions", "log_archive", "audit", "workflows")
DEFAULT_LOG_TTL_S: Final = 90 * 86400


def _log_ttl(seconds: float) -> str:
    return f"toDateTime(time) + INTERVAL {int(seconds)} SECOND"


def ttl_clause_matches(create_table_query: str, log_ttl_s: float) -> bool:
    """Whether a table's CREATE statement (as ClickHouse prints it) has this log retention."""
    return f"toIntervalSecond({int(log_ttl_s)})" in create_table_query


def modify_ttl(db: str, log_ttl_s: float) -> str:
    """The statement that changes the archive's retention (applied by merges from then on)."""
    return f"ALTER TABLE {db}.log_archive MODIFY TTL {_log_ttl(log_ttl_s)}"


def statements(db: str = DATABASE, log_ttl_s: float = DEFAULT_LOG_TTL_S) -> list[str]:
    """CREATE statements for database ``db``, then migrations (all idempotent)."""
    return [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        f"""CREATE TABLE IF NOT EXISTS {db}.events_raw (
            seq UInt64 CODEC(Delta, ZSTD(1)), event_id String, type LowCardinality(String),
            execution_id String, attempt UInt32, user String,
            time DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)), payload String CODEC(ZSTD(6))
        ) ENGINE = ReplacingMergeTree ORDER BY (execution_id, seq)""",
        f"""CREATE TABLE IF NOT EXISTS {db}.executions (
            execution_id String, attempt UInt32, user String, correlation_id String,
            parent_id String, event_ref String, runtime LowCardinality(String),
            runner LowCardinality(String), targets String, priority LowCardinality(String),
            status LowCardinality(String), error_kind LowCardinality(String),
            error_message String, exit_code Nullable(Int32),
            requested_at Nullable(DateTime64(6, 'UTC')), started_at Nullable(DateTime64(6, 'UTC')),
            ended_at Nullable(DateTime64(6, 'UTC')), setup_ms Float64, run_ms Float64,
            cleanup_ms Float64, peak_memory_bytes Nullable(UInt64), cpu_time_ms Nullable(Float64),
            output_bytes UInt64, version UInt64,
            INDEX by_user user TYPE bloom_filter GRANULARITY 4
        ) ENGINE = ReplacingMergeTree(version) ORDER BY (execution_id, attempt)
        SETTINGS index_granularity = 256, min_compress_block_size = 4096,
                 max_compress_block_size = 16384""",
        f"""CREATE TABLE IF NOT EXISTS {db}.log_archive (
            execution_id String, attempt UInt32, stream LowCardinality(String),
            seq UInt64 CODEC(Delta, ZSTD(1)), time DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
            source LowCardinality(String), line String CODEC(ZSTD(9))
        ) ENGINE = ReplacingMergeTree ORDER BY (execution_id, attempt, stream, seq)
        TTL {_log_ttl(log_ttl_s)}""",
        f"""CREATE TABLE IF NOT EXISTS {db}.audit (
            seq UInt64, time DateTime64(6, 'UTC'), execution_id String, user String,
            actor String, action LowCardinality(String), detail String,
            prev_hash FixedString(64), hash FixedString(64)
        ) ENGINE = MergeTree ORDER BY seq""",
        f"""CREATE TABLE IF NOT EXISTS {db}.workflows (
            workflow_id String, user String, name String, status LowCardinality(String),
            nodes UInt32, succeeded UInt32, failed UInt32, skipped UInt32, not_started UInt32,
            data_bytes UInt64, requested_at DateTime64(6, 'UTC'),
            ended_at Nullable(DateTime64(6, 'UTC')), node_states String CODEC(ZSTD(3)),
            version UInt64,
            INDEX by_user user TYPE bloom_filter GRANULARITY 4
        ) ENGINE = ReplacingMergeTree(version) ORDER BY workflow_id""",
        # migrations of tables created by older versions
        f"ALTER TABLE {db}.executions ADD COLUMN IF NOT EXISTS event_ref String AFTER parent_id",
        f"ALTER TABLE {db}.executions ADD COLUMN IF NOT EXISTS workflow_id String AFTER event_ref",
        f"ALTER TABLE {db}.executions ADD COLUMN IF NOT EXISTS node String AFTER workflow_id",
        f"ALTER TABLE {db}.executions ADD COLUMN IF NOT EXISTS schedule String AFTER node",
        # dashboard aggregates: views over the deduplicated tables, so they never double count
        f"""CREATE OR REPLACE VIEW {db}.runs_per_hour AS
            SELECT toStartOfHour(requested_at) AS hour, status, count() AS runs
            FROM {db}.executions FINAL WHERE requested_at IS NOT NULL
            GROUP BY hour, status""",
        f"""CREATE OR REPLACE VIEW {db}.durations_by_event AS
            SELECT event_ref, runtime, count() AS runs,
                   quantile(0.5)(run_ms) AS p50_ms, quantile(0.95)(run_ms) AS p95_ms,
                   quantile(0.99)(run_ms) AS p99_ms, max(run_ms) AS max_ms
            FROM {db}.executions FINAL WHERE ended_at IS NOT NULL
            GROUP BY event_ref, runtime""",
    ]


SQL_FILE: Final = Path(__file__).resolve().parent.parent / "deploy" / "clickhouse" / "schema.sql"


def render_sql(db: str = DATABASE, log_ttl_s: float = DEFAULT_LOG_TTL_S) -> str:
    """The DDL as one SQL file, for a DBA who creates the warehouse ahead of the projector
    (which applies the same statements at start either way)."""
    head = (
        "-- Cronium warehouse DDL, generated from projections/ddl.py (`make schemas`).\n"
        f"-- Database {db}; log archive retention {int(log_ttl_s)} s "
        "(warehouse.log_retention). Idempotent:\n"
        "-- clickhouse-client --multiquery < deploy/clickhouse/schema.sql\n\n"
    )
    body = ";\n\n".join(
        "\n    ".join(line.strip() for line in st.splitlines()) for st in statements(db, log_ttl_s)
    )
    return head + body + ";\n"


def parser() -> argparse.ArgumentParser:
    """The command line: ``write`` or ``check`` (``--check`` is kept as an alias of ``check``)."""
    p = argparse.ArgumentParser(
        prog="python -m projections.ddl",
        description=(
            f"Render the warehouse DDL (the statements the projector applies at start) into "
            f"{SQL_FILE}, for a DBA who creates the ClickHouse database ahead of the service."
        ),
        epilog="make schemas runs `write`; make test runs `check`. Exit 0 ok, 1 stale, 2 usage.",
    )
    p.add_argument(
        "command",
        nargs="?",
        choices=("write", "check"),
        help="write: replace the file; check: exit 1 when the file differs, write nothing",
    )
    p.add_argument("--check", action="store_true", help="same as the `check` command")
    return p


def main(argv: list[str] | None = None) -> int:
    """Write deploy/clickhouse/schema.sql, or with ``check`` exit 1 when it is stale."""
    p = parser()
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    command = "check" if args.check else args.command
    if command is None:
        p.print_help(sys.stderr)
        print("\nname a command: write or check", file=sys.stderr)
        return 2
    text = render_sql()
    if command == "check":
        current = SQL_FILE.read_text() if SQL_FILE.is_file() else ""
        if current != text:
            print(f"{SQL_FILE} is stale: run `python -m projections.ddl write`", file=sys.stderr)
            return 1
        return 0
    SQL_FILE.parent.mkdir(parents=True, exist_ok=True)
    SQL_FILE.write_text(text)
    print(f"wrote {SQL_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
