"""Small helpers for tests: publishing requests and waiting for outcomes over the real bus."""

from __future__ import annotations

import asyncio
from typing import Any

from cronium_bus.bus import Bus
from cronium_bus.events import Limits, Request, Requested, utcnow
from cronium_bus.history import execution_state
from cronium_bus.ids import new_id
from cronium_bus.state import ExecutionState


def requested(code: str, runtime: str = "python", **fields: Any) -> Requested:
    """A request event for ``code``; ``fields`` go into the Request."""
    execution_id = new_id("ex")
    limits = fields.pop("limits", Limits())
    return Requested(
        event_id=new_id("ev"),
        time=utcnow(),
        execution_id=execution_id,
        correlation_id=execution_id,
        producer="tests",
        user=fields.pop("user", "tester"),
        request=Request(runtime=runtime, code=code, limits=limits, **fields),  # type: ignore[arg-type]
    )


async def wait_final(bus: Bus, execution_id: str, timeout: float = 60.0) -> ExecutionState:
    """Poll the streams until the execution is final (bounded by ``timeout``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        state = await execution_state(bus.js, execution_id, max_bytes=32 * 1024 * 1024)
        if state is not None and state.final:
            return state
        if loop.time() > deadline:
            raise AssertionError(f"{execution_id} not final after {timeout}s: {state}")
        await asyncio.sleep(0.05)


async def run_code(bus: Bus, code: str, runtime: str = "python", **fields: Any) -> ExecutionState:
    """Publish a request and wait for its final state."""
    event = requested(code, runtime, **fields)
    await bus.publish(event)
    return await wait_final(
        bus, event.execution_id, timeout=(fields.get("timeout_s") or 30.0) + 30.0
    )
