"""Prometheus metrics: gathered from a real nats-server and a real projector (chdb) when
scraped over HTTP, and reported as down, not failed, when a part does not answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from cronium_bus.bus import Bus
from cronium_bus.embedded import NatsServer
from cronium_bus.events import Limits
from cronium_bus.metrics import MetricsServer, scrape
from cronium_bus.provision import provision
from cronium_bus.settings import Settings, load_settings
from cronium_bus.units import parse_listen
from projections.service import ProjectorService
from projections.warehouse import ChdbWarehouse
from tests.conftest import Embedded
from tests.helpers import requested, wait_final

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition, keyed by name and labels (parsed by prometheus_client,
    so a malformed exposition fails here)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


async def get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, response.headers["Content-Type"], await response.text()


@pytest.fixture
async def projector(bus: Bus, tmp_path: Path) -> AsyncIterator[Embedded]:
    """The projector and its query service, on a fresh chdb warehouse."""
    emb = Embedded()
    emb.tasks.append(
        asyncio.create_task(
            ProjectorService(bus, ChdbWarehouse(tmp_path / "warehouse")).run(emb.stopper)
        )
    )
    yield emb
    await emb.stop()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        (" localhost:0 ", ("localhost", 0)),
        ("[::1]:9464", ("::1", 9464)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ],
)
def test_listen_addresses_parse(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is not HOST:PORT"),
        ("9464", "is not HOST:PORT"),
        (":9464", "is not HOST:PORT"),
        ("a b:9464", "is not HOST:PORT"),
        ("x" * 300 + ":1", "is not HOST:PORT"),
        ("host:", "is not a port"),
        ("host:http", "is not a port"),
        ("host:65536", "is not a port"),
        ("host:-1", "is not a port"),
        ("host:\u00b2", "is not a port"),  # a digit to str.isdigit, not to int()
        ("host:" + "9" * 5000, "is not a port"),  # over int()'s digit limit: no crash
    ],
)
def test_bad_listen_addresses_say_what_to_write(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_listen(text)
    assert len(str(caught.value)) < 200  # hostile input is not echoed whole


def test_a_bad_metrics_listen_setting_is_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="is not HOST:PORT"):
        load_settings(metrics_listen="nowhere", data_dir=tmp_path)
    assert load_settings(metrics_listen="127.0.0.1:0", data_dir=tmp_path).metrics_listen


async def test_a_scrape_reports_lanes_processes_backlogs_and_warehouse_totals(
    bus: Bus, dispatcher: Embedded, projector: Embedded
) -> None:
    """With a dispatcher and a projector running and no container runner: a rejected request
    is counted in the warehouse, a waiting job shows in its lane, both processes are healthy,
    the projector's durable consumers are listed with their backlog; served over HTTP in the
    Prometheus text format."""
    rejected = requested("print(1)", limits=Limits(memory_bytes=999 * 1024**3))
    waiting = requested("print(1)", priority="high")
    await bus.publish(rejected)
    await bus.publish(waiting)
    assert (await wait_final(bus, rejected.execution_id)).status == "rejected"

    async with MetricsServer(bus, "127.0.0.1", 0) as server:
        assert server.port != 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while True:  # until the projector has written the rejected attempt
            status, content_type, text = await get(server.url)
            found = samples(text)
            if found.get(("cronium_attempts", frozenset({("status", "rejected")}))) or (
                loop.time() > deadline
            ):
                break
            await asyncio.sleep(0.2)
    assert status == 200
    assert content_type.startswith("text/plain; version=")  # the Prometheus text format
    assert value(found, "cronium_up") == 1
    assert value(found, "cronium_warehouse_up") == 1
    assert value(found, "cronium_attempts", status="rejected") >= 1
    assert value(found, "cronium_lane_jobs", runner="container", priority="high") == 1
    assert value(found, "cronium_lane_jobs", runner="container", priority="low") == 0
    assert value(found, "cronium_lane_jobs", runner="ssh", priority="critical") == 0
    assert value(found, "cronium_stream_messages", stream="CRONIUM_EXEC") >= 3
    assert value(found, "cronium_stream_max_bytes", stream="CRONIUM_EXEC") == (
        bus.settings.streams.exec_max_bytes
    )
    assert value(found, "cronium_dead_letters") == 0
    processes = [dict(k) for (name, k) in found if name == "cronium_process_healthy"]
    assert {p["kind"] for p in processes} >= {"dispatcher", "projector"}
    interval = bus.settings.runner.heartbeat
    for p in processes:  # healthy exactly when the last beat is within three intervals
        age = value(found, "cronium_process_heartbeat_age_seconds", **p)
        assert value(found, "cronium_process_healthy", **p) == (1 if age <= 3 * interval else 0)
        assert value(found, "cronium_process_in_flight", **p) >= 0
    assert (
        "cronium_consumer_pending",
        frozenset({("stream", "CRONIUM_EXEC"), ("consumer", "projector-exec")}),
    ) in found
    assert value(found, "cronium_archive_bytes") >= 0
    assert 0 < value(found, "cronium_scrape_duration_seconds") < 30


async def test_no_projector_means_warehouse_down_not_a_failed_scrape(bus: Bus) -> None:
    result = await scrape(bus)
    assert result.nats_up and result.warehouse_up is False
    found = samples(result.body.decode())
    assert value(found, "cronium_warehouse_up") == 0
    assert ("cronium_attempts", frozenset({("status", "succeeded")})) not in found
    assert (await scrape(bus, warehouse=False)).warehouse_up is None


async def test_nats_going_away_reads_as_up_0_and_coming_back_as_up_1(
    tmp_path: Path, settings: Settings
) -> None:
    """A server of its own is stopped under a running exporter: the scrape still answers, in
    bounded time, with cronium_up 0; after the restart it reads 1 again."""
    server = NatsServer(tmp_path / "own-nats", port=0)
    server.start()
    own = settings.model_copy(update={"nats_url": server.url})
    try:
        async with Bus(own, name="metrics-test") as bus:
            await provision(bus.js, own)
            async with MetricsServer(bus, "127.0.0.1", 0, warehouse=False) as exporter:
                assert value(samples((await get(exporter.url))[2]), "cronium_up") == 1
                await asyncio.to_thread(server.stop)
                loop = asyncio.get_running_loop()
                started = loop.time()
                status, _, text = await get(exporter.url)
                assert status == 200
                assert value(samples(text), "cronium_up") == 0
                assert loop.time() - started < 15
                await asyncio.to_thread(server.start)
                deadline = loop.time() + 30
                while value(samples((await get(exporter.url))[2]), "cronium_up") != 1:
                    assert loop.time() < deadline, "cronium_up stayed 0 after NATS came back"
                    await asyncio.sleep(0.2)
    finally:
        server.stop()
