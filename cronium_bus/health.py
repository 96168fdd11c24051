"""Liveness of consumers: a heartbeat entry per process in a KV bucket whose entries expire."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Self

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.js import JetStreamContext

from cronium_bus.provision import bucket_keys, kv_value
from cronium_bus.subjects import HEARTBEAT_BUCKET

log = structlog.get_logger(__name__)
_STOP_WAIT_S = 2.0


class Gauge(msgspec.Struct, frozen=True, kw_only=True):
    """A number a process reports with its heartbeat (exported as ``cronium_<name>``)."""

    name: str
    value: float
    labels: dict[str, str] = {}


Sampler = Callable[[], Awaitable[list[Gauge]]]


class Beat(msgspec.Struct, frozen=True, kw_only=True):
    """One consumer's heartbeat, as stored in the bucket."""

    instance: str
    kind: str
    pid: int
    host: str
    started_at: float
    beat_at: float
    interval: float
    in_flight: int = 0
    status: str = "ok"
    detail: dict[str, str] = {}
    gauges: list[Gauge] = []

    def healthy(self, now: float | None = None) -> bool:
        """Whether the last beat is recent (within three intervals) and reports ok."""
        age = (now if now is not None else time.time()) - self.beat_at
        return self.status == "ok" and age <= 3 * self.interval


def instance_id(kind: str) -> str:
    """A process-unique consumer id usable as a KV key and a subject token."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40]
    return f"{kind}-{host}-{os.getpid()}"


class Heartbeat:
    """Writes this process's :class:`Beat` every ``interval`` seconds until stopped."""

    def __init__(self, js: JetStreamContext, kind: str, interval: float) -> None:
        self.js = js
        self.kind = kind
        self.interval = interval
        self.instance = instance_id(kind)
        self.started_at = time.time()
        self.in_flight = 0
        self.status = "ok"
        self.detail: dict[str, str] = {}
        self.sampler: Sampler | None = None
        self._task: asyncio.Task[None] | None = None

    async def sample(self) -> list[Gauge]:
        """The process's gauges now; none when its sampler fails or takes over an interval."""
        if self.sampler is None:
            return []
        try:
            return await asyncio.wait_for(self.sampler(), self.interval)
        except Exception as exc:  # noqa: BLE001 - a failing probe must not stop the heartbeat
            log.warning("heartbeat gauges not sampled", error=str(exc) or type(exc).__name__)
            return []

    def beat(self, gauges: list[Gauge] | None = None) -> Beat:
        """The current heartbeat record."""
        return Beat(
            instance=self.instance,
            kind=self.kind,
            pid=os.getpid(),
            host=socket.gethostname(),
            started_at=self.started_at,
            beat_at=time.time(),
            interval=self.interval,
            in_flight=self.in_flight,
            status=self.status,
            detail=dict(self.detail),
            gauges=gauges or [],
        )

    async def _loop(self) -> None:
        kv = await self.js.key_value(HEARTBEAT_BUCKET)
        while True:
            try:
                beat = self.beat(await self.sample())
                await kv.put(self.instance, msgspec.json.encode(beat))
            except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
                log.warning("heartbeat not written", error=str(exc))
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._loop(), name=f"heartbeat-{self.instance}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            # bounded: a cancellation racing a reply inside nats-py's request can be lost
            await asyncio.wait({self._task}, timeout=_STOP_WAIT_S)
            self._task = None
        try:
            kv = await self.js.key_value(HEARTBEAT_BUCKET)
            await asyncio.wait_for(kv.delete(self.instance), _STOP_WAIT_S)
        except (nats.errors.Error, nats.js.errors.Error, OSError, TimeoutError) as err:
            log.debug("heartbeat not removed; it expires", error=str(err))


async def read_beats(js: JetStreamContext) -> list[Beat]:
    """Every heartbeat currently in the bucket."""
    beats: list[Beat] = []
    for key in await bucket_keys(js, HEARTBEAT_BUCKET):
        value = await kv_value(js, HEARTBEAT_BUCKET, key)
        if value is None:
            continue
        try:
            beats.append(msgspec.json.decode(value, type=Beat))
        except msgspec.DecodeError:
            log.warning("unreadable heartbeat", key=key)
    return sorted(beats, key=lambda b: (b.kind, b.instance))
