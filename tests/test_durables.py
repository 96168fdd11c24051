"""Service durable consumers that someone deletes are noticed, reported and recreated."""

from __future__ import annotations

import asyncio

import nats.js.errors
import pytest

from cronium_bus.bus import Bus
from cronium_bus.durables import MISSING
from cronium_bus.health import read_beats
from tests.conftest import Embedded
from tests.helpers import run_code
from tests.test_projector import Running, projector  # noqa: F401 - fixture and its type

pytestmark = pytest.mark.docker


async def _reported(bus: Bus, kind: str, timeout: float = 30.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if any(b.kind == kind and b.status == MISSING for b in await read_beats(bus.js)):
            return True
        await asyncio.sleep(0.1)
    return False


async def test_a_deleted_lane_consumer_is_recreated_and_reported(
    bus: Bus, runner: Embedded
) -> None:
    """The normal lane's durable is deleted under a running runner: its heartbeat says so, the
    lane comes back, and the next job runs (bounded: 30 s each)."""
    assert (await run_code(bus, "print(1)")).status == "succeeded"
    await bus.js.delete_consumer("CRONIUM_JOBS", "container-normal")
    assert await _reported(bus, "container"), "the runner never said its lane was missing"
    assert (await run_code(bus, "print(2)")).status == "succeeded"
    info = await bus.js.consumer_info("CRONIUM_JOBS", "container-normal")
    assert info.config.filter_subject == "cronium.jobs.container.normal"


async def test_a_deleted_projector_consumer_is_recreated_and_reported(
    bus: Bus,
    projector: Running,  # noqa: F811 - the imported fixture
) -> None:
    """The projector's log durable is deleted while it runs: its heartbeat says so and the
    durable is back within the bound."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not any(b.kind == "projector" for b in await read_beats(bus.js)):
        assert loop.time() < deadline, "the projector never started"
        await asyncio.sleep(0.1)
    await bus.js.delete_consumer("CRONIUM_LOGS", "projector-logs")
    assert await _reported(bus, "projector"), "the projector never said its durable was missing"
    while True:
        try:
            info = await bus.js.consumer_info("CRONIUM_LOGS", "projector-logs")
            break
        except nats.js.errors.NotFoundError:
            assert loop.time() < deadline + 30, "the durable did not come back"
            await asyncio.sleep(0.1)
    assert info.config.filter_subject == "cronium.logs.>"
