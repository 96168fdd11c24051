"""The bus against a real nats-server: provisioning, idempotent publishing, reading back."""

from __future__ import annotations

import time

import pytest

from cronium_bus.bus import Bus
from cronium_bus.errors import BusUnavailableError
from cronium_bus.events import ErrorInfo, Failed, Succeeded, follow_up
from cronium_bus.history import execution_events, execution_state
from cronium_bus.provision import provision
from cronium_bus.settings import Settings
from cronium_bus.subjects import EXEC_STREAM, LOGS_STREAM
from tests.helpers import requested


async def test_provisioning_is_idempotent_and_applies_changed_limits(
    bus: Bus, settings: Settings
) -> None:
    """Running provision again is harmless; a changed retention setting updates the stream."""
    await provision(bus.js, settings)
    changed = settings.model_copy(
        update={
            "streams": settings.streams.model_copy(
                update={"logs_max_age": 7200.0, "logs_max_bytes": 123 * 1024**2}
            )
        }
    )
    await provision(bus.js, changed)
    info = await bus.js.stream_info(LOGS_STREAM)
    assert info.config.max_age == 7200.0
    assert info.config.max_bytes == 123 * 1024**2
    exec_info = await bus.js.stream_info(EXEC_STREAM)
    assert exec_info.config.duplicate_window == 120.0


async def test_publishing_twice_stores_once(bus: Bus) -> None:
    """A request published twice (same id) and two terminal events of one attempt store once."""
    req = requested("print(1)")
    first = await bus.publish(req)
    again = await bus.publish(req)
    assert again.duplicate and not first.duplicate
    await bus.publish(Succeeded(**follow_up(req, "t"), exit_code=0))
    dup = await bus.publish(Failed(**follow_up(req, "t"), error=ErrorInfo(kind="oom", message="")))
    assert dup.duplicate
    events = await execution_events(bus.js, req.execution_id, max_bytes=1 << 20)
    assert [e.type for e in events] == ["execution.requested", "execution.succeeded"]


async def test_unknown_execution_reads_back_empty_at_once(bus: Bus) -> None:
    """Reading an execution with no events answers immediately with nothing."""
    t0 = time.monotonic()
    assert await execution_state(bus.js, "ex_nothing_here", max_bytes=1 << 20) is None
    assert time.monotonic() - t0 < 1.0


async def test_unreachable_server_is_a_typed_error(settings: Settings) -> None:
    """Connecting to a port where nothing listens raises BusUnavailableError with a hint."""
    dead = settings.model_copy(update={"nats_url": "nats://127.0.0.1:1", "connect_timeout": 0.5})
    with pytest.raises(BusUnavailableError) as info:
        async with Bus(dead):
            pass
    assert "cronium up" in info.value.hint


async def test_close_is_idempotent(settings: Settings) -> None:
    """Closing a bus twice is safe."""
    b = Bus(settings)
    await b.connect()
    await b.close()
    await b.close()
    with pytest.raises(BusUnavailableError):
        _ = b.js
