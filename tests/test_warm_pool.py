"""The warm sandbox pool against the real Docker engine: containers are started ahead, each is
used by exactly one execution and then removed, the pool refills, and a request whose limits a
warm container cannot take runs cold."""

from __future__ import annotations

import asyncio

import docker
import pytest

from consumers.container.runtime import LABEL_INSTALLATION, LABEL_POOL, LABEL_RUNNER
from cronium_bus.bus import Bus
from cronium_bus.events import Limits
from cronium_bus.provision import installation_id
from tests.conftest import Embedded
from tests.helpers import run_code
from tests.test_container_runner import lines_of

pytestmark = pytest.mark.docker


def pooled(installation: str) -> dict[str, str]:
    """This installation's warm containers on the engine: id -> runner."""
    client = docker.from_env()
    try:
        # one list call (no inspect per container, which races with removals)
        mine = [LABEL_POOL, f"{LABEL_INSTALLATION}={installation}"]
        found = client.api.containers(all=True, filters={"label": mine})
        return {str(c["Id"]): (c.get("Labels") or {}).get(LABEL_RUNNER, "") for c in found}
    finally:
        client.close()


async def wait_pool(bus: Bus, count: int, timeout: float = 60) -> dict[str, str]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    installation = await installation_id(bus.js)
    while loop.time() < deadline:
        found = await asyncio.to_thread(pooled, installation)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"fewer than {count} warm containers")


async def test_a_warm_container_serves_one_execution_and_is_replaced(
    bus: Bus, runner: Embedded
) -> None:
    per_runtime = bus.settings.runner.warm_pool
    before = await wait_pool(bus, 3 * per_runtime)
    code = (
        "import os, sys; print(os.environ['CRONIUM_EXECUTION_ID'], os.environ['CRONIUM_ATTEMPT'],"
        " sys.stdin.read() == '', os.getuid(), cronium.event()['execution_id'])"
    )
    state = await run_code(bus, code, "python")
    assert state.status == "succeeded", state
    out = (await lines_of(bus, state.execution_id))["stdout"]
    assert out == [f"{state.execution_id} 1 True 1000 {state.execution_id}"]
    after = await wait_pool(bus, 3 * per_runtime)
    used = set(before) - set(after)
    assert len(used) == 1  # exactly one warm container was consumed, and it is gone
    assert len(set(after) - set(before)) == 1  # and one new one took its place


async def test_requests_a_warm_container_cannot_take_run_cold(bus: Bus, runner: Embedded) -> None:
    per_runtime = bus.settings.runner.warm_pool
    before = await wait_pool(bus, 3 * per_runtime)
    state = await run_code(bus, "ulimit -u; echo cold", "bash", limits=Limits(pids=37))
    assert state.status == "succeeded", state
    assert set(await asyncio.to_thread(pooled, await installation_id(bus.js))) == set(
        before
    )  # the pool was not touched
