-- Cronium warehouse DDL, generated from projections/ddl.py (`make schemas`).
-- Database cronium; log archive retention 7776000 s (warehouse.log_retention). Idempotent:
-- clickhouse-client --multiquery < deploy/clickhouse/schema.sql

CREATE DATABASE IF NOT EXISTS cronium;

CREATE TABLE IF NOT EXISTS cronium.events_raw (
    seq UInt64 CODEC(Delta, ZSTD(1)), event_id String, type LowCardinality(String),
    execution_id String, attempt UInt32, user String,
    time DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)), payload String CODEC(ZSTD(6))
    ) ENGINE = ReplacingMergeTree ORDER BY (execution_id, seq);

CREATE TABLE IF NOT EXISTS cronium.executions (
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
    max_compress_block_size = 16384;

CREATE TABLE IF NOT EXISTS cronium.log_archive (
    execution_id String, attempt UInt32, stream LowCardinality(String),
    seq UInt64 CODEC(Delta, ZSTD(1)), time DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    source LowCardinality(String), line String CODEC(ZSTD(9))
    ) ENGINE = ReplacingMergeTree ORDER BY (execution_id, attempt, stream, seq)
    TTL toDateTime(time) + INTERVAL 7776000 SECOND;

CREATE TABLE IF NOT EXISTS cronium.audit (
    seq UInt64, time DateTime64(6, 'UTC'), execution_id String, user String,
    actor String, action LowCardinality(String), detail String,
    prev_hash FixedString(64), hash FixedString(64)
    ) ENGINE = MergeTree ORDER BY seq;

CREATE TABLE IF NOT EXISTS cronium.workflows (
    workflow_id String, user String, name String, status LowCardinality(String),
    nodes UInt32, succeeded UInt32, failed UInt32, skipped UInt32, not_started UInt32,
    data_bytes UInt64, requested_at DateTime64(6, 'UTC'),
    ended_at Nullable(DateTime64(6, 'UTC')), node_states String CODEC(ZSTD(3)),
    version UInt64,
    INDEX by_user user TYPE bloom_filter GRANULARITY 4
    ) ENGINE = ReplacingMergeTree(version) ORDER BY workflow_id;

ALTER TABLE cronium.executions ADD COLUMN IF NOT EXISTS event_ref String AFTER parent_id;

ALTER TABLE cronium.executions ADD COLUMN IF NOT EXISTS workflow_id String AFTER event_ref;

ALTER TABLE cronium.executions ADD COLUMN IF NOT EXISTS node String AFTER workflow_id;

ALTER TABLE cronium.executions ADD COLUMN IF NOT EXISTS schedule String AFTER node;

CREATE OR REPLACE VIEW cronium.runs_per_hour AS
    SELECT toStartOfHour(requested_at) AS hour, status, count() AS runs
    FROM cronium.executions FINAL WHERE requested_at IS NOT NULL
    GROUP BY hour, status;

CREATE OR REPLACE VIEW cronium.durations_by_event AS
    SELECT event_ref, runtime, count() AS runs,
    quantile(0.5)(run_ms) AS p50_ms, quantile(0.95)(run_ms) AS p95_ms,
    quantile(0.99)(run_ms) AS p99_ms, max(run_ms) AS max_ms
    FROM cronium.executions FINAL WHERE ended_at IS NOT NULL
    GROUP BY event_ref, runtime;
