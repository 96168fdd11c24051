"""The projector process: keeps the warehouse up to date and answers queries over NATS.

A chdb data dir can be opened by one process at a time, so in the embedded stack the process that
owns the warehouse also serves ``cronium.query.*`` requests (request-reply); clients never open
the directory themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec
import nats.errors
import structlog
from nats.aio.msg import Msg

from cronium_bus.bus import Bus
from cronium_bus.errors import CroniumError
from cronium_bus.lifecycle import Stopper
from projections.projector import Projector
from projections.queries import (
    RUN_TIME_BUCKETS_S,
    HistoryFilter,
    aggregates,
    archive_size,
    archived_logs,
    attempt_totals,
    audit_rows,
    history,
    run_time_histogram,
    verify_audit,
)
from projections.replay import Replay
from projections.warehouse import ChdbWarehouse, ServerWarehouse, Warehouse

log = structlog.get_logger(__name__)
QUERY_SUBJECT: Final = "cronium.query.>"


class _LogsQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    execution_id: str


class _AuditQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    since: str
    until: str


class _ReplayRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    force: bool = False


class _StatsQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    since: str


def open_warehouse(bus: Bus) -> Warehouse:
    """The server warehouse when ``clickhouse_url`` is set, else chdb in the data dir."""
    url = bus.settings.clickhouse_url
    if url is not None:
        return ServerWarehouse(url.get_secret_value())
    return ChdbWarehouse(bus.settings.data_dir / "warehouse")


class ProjectorService:
    """Projector plus query service, one process."""

    def __init__(self, bus: Bus, warehouse: Warehouse | None = None) -> None:
        self.bus = bus
        self.wh = warehouse or open_warehouse(bus)
        self.projector = Projector(bus, self.wh)
        self._replay: asyncio.Task[None] | None = None

    async def run(self, stopper: Stopper) -> None:
        """Project and answer queries until stopped."""
        sub = await self.bus.nc.subscribe(QUERY_SUBJECT, queue="projector", cb=self._on_query)
        try:
            await self.projector.run(stopper)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
            self.wh.close()

    async def _on_query(self, msg: Msg) -> None:
        if msg.subject == "cronium.query.replay":
            await self._start_replay(msg)
            return
        handlers: dict[str, Callable[[bytes], Awaitable[Any]]] = {
            "cronium.query.history": self._history,
            "cronium.query.logs": self._logs,
            "cronium.query.audit.verify": self._verify,
            "cronium.query.audit.export": self._export,
            "cronium.query.stats": self._stats,
            "cronium.query.metrics": self._metrics,
        }
        handler = handlers.get(msg.subject)
        if handler is None:
            reply: Any = {"ok": False, "error": f"unknown query {msg.subject}"}
            if msg.reply:
                await msg.respond(msgspec.json.encode(reply))
            return
        try:
            reply = {"ok": True, "result": await handler(msg.data or b"{}")}
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
            reply = {"ok": False, "error": str(exc)}
        except Exception as exc:
            log.exception("query failed", subject=msg.subject)
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        if msg.reply:
            await msg.respond(msgspec.json.encode(reply))

    async def _start_replay(self, msg: Msg) -> None:
        """Replays run beside queries (a long one must not block them); progress and the final
        answer go to the request's reply subject."""

        async def send(body: dict[str, Any]) -> None:
            if msg.reply:
                await self.bus.nc.publish(msg.reply, msgspec.json.encode(body))

        try:
            request = msgspec.json.decode(msg.data or b"{}", type=_ReplayRequest)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            await send({"ok": False, "error": str(exc)})
            return
        if self._replay is not None and not self._replay.done():
            await send({"ok": False, "error": "a replay is already running"})
            return

        async def progress(p: dict[str, Any]) -> None:
            await send({"progress": p})

        async def replay() -> None:
            try:
                result = await Replay(self.projector, self.projector._lock, progress).run(
                    force=request.force
                )
                await send({"ok": True, "result": result})
            except CroniumError as exc:
                await send({"ok": False, "error": exc.message, "hint": exc.hint})
            except Exception as exc:
                log.exception("replay failed")
                await send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})

        await progress({"phase": "start", "done": 0, "total": 0})
        self._replay = asyncio.create_task(replay())

    async def _run(self, fn: Callable[[], Any]) -> Any:
        async with self.projector._lock:
            return await asyncio.to_thread(fn)

    async def _history(self, data: bytes) -> Any:
        f = msgspec.json.decode(data, type=HistoryFilter)
        return await self._run(lambda: history(self.wh, f))

    async def _logs(self, data: bytes) -> Any:
        q = msgspec.json.decode(data, type=_LogsQuery)
        return await self._run(lambda: archived_logs(self.wh, q.execution_id))

    async def _verify(self, _data: bytes) -> Any:
        return await self._run(lambda: verify_audit(self.wh))

    async def _stats(self, data: bytes) -> Any:
        q = msgspec.json.decode(data, type=_StatsQuery)
        return await self._run(
            lambda: {**aggregates(self.wh, q.since), "archive": archive_size(self.wh)}
        )

    async def _metrics(self, _data: bytes) -> Any:
        return await self._run(
            lambda: {
                "attempts": attempt_totals(self.wh),
                "run_time": {
                    "bounds": list(RUN_TIME_BUCKETS_S),
                    "rows": run_time_histogram(self.wh),
                },
                "archive": archive_size(self.wh),
            }
        )

    async def _export(self, data: bytes) -> Any:
        q = msgspec.json.decode(data, type=_AuditQuery)
        return await self._run(lambda: audit_rows(self.wh, q.since, q.until))
