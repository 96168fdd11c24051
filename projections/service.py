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
from cronium_bus.identity.roles import READERS
from cronium_bus.ids import is_valid_id
from cronium_bus.lifecycle import Stopper
from cronium_bus.subjects import ANY_OWNER
from projections.completeness import MAX_CHECKED, unaudited
from projections.projector import Projector
from projections.queries import (
    RUN_TIME_BUCKETS_S,
    HistoryFilter,
    aggregates,
    archive_size,
    archived_logs,
    attempt_totals,
    audit_gaps,
    audit_rows,
    history,
    run_time_histogram,
    user_aggregates,
    verify_audit,
)
from projections.reads import EventsQuery, stored_events
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
        tokens = msg.subject.split(".")
        if len(tokens) == 5 and tokens[2] in READERS:
            # cronium.query.<role>.<name>.<query>: nats-server lets a user, auditor or producer
            # publish only on their own name and role, so <name> is who asks; a user gets only
            # their own executions. Answers go only to the asker's own inbox (a reply subject
            # is not checked by the server, so it could name anything).
            if not (msg.reply or "").startswith(f"_INBOX_{tokens[3]}."):
                log.warning("query with a foreign reply subject dropped", subject=msg.subject)
                return
            owner = tokens[3] if tokens[2] == "user" else None
            await self._answer(msg, self._users_query(tokens[3], owner, tokens[4]))
            return
        handlers: dict[str, Callable[[bytes], Awaitable[Any]]] = {
            "cronium.query.history": self._history,
            "cronium.query.logs": self._logs,
            "cronium.query.audit.verify": self._verify,
            "cronium.query.audit.export": self._export,
            "cronium.query.stats": self._stats,
            "cronium.query.metrics": self._metrics,
        }
        await self._answer(msg, handlers.get(msg.subject))

    def _users_query(
        self, name: str, owner: str | None, query: str
    ) -> Callable[[bytes], Awaitable[Any]] | None:
        """The handler of a user's (``owner`` = their name: only their own executions) or an
        auditor's or producer's (``owner`` None: everyone's) query; ``None`` for one they may
        not ask."""

        async def own_history(data: bytes) -> Any:
            f = msgspec.json.decode(data, type=HistoryFilter)
            if owner is not None and f.user not in (None, owner):
                raise ValueError(f"{name} sees only their own history")
            mine = f if owner is None else msgspec.structs.replace(f, user=owner)
            return await self._run(lambda: history(self.wh, mine))

        async def own_logs(data: bytes) -> Any:
            q = msgspec.json.decode(data, type=_LogsQuery)
            return await self._run(lambda: archived_logs(self.wh, q.execution_id, owner=owner))

        async def own_events(data: bytes) -> Any:
            q = msgspec.json.decode(data, type=EventsQuery)
            return await stored_events(self.bus, q, owner or ANY_OWNER)

        async def own_stats(data: bytes) -> Any:
            q = msgspec.json.decode(data or b"{}", type=_StatsQuery)
            if owner is None:  # an auditor or producer: everyone's, as cronium.query.stats
                return await self._run(lambda: aggregates(self.wh, q.since))
            return await self._run(lambda: user_aggregates(self.wh, q.since, owner))

        if not is_valid_id(name):
            return None
        handlers = {
            "history": own_history,
            "logs": own_logs,
            "events": own_events,
            "stats": own_stats,
        }
        return handlers.get(query)

    async def _answer(self, msg: Msg, handler: Callable[[bytes], Awaitable[Any]] | None) -> None:
        if handler is None:
            reply: Any = {"ok": False, "error": f"unknown query {msg.subject}"}
        else:
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
        result: dict[str, Any] = await self._run(lambda: verify_audit(self.wh))
        if not result["ok"]:
            return result

        async def gaps(lo: int, hi: int) -> list[tuple[int, int]]:
            return await self._run(lambda: audit_gaps(self.wh, lo, hi))  # type: ignore[no-any-return]

        missing, complete = await unaudited(
            self.bus.js, gaps, max_bytes=self.bus.settings.streams.max_msg_size
        )
        if missing:
            seq, execution_id = missing[0]
            return {
                **result,
                "ok": False,
                "seq": seq,
                "reason": f"{len(missing)} stored event(s) have no audit row: the first is "
                f"stream seq {seq} (execution {execution_id})",
            }
        if not complete:
            result["reason"] = f"the chain is intact; only {MAX_CHECKED:,} gaps were checked"
        return result

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
