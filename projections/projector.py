"""The projector consumer: streams → warehouse, acknowledged only after the insert.

Two durable consumers: ``projector-exec`` on every lifecycle event (raw events, the audit chain,
and the executions table, re-folded with the one fold for each affected execution) and
``projector-logs`` on log chunks (the compressed archive). Inserts are batched; a redelivered
batch replaces its own rows (ReplacingMergeTree keys) and the audit chain skips sequence numbers
it already holds, so redelivery never changes a query result.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from consumers.deadletter import dead_letter
from cronium_bus import durables
from cronium_bus.authentic import decode_on
from cronium_bus.bus import Bus
from cronium_bus.codec import decode
from cronium_bus.errors import EventDecodeError
from cronium_bus.events import AnyEvent, LogChunk, Terminal, WorkflowRequested
from cronium_bus.health import Heartbeat
from cronium_bus.lifecycle import Stopper
from cronium_bus.provision import provision
from cronium_bus.state import fold
from cronium_bus.subjects import EXEC_ALL, EXEC_STREAM, LOGS_ALL, LOGS_STREAM
from cronium_bus.workflows.state import fold_workflow
from projections.ddl import DATABASE, modify_ttl, statements, ttl_clause_matches
from projections.rows import (
    GENESIS,
    audit_row,
    execution_rows,
    log_rows,
    raw_row,
    workflow_row,
)
from projections.warehouse import Warehouse

log = structlog.get_logger(__name__)


class Projector:
    """Keeps the warehouse up to date with the streams."""

    def __init__(self, bus: Bus, warehouse: Warehouse, db: str = DATABASE) -> None:
        self.bus = bus
        self.wh = warehouse
        self.db = db
        self.max_bytes = bus.settings.streams.max_msg_size
        self.log_ttl_s = bus.settings.warehouse.log_retention
        self.batch = bus.settings.warehouse.batch
        self.linger = bus.settings.warehouse.linger
        self._last_seq = 0
        self._last_hash = GENESIS
        self._lock = asyncio.Lock()  # the warehouse is used from one coroutine at a time
        self._hb: Heartbeat | None = None
        self._gone: set[str] = set()  # durables found deleted at their last check

    def setup(self) -> None:
        """Create or migrate tables, apply the archive retention, read where the audit chain
        ends."""
        for sql in statements(self.db, self.log_ttl_s):
            self.wh.command(sql)
        created = self.wh.query(
            "SELECT create_table_query AS q FROM system.tables "
            "WHERE database = {db:String} AND name = 'log_archive'",
            {"db": self.db},
        )
        if created and not ttl_clause_matches(str(created[0]["q"]), self.log_ttl_s):
            log.info("changing the log archive retention", seconds=self.log_ttl_s)
            self.wh.command(modify_ttl(self.db, self.log_ttl_s))
        self.reload_audit_tail()

    def reload_audit_tail(self) -> None:
        """Continue the audit chain from the last row in the table (after setup or a swap)."""
        last = self.wh.query(f"SELECT seq, hash FROM {self.db}.audit ORDER BY seq DESC LIMIT 1")
        if last:
            self._last_seq, self._last_hash = int(last[0]["seq"]), str(last[0]["hash"])
        else:
            self._last_seq, self._last_hash = 0, GENESIS

    # ---------------------------------------------------------------- pure-ish batch handlers

    def project_exec(
        self, batch: list[tuple[int, AnyEvent, bytes]], *, refold: bool = True
    ) -> None:
        """Insert raw events and audit rows, then re-fold the affected executions (a replay
        re-folds everything once at the end instead)."""
        raw = [raw_row(seq, event, data) for seq, event, data in batch]
        self.wh.insert(f"{self.db}.events_raw", raw)
        audit: list[dict[str, Any]] = []
        last_seq, last_hash = self._last_seq, self._last_hash
        for seq, event, _ in batch:
            if seq <= last_seq:
                continue  # already chained (a redelivery)
            row = audit_row(seq, event, last_hash)
            audit.append(row)
            last_seq, last_hash = seq, row["hash"]
        self.wh.insert(f"{self.db}.audit", audit)
        # the chain moves on only once its rows are stored: a failed insert is retried whole
        self._last_seq, self._last_hash = last_seq, last_hash
        if refold:
            self.refold(sorted({event.execution_id for _, event, _ in batch}))

    def refold(self, execution_ids: list[str]) -> None:
        """Rebuild the executions rows of these executions from their raw events."""
        if not execution_ids:
            return
        rows = self.wh.query(
            f"SELECT execution_id, seq, payload FROM {self.db}.events_raw FINAL "
            "WHERE execution_id IN {ids:Array(String)} ORDER BY execution_id, seq",
            {"ids": execution_ids},
        )
        by_execution: dict[str, list[tuple[int, AnyEvent]]] = {}
        for r in rows:
            try:
                event = decode(r["payload"].encode(), max_bytes=self.max_bytes)
            except EventDecodeError:
                continue
            by_execution.setdefault(r["execution_id"], []).append((int(r["seq"]), event))
        out: list[dict[str, Any]] = []
        workflows: list[dict[str, Any]] = []
        for events in by_execution.values():
            if any(e.type.startswith("schedule.") for _, e in events):
                continue  # a schedule's own events: audit and raw events only
            if any(isinstance(e, WorkflowRequested) for _, e in events):
                workflow = fold_workflow(e for _, e in events)
                if workflow is not None:
                    workflows.append(workflow_row(workflow, max(s for s, _ in events)))
                continue
            state = fold(e for _, e in events)
            if state is None:
                continue
            terminals: dict[int, Terminal] = {}
            for _, e in events:
                if isinstance(e, Terminal) and e.attempt not in terminals:
                    terminals[e.attempt] = e
            out.extend(execution_rows(state, max(s for s, _ in events), terminals))
        self.wh.insert(f"{self.db}.executions", out)
        self.wh.insert(f"{self.db}.workflows", workflows)

    def project_logs(self, chunks: list[LogChunk]) -> None:
        """Archive the lines of these chunks."""
        rows = [row for chunk in chunks for row in log_rows(chunk)]
        self.wh.insert(f"{self.db}.log_archive", rows)

    # ---------------------------------------------------------------- the consumer

    async def run(self, stopper: Stopper) -> None:
        """Consume both streams until stopped."""
        await provision(self.bus.js, self.bus.settings)
        async with self._lock:
            self.setup()
        async with Heartbeat(
            self.bus.js, "projector", self.bus.settings.runner.heartbeat
        ) as self._hb:
            await asyncio.gather(
                self._consume(stopper, EXEC_STREAM, EXEC_ALL, "projector-exec", self._on_exec),
                self._consume(stopper, LOGS_STREAM, LOGS_ALL, "projector-logs", self._on_logs),
            )

    def _decoded(self, msgs: list[Msg]) -> Iterator[tuple[Msg, AnyEvent]]:
        for msg in msgs:
            try:
                yield msg, decode_on(msg.subject, msg.data, max_bytes=self.max_bytes)
            except EventDecodeError:
                continue  # rejected or dead-lettered upstream, or not authentic: not projected

    def exec_batch(self, msgs: list[Msg]) -> list[tuple[int, AnyEvent, bytes]]:
        """Decodable lifecycle events of a fetch, with their stream sequence."""
        return [(m.metadata.sequence.stream, e, m.data) for m, e in self._decoded(msgs)]

    def log_batch(self, msgs: list[Msg]) -> list[LogChunk]:
        """Decodable log chunks of a fetch."""
        return [e for _, e in self._decoded(msgs) if isinstance(e, LogChunk)]

    async def _on_exec(self, msgs: list[Msg]) -> None:
        batch = self.exec_batch(msgs)
        async with self._lock:
            await asyncio.to_thread(self.project_exec, batch)

    async def _on_logs(self, msgs: list[Msg]) -> None:
        chunks = self.log_batch(msgs)
        async with self._lock:
            await asyncio.to_thread(self.project_logs, chunks)

    async def _consume(
        self, stopper: Stopper, stream: str, subject: str, durable: str, handle: Any
    ) -> None:
        config = ConsumerConfig(
            durable_name=durable,
            filter_subject=subject,
            ack_policy=AckPolicy.ALL,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=60.0,
            max_ack_pending=self.batch * 4,
        )
        sub = await self.bus.js.pull_subscribe(
            subject, durable=durable, stream=stream, config=config
        )
        checked = time.monotonic()
        try:
            while not stopper.stopping:
                if time.monotonic() - checked > self.bus.settings.runner.heartbeat:
                    checked = time.monotonic()
                    if await durables.missing(self.bus.js, stream, durable):
                        self._gone.add(durable)
                        with contextlib.suppress(nats.errors.Error):
                            await sub.unsubscribe()
                        sub = await self.bus.js.pull_subscribe(
                            subject, durable=durable, stream=stream, config=config
                        )
                    else:
                        self._gone.discard(durable)
                    if self._hb is not None:
                        durables.report(self._hb, sorted(self._gone))
                try:
                    msgs = await sub.fetch(self.batch, timeout=0.5)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                except (nats.errors.Error, nats.js.errors.Error) as exc:
                    log.warning("fetch failed; retrying", stream=stream, error=str(exc))
                    await asyncio.sleep(0.5)
                    continue
                if not msgs:
                    continue
                # the warehouse is down: hold this very batch and try it again (a later batch's
                # ack would acknowledge this one too, with AckPolicy.ALL)
                while (stored := await self._handled(msgs, handle, durable)) is None:
                    if stopper.stopping:
                        return
                    for msg in msgs:
                        with contextlib.suppress(nats.errors.Error):
                            await msg.in_progress()
                    await stopper.wait(1.0)
                if stored:  # AckPolicy.ALL: the last one stored acknowledges the batch
                    await stored[-1].ack()  # (a dead-lettered one is settled already)
                if len(msgs) < self.batch:
                    # a small batch: let more accumulate (fewer, larger inserts; far less CPU
                    # for chdb and its merges, at most `linger` more lag for queries)
                    await stopper.wait(self.linger)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _handled(self, msgs: list[Msg], handle: Any, durable: str) -> list[Msg] | None:
        """Project a batch: the messages stored, to acknowledge; ``None`` when the warehouse
        does not answer (the caller holds the batch and tries again, so none is acknowledged
        unprojected). A batch that fails while the warehouse answers is projected one message
        at a time, and a message that fails alone is dead-lettered with the reason (which
        settles it) — the others are stored."""
        try:
            await handle(msgs)
        except Exception as exc:
            log.exception("a batch could not be projected", durable=durable, error=str(exc))
        else:
            return msgs
        if not await self._warehouse_answers():
            return None
        stored: list[Msg] = []
        for msg in msgs:
            try:
                await handle([msg])
            except Exception as exc:  # noqa: BLE001 - whatever it is, this message alone
                if not await self._warehouse_answers():  # it went down meanwhile: not the message
                    return None
                reason = f"the projector could not store it: {type(exc).__name__}: {exc}"
                log.warning("message dead-lettered", durable=durable, subject=msg.subject)
                await dead_letter(self.bus.js, durable, msg, reason)
            else:
                stored.append(msg)
        return stored

    async def _warehouse_answers(self) -> bool:
        async with self._lock:
            try:
                await asyncio.to_thread(self.wh.query, "SELECT 1 AS one")
            except Exception:  # noqa: BLE001 - any failure: the warehouse does not answer
                return False
        return True


def decode_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as plain JSON-able values (for the query service)."""
    return msgspec.to_builtins(rows)  # type: ignore[no-any-return]
