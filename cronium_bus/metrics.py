"""Prometheus metrics of the service, gathered when scraped.

No process keeps counters for this: the numbers already live in NATS (streams and their
consumers; the heartbeat bucket, where each process also reports a few gauges of its own such
as its slots, the Docker engine's health, warm containers and SSH connections; the circuit
breakers' bucket) and in the warehouse (attempts by status, the log archive), so one scrape asks
them and renders the answer in the Prometheus text format with ``prometheus_client``. Any
number of exporters can run; each scrape costs about a dozen JetStream API requests and, when a
projector answers, one warehouse query.

A part that does not answer within the scrape's budget is reported as down
(``cronium_up 0``, ``cronium_warehouse_up 0``) instead of failing the scrape, so an alert can
fire on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any, Final

import msgspec
import nats.errors
import nats.js.errors
import structlog
from aiohttp import web
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from cronium_bus import __version__
from cronium_bus.backlog import durables, lane_jobs
from cronium_bus.bus import Bus
from cronium_bus.health import read_beats
from cronium_bus.servers import read_circuits
from cronium_bus.subjects import (
    DLQ_STREAM,
    EXEC_STREAM,
    JOBS_STREAM,
    LOGS_STREAM,
    PAYLOADS_STREAM,
)
from cronium_bus.units import parse_listen

log = structlog.get_logger(__name__)

STREAMS: Final = (EXEC_STREAM, JOBS_STREAM, LOGS_STREAM, DLQ_STREAM, PAYLOADS_STREAM)
"""The streams whose size is reported (KV buckets are small and bounded by their TTL)."""
WITH_CONSUMERS: Final = (EXEC_STREAM, JOBS_STREAM, LOGS_STREAM, DLQ_STREAM)
"""The streams whose durable consumers' backlogs are reported."""
DEFAULT_LISTEN: Final = "127.0.0.1:9464"
__all__ = ["DEFAULT_LISTEN", "MetricsServer", "Scrape", "parse_listen", "scrape"]
NATS_BUDGET_S: Final = 5.0
WAREHOUSE_BUDGET_S: Final = 10.0


_LABEL: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
_PROCESS_GAUGES: Final = {  # what a process may report with its heartbeat (others are dropped)
    "runner_slots": "Jobs the runner process runs at most at a time",
    "docker_up": "1 when the container runner's Docker engine answered its last heartbeat's ping",
    "warm_pool_idle": "Warm containers waiting to be claimed, per runtime",
    "ssh_connections": "Open pooled SSH connections of the SSH runner process",
}
_CIRCUIT_STATES: Final = ("closed", "open", "half_open")


class _Families:
    """Collects metric families for one scrape (a ``prometheus_client`` collector)."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[GaugeMetricFamily, tuple[str, ...]]] = {}
        self._histograms: dict[str, HistogramMetricFamily] = {}

    def gauge(self, name: str, doc: str, value: float, **labels: str) -> None:
        """Add a sample; one whose label names differ from its family's is dropped."""
        names = tuple(labels)
        family, family_names = self._families.get(name) or (None, names)
        if family is None:
            family = GaugeMetricFamily(name, doc, labels=list(names))
            self._families[name] = (family, names)
        if names != family_names:
            log.warning("metrics: sample with other labels dropped", metric=name)
            return
        family.add_metric(list(labels.values()), value)

    def histogram(
        self, name: str, doc: str, buckets: list[tuple[str, float]], total: float, **labels: str
    ) -> None:
        """Add one histogram (cumulative ``buckets`` ending with ``+Inf``, sum ``total``)."""
        if name not in self._histograms:
            self._histograms[name] = HistogramMetricFamily(name, doc, labels=list(labels))
        self._histograms[name].add_metric(list(labels.values()), buckets, total)

    def absorb(self, other: _Families) -> None:
        """Take over the families of another collection (names not already here)."""
        for name, entry in other._families.items():
            self._families.setdefault(name, entry)
        for name, histogram in other._histograms.items():
            self._histograms.setdefault(name, histogram)

    def collect(self) -> Iterable[Metric]:
        return [
            *(family for family, _ in self._families.values()),
            *self._histograms.values(),
        ]


