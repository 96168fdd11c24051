"""A 1,000,000-line log, end to end: a real container prints it, the log pump publishes chunks
on JetStream, the projector archives them in chdb; the archive is gapless."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cronium_bus.bus import Bus
from cronium_bus.lifecycle import Stopper
from cronium_bus.settings import Settings
from projections.projector import Projector
from projections.warehouse import ChdbWarehouse
from tests.conftest import Embedded
from tests.helpers import run_code

LINES = 1_000_000


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The default output cap (16 MiB): 1,000,000 numbered lines are 6.9 MB."""
    return settings.model_copy(
        update={"limits": settings.limits.model_copy(update={"output_cap": 16 * 1024**2})}
    )


async def test_a_million_line_log_is_archived_gapless(
    bus: Bus, runner: Embedded, tmp_path: Path
) -> None:
    wh = ChdbWarehouse(tmp_path / "warehouse")
    projector = Projector(bus, wh)
    stopper = Stopper()
    task = asyncio.create_task(projector.run(stopper))
    try:
        state = await run_code(bus, f"seq 0 {LINES - 1}", "bash", timeout_s=240)
        assert state.status == "succeeded", state
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 240
        count: list[dict[str, object]] = []
        while loop.time() < deadline:
            assert not task.done(), task
            async with projector._lock:
                count = wh.query(
                    "SELECT count() AS n, min(seq) AS lo, max(seq) AS hi, uniqExact(seq) AS u "
                    "FROM cronium.log_archive FINAL WHERE execution_id = {eid:String} "
                    "AND stream = 'stdout'",
                    {"eid": state.execution_id},
                )
            if int(count[0]["n"]) >= LINES:  # type: ignore[call-overload]
                break
            await asyncio.sleep(0.5)
        row = {k: int(v) for k, v in count[0].items()}  # type: ignore[call-overload]
        assert row == {"n": LINES, "lo": 0, "hi": LINES - 1, "u": LINES}
        async with projector._lock:
            # every line is the number of its sequence: content and order survived the trip
            mismatched = wh.query(
                "SELECT count() AS bad FROM cronium.log_archive FINAL "
                "WHERE execution_id = {eid:String} AND toString(seq) != line",
                {"eid": state.execution_id},
            )
        assert int(mismatched[0]["bad"]) == 0
    finally:
        stopper.stop()
        await asyncio.wait_for(task, 60)
        wh.close()
