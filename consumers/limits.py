"""Concurrency limits per user and per event, shared by every runner process.

One KV entry per limited scope (``user.<hash>``, ``event.<hash>``) holds who runs and who waits:
``{"running": {execution_id: lease_until}, "waiting": {execution_id: [first_seen, last_seen]}}``.
Every change is a compare-and-set on the entry's revision, so two runners never both take the
last slot. Waiting executions are admitted in the order they were first seen (FIFO per scope);
a runner that must wait leaves the job unacknowledged and looks again after ``limit_wait``.

Leases: a running entry expires unless the runner holding it renews it (with the job's lease),
so a SIGKILLed runner's slots come back by themselves; a waiting entry not seen for a while
(its job cancelled, or its runner gone) stops blocking the queue.

The pure part (:func:`admit`) decides; :class:`Gate` does the compare-and-set loop.
"""

from __future__ import annotations

import hashlib
import time
from typing import Final

import msgspec
import nats.js.errors
import structlog
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from cronium_bus.events import Queued
from cronium_bus.settings import Settings
from cronium_bus.subjects import LIMITS_BUCKET

log = structlog.get_logger(__name__)
_CAS_TRIES: Final = 50


class ScopeState(msgspec.Struct, kw_only=True):
    """Who runs and who waits in one limited scope."""

    running: dict[str, float] = {}
    waiting: dict[str, tuple[float, float]] = {}


def admit(
    state: ScopeState, execution_id: str, limit: int, *, now: float, lease_s: float, stale_s: float
) -> bool:
    """Update ``state`` in place: admit ``execution_id`` (True) or record it as waiting."""
    state.running = {e: until for e, until in state.running.items() if until > now}
    state.waiting = {e: seen for e, seen in state.waiting.items() if seen[1] > now - stale_s}
    if execution_id in state.running:  # already admitted (a redelivery): renew
        state.running[execution_id] = now + lease_s
        return True
    first = state.waiting.get(execution_id, (now, now))[0]
    ahead = sum(1 for e, seen in state.waiting.items() if e != execution_id and seen[0] < first)
    if len(state.running) + ahead < limit:
        state.waiting.pop(execution_id, None)
        state.running[execution_id] = now + lease_s
        return True
    state.waiting[execution_id] = (first, now)
    return False


def scopes(queued: Queued, settings: Settings) -> list[tuple[str, int]]:
    """The limited scopes of a job and their limits (none when limits are off)."""
    r = settings.runner
    out = []
    if r.max_running_per_user:
        out.append((_key("user", queued.user), r.max_running_per_user))
    if r.max_running_per_event and queued.request.event_ref:
        out.append((_key("event", queued.request.event_ref), r.max_running_per_event))
    return out


def _key(kind: str, name: str) -> str:
    # KV keys allow few characters; user and event names may hold any
    return f"{kind}.{hashlib.sha256(name.encode()).hexdigest()[:24]}"


class Gate:
    """Admission of jobs under the per-user and per-event limits."""

    def __init__(self, js: JetStreamContext, settings: Settings) -> None:
        self.js = js
        self.settings = settings
        self.lease_s = max(30.0, settings.runner.ack_wait * 2)
        self.stale_s = max(10.0, settings.runner.limit_wait * 20)
        self._kv: KeyValue | None = None

    async def acquire(self, queued: Queued) -> bool:
        """Admit the job in every scope, or in none (and wait)."""
        taken: list[str] = []
        for key, limit in scopes(queued, self.settings):
            if not await self._change(key, queued.execution_id, limit):
                for k in taken:
                    await self._change(k, queued.execution_id, None)
                return False
            taken.append(key)
        return True

    async def renew(self, queued: Queued) -> None:
        """Extend the leases of a running job (called with the job's lease)."""
        for key, limit in scopes(queued, self.settings):
            await self._change(key, queued.execution_id, limit)

    async def release(self, queued: Queued) -> None:
        """Free the job's slots and queue places (idempotent)."""
        for key, _ in scopes(queued, self.settings):
            await self._change(key, queued.execution_id, None)

    async def _change(self, key: str, execution_id: str, limit: int | None) -> bool:
        """Compare-and-set loop: admit under ``limit``, or remove when ``limit`` is None."""
        if self._kv is None:  # opening a bucket is a round trip: once per gate
            self._kv = await self.js.key_value(LIMITS_BUCKET)
        kv = self._kv
        for _ in range(_CAS_TRIES):
            try:
                entry = await kv.get(key)
                revision: int | None = entry.revision
                state = msgspec.json.decode(entry.value or b"{}", type=ScopeState)
            except nats.js.errors.KeyNotFoundError:
                revision, state = None, ScopeState()
            if limit is None:
                if execution_id not in state.running and execution_id not in state.waiting:
                    return True
                state.running.pop(execution_id, None)
                state.waiting.pop(execution_id, None)
                admitted = True
            else:
                now = time.time()
                admitted = admit(
                    state, execution_id, limit, now=now, lease_s=self.lease_s, stale_s=self.stale_s
                )
            value = msgspec.json.encode(state)
            try:
                if revision is None:
                    await kv.create(key, value)
                else:
                    await kv.update(key, value, last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another runner changed it first: read again
            return admitted
        log.warning("limit entry contended; will try again", key=key)
        return False