async def _nats_metrics(bus: Bus, out: _Families) -> None:
    """Streams, lanes, durable consumers' backlogs and consumer processes."""
    js = bus.js
    for stream in STREAMS:
        try:
            info = await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            continue  # not provisioned yet (the payload store until first use of `cronium up`)
        labels = {"stream": stream}
        out.gauge(
            "cronium_stream_messages", "Messages in the stream", info.state.messages, **labels
        )
        out.gauge("cronium_stream_bytes", "Bytes in the stream", info.state.bytes, **labels)
        limit = info.config.max_bytes
        if limit is not None and limit > 0:
            out.gauge(
                "cronium_stream_max_bytes",
                "The stream's size limit (streams.*_max_bytes)",
                limit,
                **labels,
            )
        out.gauge(
            "cronium_stream_consumers",
            "Consumers of the stream, durable and ephemeral (live followers)",
            info.state.consumer_count,
            **labels,
        )
        if stream == DLQ_STREAM:
            out.gauge(
                "cronium_dead_letters",
                "Messages a consumer gave up on (`cronium dlq list`)",
                info.state.messages,
            )
    for (runner, priority), count in (await lane_jobs(js)).items():
        out.gauge(
            "cronium_lane_jobs",
            "Jobs in a runner lane: waiting, delayed or being run (a job leaves its lane "
            "when its attempt ends)",
            count,
            runner=runner,
            priority=priority,
        )
    for stream in WITH_CONSUMERS:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            for c in await durables(js, stream):
                labels = {"stream": stream, "consumer": c.name}
                out.gauge(
                    "cronium_consumer_pending",
                    "Messages not yet delivered to the durable consumer (its backlog)",
                    c.num_pending or 0,
                    **labels,
                )
                out.gauge(
                    "cronium_consumer_ack_pending",
                    "Messages delivered to the durable consumer and not yet acknowledged",
                    c.num_ack_pending or 0,
                    **labels,
                )
                out.gauge(
                    "cronium_consumer_redelivered",
                    "Messages the durable consumer has had delivered more than once",
                    c.num_redelivered or 0,
                    **labels,
                )
    try:
        beats = await read_beats(js)
    except nats.js.errors.BucketNotFoundError:
        beats = []
    now = time.time()
    for b in beats:
        labels = {"kind": b.kind, "instance": b.instance}
        out.gauge(
            "cronium_process_healthy",
            "1 while the consumer process beats on time and reports ok",
            1.0 if b.healthy(now) else 0.0,
            **labels,
        )
        out.gauge(
            "cronium_process_in_flight", "Jobs the process is running now", b.in_flight, **labels
        )
        out.gauge(
            "cronium_process_heartbeat_age_seconds",
            "Seconds since the process's last heartbeat",
            max(0.0, now - b.beat_at),
            **labels,
        )
        for g in b.gauges:  # what the process reported: catalogued names only, labels apart
            own = {k: v[:200] for k, v in g.labels.items()}
            doc = _PROCESS_GAUGES.get(g.name)
            if doc is None or any(not _LABEL.fullmatch(k) or k in labels for k in own):
                continue
            out.gauge(f"cronium_{g.name}", doc, g.value, **labels, **own)
    with contextlib.suppress(nats.js.errors.BucketNotFoundError):
        circuits = await read_circuits(js)
        states = Counter(circuit.state for circuit in circuits.values())
        for state in _CIRCUIT_STATES:
            out.gauge(
                "cronium_ssh_circuits",
                "SSH hosts by circuit-breaker state, as the runners last saw them",
                states.get(state, 0),
                state=state,
            )
        for key, circuit in circuits.items():
            out.gauge(
                "cronium_ssh_circuit_open",
                "1 while the host's circuit is open or half-open: runs there fail fast",
                0.0 if circuit.state == "closed" else 1.0,
                circuit=key,
            )


