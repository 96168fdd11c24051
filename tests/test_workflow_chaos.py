"""Chaos for workflows: 20 workflows run on two workflow consumers (their own processes) while
one of them is SIGKILLed three times and four workflows are cancelled mid-flight. Every workflow
ends exactly once, no node is requested or started twice, nothing runs on after its workflow
ended, and the checker — the same one as `cronium check` — reports nothing."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Iterator

import msgspec
import pytest

from cronium_bus.bus import Bus
from cronium_bus.check import Report, check
from cronium_bus.events import CancelRequested, Definition, WorkflowRequested, utcnow
from cronium_bus.history import read_messages
from cronium_bus.ids import new_id
from cronium_bus.settings import Settings
from cronium_bus.subjects import EXEC_STREAM
from tests.conftest import Embedded
from tests.helpers import RunnerProcess

pytestmark = [pytest.mark.docker, pytest.mark.timeout(420)]
WORKFLOWS = 20
WARM = {"CRONIUM_RUNNER__WARM_RUNTIMES": '["bash"]'}


def definition(rng: random.Random, index: int) -> Definition:
    """a → (b, c) → d, with an on_failure branch e; some nodes fail, some take a while."""
    fail = rng.choice(["a", "b", "c", None, None])

    def code(name: str) -> str:
        slow = "sleep 0.$((RANDOM % 8)); " if name in ("b", "c") else ""
        return f"{slow}echo {name}; exit {3 if name == fail else 0}"

    nodes = [{"name": n, "runtime": "bash", "code": code(n)} for n in "abcde"]
    edges = [
        {"from": "a", "to": "b"},
        {"from": "a", "to": "c"},
        {"from": "b", "to": "d", "when": "always"},
        {"from": "c", "to": "d", "when": "always"},
        {"from": "c", "to": "e", "when": "on_failure"},
    ]
    return msgspec.convert({"name": f"chaos-{index}", "nodes": nodes, "edges": edges}, Definition)


@pytest.fixture
def consumers(cronium_bin: str, settings: Settings) -> Iterator[list[RunnerProcess]]:
    procs: list[RunnerProcess] = []
    yield procs
    for p in procs:
        p.stop()


async def test_workflows_survive_a_sigkilled_workflow_consumer(
    bus: Bus,
    settings: Settings,
    dispatcher: Embedded,
    runner: Embedded,
    consumers: list[RunnerProcess],
    cronium_bin: str,
) -> None:
    rng = random.Random(15)
    ids = [f"wfc-{i}-{new_id('w')[-8:]}" for i in range(WORKFLOWS)]

    def start() -> None:
        consumers.append(RunnerProcess(cronium_bin, settings, slots=1, consumer="workflow"))

    start()
    start()  # two at once: they share the durable, and race on the same workflows
    await consumers[-2].ready(bus)
    await consumers[-1].ready(bus)
    for i, workflow_id in enumerate(ids):
        await bus.publish(
            WorkflowRequested(
                event_id=new_id("ev"),
                time=utcnow(),
                execution_id=workflow_id,
                correlation_id=workflow_id,
                producer="test",
                user="tester",
                definition=definition(rng, i),
            )
        )
    unfinished = []
    cancelled = rng.sample(ids, 4)
    for round_, pause in enumerate((1.0, 2.5, 2.0)):  # SIGKILL mid-work, three times
        await asyncio.sleep(pause)
        unfinished.append(sum(n == 0 for n in (await _terminals(bus, ids)).values()))
        for workflow_id in cancelled[round_::3]:
            await bus.publish(
                CancelRequested(
                    event_id=new_id("ev"),
                    time=utcnow(),
                    execution_id=workflow_id,
                    correlation_id=workflow_id,
                    producer="test",
                    user="tester",
                    reason="chaos",
                )
            )
        consumers[-1].proc.kill()
        consumers[-1].proc.wait()
        await asyncio.sleep(0.3)
        start()

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 240
    report = Report()
    while loop.time() < deadline:
        report = await check(bus.js, max_bytes=1 << 24, containers=False)
        ended = await _terminals(bus, ids)
        if report.ok and all(ended[w] >= 1 for w in ids) and not report.open:
            break
        await asyncio.sleep(2)
    report = await check(bus.js, max_bytes=1 << 24, require_final=True, containers=False)
    assert report.violations == [], report.violations
    assert report.workflows >= WORKFLOWS

    ended = await _terminals(bus, ids)
    assert all(n == 1 for n in ended.values()), ended  # exactly once
    requested: Counter[str] = Counter()
    started: Counter[str] = Counter()
    async for msg in read_messages(bus.js, EXEC_STREAM, "cronium.exec.tester.*.*"):
        node = msg.subject.split(".")[3]
        if node.startswith("wfc-"):
            if msg.subject.endswith(".requested"):
                requested[node] += 1
            elif msg.subject.endswith(".started"):
                started[node] += 1
    assert requested and max(requested.values()) == 1, requested.most_common(3)
    assert started and max(started.values()) == 1, started.most_common(3)
    assert all(n > 0 for n in unfinished), unfinished  # each kill hit workflows in flight
    statuses = Counter(s for s in (await _statuses(bus, ids)).values())
    print("workflow outcomes", dict(statuses), "nodes run", len(started), "in flight", unfinished)
    assert statuses["succeeded"] >= 1 and statuses["failed"] >= 1
    assert 1 <= statuses["cancelled"] <= len(cancelled)


async def _terminals(bus: Bus, ids: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(ids, 0)
    async for msg in read_messages(bus.js, EXEC_STREAM, "cronium.exec.tester.*.*"):
        token, workflow_id = msg.subject.split(".")[4], msg.subject.split(".")[3]
        if workflow_id in counts and token in (
            "workflow_succeeded",
            "workflow_failed",
            "workflow_cancelled",
            "workflow_rejected",
        ):
            counts[workflow_id] += 1
    return counts


async def _statuses(bus: Bus, ids: list[str]) -> dict[str, str]:
    out = {}
    async for msg in read_messages(bus.js, EXEC_STREAM, "cronium.exec.tester.*.*"):
        token, workflow_id = msg.subject.split(".")[4], msg.subject.split(".")[3]
        ends = ("workflow_succeeded", "workflow_failed", "workflow_cancelled")
        if workflow_id in ids and token in ends:
            out[workflow_id] = token.removeprefix("workflow_")
    return out
