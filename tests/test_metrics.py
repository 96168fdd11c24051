"""Prometheus metrics: gathered from a real nats-server and a real projector (chdb) when
scraped over HTTP, and reported as down, not failed, when a part does not answer."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from cronium_bus.bus import Bus
from cronium_bus.embedded import NatsServer
from cronium_bus.events import (
    Limits,
    PhaseDurations,
    Queued,
    Started,
    Succeeded,
    follow_up,
    make_terminal,
)
from cronium_bus.health import Beat, Gauge, Heartbeat, read_beats
from cronium_bus.metrics import MetricsServer, scrape
from cronium_bus.provision import provision
from cronium_bus.settings import Settings, load_settings
from cronium_bus.subjects import DLQ_STREAM, HEARTBEAT_BUCKET
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
    tmp_path: Path, settings: Settings, nats_server: NatsServer
) -> None:
    """A server of its own is stopped under a running exporter: the scrape still answers, in
    bounded time, with cronium_up 0; after the restart it reads 1 again."""
    server = NatsServer(tmp_path / "own-nats", port=0, authority=nats_server.authority)
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


async def test_process_gauges_are_exported_and_hostile_ones_dropped(bus: Bus) -> None:
    """Gauges a process reports with its heartbeat become cronium_<name>{kind, instance, ...}
    when their name is catalogued; an unknown or malformed name (one that would shadow a
    built-in family such as cronium_up included), a bad label name, a label that would shadow
    kind/instance, or label names differing from the family's are dropped; long label values
    are cut; an undecodable heartbeat is skipped; the scrape still answers."""
    now = time.time()
    beat = Beat(
        instance="container-probe-1",
        kind="container",
        pid=1,
        host="probe",
        started_at=now,
        beat_at=now,
        interval=2.0,
        gauges=[
            Gauge(name="runner_slots", value=4),
            Gauge(name="warm_pool_idle", value=2, labels={"runtime": "python"}),
            Gauge(name="warm_pool_idle", value=1, labels={"other": "x"}),  # labels differ
            Gauge(name="warm_pool_idle", value=3, labels={"runtime": "r" * 10_000}),
            Gauge(name="up", value=0),  # would forge cronium_up
            Gauge(name="process_healthy", value=1),
            Gauge(name="Bad-Name", value=1),
            Gauge(name="docker_up", value=1, labels={"bad label": "v"}),
            Gauge(name="ssh_connections", value=1, labels={"instance": "forged"}),
        ],
    )
    kv = await bus.js.key_value(HEARTBEAT_BUCKET)
    await kv.put(beat.instance, msgspec.json.encode(beat))
    await kv.put("garbage", b"\xff not a beat")
    try:
        found = samples((await scrape(bus, warehouse=False)).body.decode())
    finally:
        await kv.delete(beat.instance)
        await kv.delete("garbage")
    who = {"kind": "container", "instance": "container-probe-1"}
    assert value(found, "cronium_up") == 1
    assert value(found, "cronium_runner_slots", **who) == 4
    assert value(found, "cronium_warm_pool_idle", **who, runtime="python") == 2
    assert value(found, "cronium_warm_pool_idle", **who, runtime="r" * 200) == 3
    assert ("cronium_warm_pool_idle", frozenset({**who, "other": "x"}.items())) not in found
    assert value(found, "cronium_process_healthy", **who) == 1  # from the beat, not forged
    mine = {name for name, labels in found if ("instance", "container-probe-1") in labels}
    assert mine == {
        "cronium_process_healthy",
        "cronium_process_in_flight",
        "cronium_process_heartbeat_age_seconds",
        "cronium_runner_slots",
        "cronium_warm_pool_idle",
    }


async def test_a_failing_sampler_still_beats(bus: Bus) -> None:
    """A sampler that raises or hangs leaves the heartbeat going, without gauges."""

    async def broken() -> list[Gauge]:
        raise RuntimeError("probe broke")

    async def hangs() -> list[Gauge]:
        await asyncio.sleep(3600)
        return []

    for sampler in (broken, hangs):
        heartbeat = Heartbeat(bus.js, "probe", 0.2)
        heartbeat.sampler = sampler
        async with heartbeat:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while not [b for b in await read_beats(bus.js) if b.instance == heartbeat.instance]:
                assert loop.time() < deadline, "no heartbeat written"
                await asyncio.sleep(0.05)
        assert await heartbeat.sample() == []


class _HungEngine:
    """A container engine whose ping never answers (pure logic of the runner's probe)."""

    def __init__(self) -> None:
        self.pings = 0
        self.release = threading.Event()

    def ping(self) -> bool:
        self.pings += 1
        self.release.wait(30)
        return True

    def close(self) -> None:
        self.release.set()


async def test_a_hung_docker_engine_reads_as_down_without_piling_up_pings(bus: Bus) -> None:
    from consumers.container.service import ContainerRunner

    engine = _HungEngine()
    runner = ContainerRunner(bus, runtime=engine)  # type: ignore[arg-type]
    try:
        for _ in range(3):
            gauges = {g.name: g.value for g in await runner.gauges()}
            assert gauges["docker_up"] == 0
        assert engine.pings == 1  # one ping in flight, not one per heartbeat
        engine.release.set()
        await asyncio.sleep(0.1)
        assert {g.name: g.value for g in await runner.gauges()}["docker_up"] == 1
    finally:
        engine.release.set()
        runner.pool.shutdown(wait=True)


async def test_run_time_histogram_counts_attempts_that_ran(bus: Bus, projector: Embedded) -> None:
    """Attempts of 30 ms, 700 ms and 45 s (python) and 2 s (bash), as a runner would report
    them, come out of the warehouse as cumulative buckets whose +Inf is the count and whose sum
    is the run time; a rejected request, which never ran, is not in it."""
    ran = {"python": [30.0, 700.0, 45_000.0], "bash": [2_000.0]}
    for runtime, durations in ran.items():
        for run_ms in durations:
            req = requested("pass", runtime)
            await bus.publish(req)
            await bus.publish(
                Queued(**follow_up(req, "t"), request=req.request, lane="cronium.jobs.x.normal")
            )
            await bus.publish(Started(**follow_up(req, "t"), runner="r"))
            await bus.publish(
                make_terminal(
                    Succeeded,
                    follow_up(req, "t"),
                    runner="r",
                    exit_code=0,
                    durations=PhaseDurations(run_ms=run_ms),
                )
            )
    await bus.publish(requested("pass", "python", limits=Limits(memory_bytes=999 * 1024**3)))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:
        text = (await scrape(bus)).body.decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        run_time = families.get("cronium_run_time_seconds")
        counts = {
            s.labels["runtime"]: s.value
            for s in (run_time.samples if run_time else [])
            if s.name.endswith("_count")
        }
        if counts == {"python": 3, "bash": 1} or loop.time() > deadline:
            break
        await asyncio.sleep(0.2)
    assert counts == {"python": 3, "bash": 1}
    assert run_time is not None
    python = {
        s.labels["le"]: s.value
        for s in run_time.samples
        if s.name.endswith("_bucket") and s.labels["runtime"] == "python"
    }
    assert (python["0.05"], python["0.5"], python["1.0"], python["30.0"], python["60.0"]) == (
        1,
        1,
        2,
        2,
        3,
    )
    assert python["+Inf"] == 3
    sums = {s.labels["runtime"]: s.value for s in run_time.samples if s.name.endswith("_sum")}
    assert sums == pytest.approx({"python": 45.73, "bash": 2.0})


async def test_every_durable_consumer_is_listed_past_the_first_page(bus: Bus) -> None:
    """JetStream lists consumers 256 at a time: 300 durable ones on a stream are all exported."""
    names = [f"probe-{i:03d}" for i in range(300)]
    for name in names:
        await bus.js.add_consumer(
            DLQ_STREAM, ConsumerConfig(durable_name=name, ack_policy=AckPolicy.EXPLICIT)
        )
    try:
        found = samples((await scrape(bus, warehouse=False)).body.decode())
    finally:
        for name in names:
            await bus.js.delete_consumer(DLQ_STREAM, name)
    listed = {
        dict(labels)["consumer"]
        for name, labels in found
        if name == "cronium_consumer_pending" and ("stream", DLQ_STREAM) in labels
    }
    assert listed >= set(names)


@pytest.mark.parametrize(
    "answer",
    [
        b"not json",
        b"[]",
        b'{"ok": false, "error": "boom"}',
        b'{"ok": true, "result": null}',
        b'{"ok": true, "result": {"attempts": [{"status": "x", "attempts": "many"}]}}',
        b'{"ok": true, "result": {"attempts": [{"status": "succeeded", "attempts": 1}],'
        b' "run_time": {"bounds": [1], "rows": [{"runtime": "p", "runs": 1, "sum_s": 1,'
        b' "buckets": [1, 2]}]}, "archive": {}}}',
        b'{"ok": true, "result": {"attempts": [], "run_time": {"bounds": [], "rows": []},'
        b' "archive": []}}',
    ],
)
async def test_an_odd_warehouse_answer_reads_as_warehouse_down(bus: Bus, answer: bytes) -> None:
    """Whatever answers cronium.query.metrics, a malformed reply gives warehouse_up 0 and none
    of its figures (not half of them), and the scrape still answers."""

    async def respond(msg: Msg) -> None:
        await msg.respond(answer)

    sub = await bus.nc.subscribe("cronium.query.metrics", cb=respond)
    try:
        result = await scrape(bus)
    finally:
        await sub.unsubscribe()
    found = samples(result.body.decode())
    assert result.nats_up and result.warehouse_up is False
    assert value(found, "cronium_warehouse_up") == 0
    assert not [name for name, _ in found if name.startswith(("cronium_attempts", "cronium_run"))]


async def test_concurrent_scrapers_share_one_scrape(bus: Bus) -> None:
    """20 scrapers at once get 20 full answers from far fewer scrapes (each a warehouse query
    and a dozen NATS requests)."""
    asked = 0

    async def respond(msg: Msg) -> None:
        nonlocal asked
        asked += 1
        await asyncio.sleep(0.5)  # a warehouse query takes a while
        await msg.respond(b'{"ok": false, "error": "busy"}')

    sub = await bus.nc.subscribe("cronium.query.metrics", cb=respond)
    try:
        async with MetricsServer(bus, "127.0.0.1", 0) as server:
            answers = await asyncio.gather(*(get(server.url) for _ in range(20)))
    finally:
        await sub.unsubscribe()
    assert [status for status, _, _ in answers] == [200] * 20
    assert all(value(samples(text), "cronium_up") == 1 for _, _, text in answers)
    assert server.scrapes == asked
    assert asked <= 3, f"{asked} scrapes for 20 concurrent scrapers"