async def _warehouse_metrics(bus: Bus, out: _Families) -> None:
    """Attempts by status and the log archive, from the projector's query service."""
    msg = await bus.nc.request("cronium.query.metrics", b"{}", timeout=WAREHOUSE_BUDGET_S)
    reply: dict[str, Any] = msgspec.json.decode(msg.data)
    if not reply.get("ok"):
        raise ValueError(f"query refused: {reply.get('error')}")
    result = reply["result"]
    for row in result["attempts"]:
        out.gauge(
            "cronium_attempts",
            "Attempts recorded in the warehouse, by their current status",
            float(row["attempts"]),
            status=str(row["status"]),
        )
    bounds = [float(b) for b in result["run_time"]["bounds"]]
    for row in result["run_time"]["rows"]:
        cumulative = [(repr(b), float(n)) for b, n in zip(bounds, row["buckets"], strict=True)]
        out.histogram(
            "cronium_run_time_seconds",
            "Run time of attempts that ran to an end, per runtime (from the warehouse)",
            [*cumulative, ("+Inf", float(row["runs"]))],
            float(row["sum_s"]),
            runtime=str(row["runtime"]),
        )
    archive = result["archive"]
    out.gauge(
        "cronium_archive_bytes",
        "Log archive size on disk, compressed",
        float(archive.get("compressed_bytes") or 0),
    )
    out.gauge(
        "cronium_archive_uncompressed_bytes",
        "Log archive size before compression",
        float(archive.get("uncompressed_bytes") or 0),
    )


class Scrape(msgspec.Struct, frozen=True):
    """One scrape: the exposition text and what answered."""

    body: bytes
    nats_up: bool
    warehouse_up: bool | None  # None when not asked


async def scrape(bus: Bus, *, warehouse: bool = True) -> Scrape:
    """One scrape, rendered in the Prometheus text format."""
    started = time.monotonic()
    out = _Families()
    out.gauge("cronium_info", "Version of the exporter", 1.0, version=__version__)
    # each part adds all of its figures or none: a half-answered scrape is not mistaken for data
    figures = _Families()
    try:
        await asyncio.wait_for(_nats_metrics(bus, figures), NATS_BUDGET_S)
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError, OSError) as exc:
        log.warning("metrics: NATS did not answer", error=str(exc) or type(exc).__name__)
        nats_up = False
    else:
        out.absorb(figures)
        nats_up = True
    out.gauge("cronium_up", "1 when NATS answered this scrape", float(nats_up))
    warehouse_up: bool | None = None
    if warehouse:
        figures = _Families()
        try:
            await _warehouse_metrics(bus, figures)
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("metrics: no warehouse figures", error=str(exc) or type(exc).__name__)
            warehouse_up = False
        except Exception:  # an odd answer must not fail the whole scrape
            log.exception("metrics: unreadable warehouse answer")
            warehouse_up = False
        else:
            out.absorb(figures)
            warehouse_up = True
        out.gauge(
            "cronium_warehouse_up",
            "1 when a projector answered this scrape's query",
            float(warehouse_up),
        )
    out.gauge(
        "cronium_scrape_duration_seconds",
        "How long this scrape took",
        time.monotonic() - started,
    )
    return Scrape(generate_latest(out), nats_up, warehouse_up)


class MetricsServer:
    """``GET /metrics`` over HTTP; an async context manager (stops on exit).

    Requests that arrive while a scrape runs share its answer: any number of scrapers cost NATS
    and the projector one scrape at a time."""

    def __init__(self, bus: Bus, host: str, port: int, *, warehouse: bool = True) -> None:
        self.bus = bus
        self.host = host
        self.port = port
        self.warehouse = warehouse
        self.scrapes = 0
        self._runner: web.AppRunner | None = None
        self._current: asyncio.Task[Scrape] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    async def start(self) -> None:
        """Bind and serve; ``port`` becomes the bound one (for port 0). Raises ``OSError``
        when the address cannot be bound."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
        except OSError:
            sock.close()
            raise
        self.port = int(sock.getsockname()[1])
        app = web.Application()
        app.add_routes([web.get("/metrics", self._metrics), web.get("/", self._index)])
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def _metrics(self, _request: web.Request) -> web.Response:
        if self._current is None or self._current.done():
            self.scrapes += 1
            self._current = asyncio.create_task(scrape(self.bus, warehouse=self.warehouse))
        # shielded: a scraper that hangs up does not cancel the others' answer
        result = await asyncio.shield(self._current)
        return web.Response(body=result.body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _index(self, _request: web.Request) -> web.Response:
        return web.Response(text="cronium metrics: GET /metrics\n")
