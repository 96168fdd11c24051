"""``cronium replay``: rebuild every projection from the streams and swap it in atomically.

1. Fresh tables in a staging database (``<db>_replay``), created with the current DDL.
2. The log archive outlives the log stream (the stream keeps hours for live tail, the archive
   months), so archived lines are carried over first; every chunk still in the stream is then
   projected again and replaces its carried-over copy (same ReplacingMergeTree key).
3. The exec stream is read from its first message with an ephemeral consumer: raw events and the
   audit chain (rebuilt from the genesis hash, so it is identical when the stream is complete),
   then every execution is re-folded once.
4. Under the projector's lock (the live projector pauses, queries wait): catch up with what
   arrived meanwhile, then ``EXCHANGE TABLES`` for all five tables in one statement — readers
   see either the old set or the new one — and drop the staging database (the old tables).

The live projector resumes after the swap; anything it fetched but had not inserted is inserted
into the new tables, which is harmless (idempotent on redelivery).

Refused when the exec stream no longer starts at sequence 1 (events aged out): the history and
audit rows of those events would be lost. ``force`` replays anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from cronium_bus.errors import CroniumError
from cronium_bus.subjects import EXEC_ALL, EXEC_STREAM, LOGS_ALL, LOGS_STREAM
from projections.ddl import TABLES
from projections.projector import Projector

log = structlog.get_logger(__name__)
Report = Callable[[dict[str, Any]], Awaitable[None]]
FETCH: Final = 2000
REFOLD_CHUNK: Final = 2000
REPORT_EVERY_S: Final = 0.5


class ReplayError(CroniumError):
    """A replay that cannot (or should not) run."""


class Replay:
    """One replay, driven by the process that owns the warehouse."""

    def __init__(self, live: Projector, lock: asyncio.Lock, report: Report) -> None:
        self.live = live
        self.lock = lock
        self.report = report
        self.js = live.bus.js
        self.staging = Projector(live.bus, live.wh, db=f"{live.db}_replay")
        self._last_report = 0.0

    async def _wh(self, fn: Callable[[], Any]) -> Any:
        """One warehouse call, between the live projector's batches."""
        async with self.lock:
            return await asyncio.to_thread(fn)

    async def _progress(self, phase: str, done: int, total: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_report >= REPORT_EVERY_S:
            self._last_report = now
            await self.report({"phase": phase, "done": done, "total": total})

    async def run(self, *, force: bool = False) -> dict[str, Any]:
        """Rebuild and swap; returns counts of what was replayed."""
        started = time.monotonic()
        exec_info = await self.js.stream_info(EXEC_STREAM)
        first = exec_info.state.first_seq
        if exec_info.state.messages and first > 1 and not force:
            raise ReplayError(
                f"the exec stream starts at sequence {first}: events before it have aged out",
                hint="a replay would drop their history and audit rows; raise "
                "streams.exec_max_age, or pass --force to replay what is left",
            )
        staging = self.staging.db
        await self._wh(lambda: self.live.wh.command(f"DROP DATABASE IF EXISTS {staging}"))
        await self._wh(self.staging.setup)
        await self._progress("carry over archived log lines", 0, 0, force=True)
        columns = "execution_id, attempt, stream, seq, time, source, line"
        await self._wh(
            lambda: self.live.wh.command(
                f"INSERT INTO {staging}.log_archive ({columns}) "
                f"SELECT {columns} FROM {self.live.db}.log_archive"
            )
        )
        exec_sub = await self._consumer(EXEC_STREAM, EXEC_ALL)
        logs_sub = await self._consumer(LOGS_STREAM, LOGS_ALL)
        try:
            events = await self._drain(exec_sub, "exec stream", self._project_exec)
            chunks = await self._drain(logs_sub, "log stream", self._project_logs)
            ids = await self._wh(
                lambda: [
                    r["execution_id"]
                    for r in self.live.wh.query(
                        f"SELECT DISTINCT execution_id FROM {staging}.events_raw"
                    )
                ]
            )
            for i in range(0, len(ids), REFOLD_CHUNK):
                part = ids[i : i + REFOLD_CHUNK]
                await self._wh(lambda part=part: self.staging.refold(part))  # type: ignore[misc]
                await self._progress("re-fold executions", i + len(part), len(ids))
            await self._progress("swap", 0, 0, force=True)
            async with self.lock:
                # the live projector is paused: take what arrived meanwhile, then swap
                events += await self._drain(exec_sub, "", self._project_exec_refold, locked=True)
                chunks += await self._drain(logs_sub, "", self._project_logs, locked=True)
                await asyncio.to_thread(self._swap)
        finally:
            for sub in (exec_sub, logs_sub):
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
        result = {
            "events": events,
            "log_chunks": chunks,
            "executions": len(ids),
            "seconds": round(time.monotonic() - started, 3),
        }
        log.info("replay finished", **result)
        return result

    def _swap(self) -> None:
        pairs = ", ".join(f"{self.live.db}.{t} AND {self.staging.db}.{t}" for t in TABLES)
        self.live.wh.command(f"EXCHANGE TABLES {pairs}")
        self.live.wh.command(f"DROP DATABASE IF EXISTS {self.staging.db}")
        self.live.reload_audit_tail()

    async def _consumer(self, stream: str, subject: str) -> Any:
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.ALL,
            inactive_threshold=300.0,
            mem_storage=True,
        )
        return await self.js.pull_subscribe(subject, stream=stream, config=config)

    async def _drain(
        self,
        sub: Any,
        phase: str,
        project: Callable[[list[Msg]], None],
        *,
        locked: bool = False,
    ) -> int:
        """Fetch until the consumer has nothing pending; returns how many messages were read.
        ``locked``: the caller holds the warehouse lock already."""
        info = await sub.consumer_info()
        pending = int(info.num_pending or 0)
        total, done = pending, 0
        while pending > 0:
            try:
                msgs = await sub.fetch(min(pending, FETCH), timeout=5.0)
            except nats.errors.TimeoutError:
                break  # aged out while reading
            if locked:
                await asyncio.to_thread(project, msgs)
            else:
                await self._wh(lambda msgs=msgs: project(msgs))  # type: ignore[misc]
            done += len(msgs)
            pending = int(msgs[-1].metadata.num_pending or 0)
            total = max(total, done + pending)
            if phase and not locked:
                await self._progress(phase, done, total)
        return done

    def _project_exec(self, msgs: list[Msg]) -> None:
        self.staging.project_exec(self.staging.exec_batch(msgs), refold=False)

    def _project_exec_refold(self, msgs: list[Msg]) -> None:
        self.staging.project_exec(self.staging.exec_batch(msgs))

    def _project_logs(self, msgs: list[Msg]) -> None:
        self.staging.project_logs(self.staging.log_batch(msgs))
