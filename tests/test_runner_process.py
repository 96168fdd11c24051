"""The container runner as a separate process (`cronium consume container`): bounded memory
under a flood of output, and no container left behind after it is SIGKILLed mid-run."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from consumers.container.runtime import LABEL_RUNNER
from cronium_bus.bus import Bus
from cronium_bus.history import execution_state
from cronium_bus.settings import Settings
from tests.conftest import Embedded
from tests.helpers import RunnerProcess, requested, wait_final

pytestmark = pytest.mark.docker


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def runner_process(
    cronium_bin: str, settings: Settings, dispatcher: Embedded
) -> Iterator[list[RunnerProcess]]:
    procs: list[RunnerProcess] = []
    yield procs
    for p in procs:
        p.stop()


async def test_50_mb_of_output_ends_output_limit_with_bounded_runner_memory(
    bus: Bus, settings: Settings, cronium_bin: str, runner_process: list[RunnerProcess]
) -> None:
    """50 MB printed as fast as possible ends output_limit (default cap 16 MiB) and the
    runner's resident memory grows by far less than the output."""
    proc = RunnerProcess(cronium_bin, settings, slots=2)
    runner_process.append(proc)
    warm = requested("print('warm')")
    await bus.publish(warm)
    await wait_final(bus, warm.execution_id)
    before = rss_kib(proc.proc.pid)
    peak = before
    flood = requested(
        "import sys\nline = 'x' * 99 + '\\n'\nfor _ in range(500_000): sys.stdout.write(line)"
    )
    await bus.publish(flood)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while loop.time() < deadline:
        peak = max(peak, rss_kib(proc.proc.pid))
        state = await execution_state(bus.js, flood.execution_id, max_bytes=1 << 24)
        if state is not None and state.final:
            break
        await asyncio.sleep(0.1)
    assert state is not None and state.final
    assert state.error is not None and state.error.kind == "output_limit"
    assert (peak - before) < 64 * 1024, f"runner grew by {(peak - before) // 1024} MiB"


async def test_sigkill_of_the_runner_leaves_no_container_behind(
    bus: Bus, settings: Settings, cronium_bin: str, runner_process: list[RunnerProcess]
) -> None:
    """SIGKILL during 10 running executions: once a runner is back, none of the dead runner's
    containers remain (the executions' and its idle warm ones) and every execution reaches a
    final state. Containers are found by runner label: a claimed warm container carries no
    execution label."""
    first = RunnerProcess(cronium_bin, settings, slots=10)
    runner_process.append(first)
    events = [requested(f"echo started {i}; sleep 300", "bash") for i in range(10)]
    for event in events:
        await bus.publish(event)
    client = docker.from_env()

    async def runners_of_started() -> set[str | None]:
        """The runners holding the ten attempts once all have started (else empty)."""
        runners: set[str | None] = set()
        for e in events:
            state = await execution_state(bus.js, e.execution_id, max_bytes=1 << 24)
            current = state.attempt_state(state.attempt) if state else None
            if current is None or current.status != "started":
                return set()
            runners.add(current.runner)
        return runners

    def of_runner(runner_id: str) -> list[str]:
        found = client.api.containers(all=True, filters={"label": f"{LABEL_RUNNER}={runner_id}"})
        return [c["Id"] for c in found]

    deadline = time.monotonic() + 90
    while not (held := await runners_of_started()) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert len(held) == 1, f"all ten should be running in the one runner: {held}"
    runner_id = str(held.pop())
    # `started` is published as the attempt begins; its container may be a moment behind
    deadline = time.monotonic() + 30
    while len(of_runner(runner_id)) < 10 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert len(of_runner(runner_id)) >= 10
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    assert len(of_runner(runner_id)) >= 10, "SIGKILL leaves the containers until reaped"

    runner_process.append(RunnerProcess(cronium_bin, settings, slots=10))
    deadline = time.monotonic() + 60
    while of_runner(runner_id) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    assert of_runner(runner_id) == []
    for event in events:
        state = await wait_final(bus, event.execution_id, timeout=60)
        assert state.status == "lost"
        assert state.error is not None and state.error.kind == "runner_lost"
    client.close()
