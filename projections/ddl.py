"""Tables of the warehouse; one DDL for the embedded (chdb) and server backends.

ORDER BY keys follow the queries: one execution's history is a point lookup on
``(execution_id, attempt)``; logs are read per (execution, attempt, stream) in sequence order;
the audit trail is read and verified in stream order. ReplacingMergeTree keys make a redelivered
event replace its earlier copy (queries read with ``FINAL``), so redelivery never doubles a row.
"""

from __future__ import annotations

from typing import Final

DATABASE: Final = "cronium"


def statements(db: str = DATABASE, log_ttl_days: int = 90) -> list[str]:
    """CREATE statements for database ``db`` (idempotent)."""
    return [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        f"""CREATE TABLE IF NOT EXISTS {db}.events_raw (
            seq UInt64, event_id String, type LowCardinality(String), execution_id String,
            attempt UInt32, user String, time DateTime64(6, 'UTC'),
            payload String CODEC(ZSTD(3))
        ) ENGINE = ReplacingMergeTree ORDER BY (execution_id, seq)""",
        f"""CREATE TABLE IF NOT EXISTS {db}.executions (
            execution_id String, attempt UInt32, user String, correlation_id String,
            parent_id String, runtime LowCardinality(String), runner LowCardinality(String),
            targets String, priority LowCardinality(String), status LowCardinality(String),
            error_kind LowCardinality(String), error_message String, exit_code Nullable(Int32),
            requested_at Nullable(DateTime64(6, 'UTC')), started_at Nullable(DateTime64(6, 'UTC')),
            ended_at Nullable(DateTime64(6, 'UTC')), setup_ms Float64, run_ms Float64,
            cleanup_ms Float64, peak_memory_bytes Nullable(UInt64), cpu_time_ms Nullable(Float64),
            output_bytes UInt64, version UInt64,
            INDEX by_user user TYPE bloom_filter GRANULARITY 4
        ) ENGINE = ReplacingMergeTree(version) ORDER BY (execution_id, attempt)""",
        f"""CREATE TABLE IF NOT EXISTS {db}.log_archive (
            execution_id String, attempt UInt32, stream LowCardinality(String), seq UInt64,
            time DateTime64(6, 'UTC'), source LowCardinality(String),
            line String CODEC(ZSTD(3))
        ) ENGINE = ReplacingMergeTree ORDER BY (execution_id, attempt, stream, seq)
        TTL toDateTime(time) + INTERVAL {int(log_ttl_days)} DAY""",
        f"""CREATE TABLE IF NOT EXISTS {db}.audit (
            seq UInt64, time DateTime64(6, 'UTC'), execution_id String, user String,
            actor String, action LowCardinality(String), detail String,
            prev_hash FixedString(64), hash FixedString(64)
        ) ENGINE = MergeTree ORDER BY seq""",
    ]
