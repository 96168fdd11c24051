"""The dispatcher against a real nats-server: hostile input is rejected or dead-lettered, and
the dispatcher keeps serving."""

from __future__ import annotations

import asyncio
import json

import msgspec
import nats.errors
import pytest

from cronium_bus.bus import Bus
from cronium_bus.codec import encode
from cronium_bus.events import Limits
from cronium_bus.health import read_beats
from cronium_bus.history import execution_state, read_subject
from cronium_bus.ids import new_id
from cronium_bus.state import ExecutionState
from cronium_bus.subjects import DLQ_STREAM, JOBS_STREAM
from tests.conftest import Embedded
from tests.helpers import requested, wait_final


async def _raw(bus: Bus, data: bytes) -> str:
    execution_id = new_id("ex")
    await bus.js.publish(f"cronium.exec.tester.{execution_id}.requested", data)
    return execution_id


async def _queued(bus: Bus, execution_id: str) -> ExecutionState | None:
    """The execution's state once it is queued (bounded wait; the last state seen otherwise)."""
    state = None
    for _ in range(100):
        state = await execution_state(bus.js, execution_id, max_bytes=1 << 20)
        if state is not None and state.status == "queued":
            break
        await asyncio.sleep(0.05)
    return state


async def test_valid_request_is_queued_on_its_lane(bus: Bus, dispatcher: Embedded) -> None:
    """A good request becomes queued with defaults filled in, and a job lands on the lane."""
    event = requested("print(1)", priority="high")
    await bus.publish(event)
    state = await _queued(bus, event.execution_id)
    assert state is not None and state.status == "queued"
    assert state.request is not None
    info = await bus.js.stream_info(JOBS_STREAM, subjects_filter=">")
    assert info.state.subjects == {"cronium.jobs.container.high": 1}


async def test_hostile_requests_are_rejected_with_reasons(bus: Bus, dispatcher: Embedded) -> None:
    """Malformed JSON, unknown type, wrong version, 10 MB, over-limit memory: each rejected."""
    good = json.loads(encode(requested("print(1)")))
    cases = {
        "malformed JSON": b'{"type": ',
        "unknown event type": json.dumps({**good, "type": "execution.detonate"}).encode(),
        "schema_version 7": json.dumps({**good, "schema_version": 7}).encode(),
        "over the limit of 1,048,576 bytes": b" " * (10 * 1024 * 1024),
        "not an event envelope": b"[]",
        "nests deeper than": json.dumps({**good, "request": {**good["request"], "input": "@"}})
        .encode()
        .replace(b'"@"', b"[" * 1100 + b"]" * 1100),
        "timezone component": json.dumps(
            {**good, "request": {**good["request"], "not_before": "2026-12-01T10:00:00"}}
        ).encode(),
        "unknown field `extra`": json.dumps({**good, "extra": 1}).encode(),
    }
    ids = {reason: await _raw(bus, data) for reason, data in cases.items()}
    mismatched = requested("print(1)")
    ids["does not match subject id"] = await _raw(bus, encode(mismatched))
    memory = requested("print(1)", limits=Limits(memory_bytes=999 * 1024**3))
    await bus.publish(memory)
    ids["999 GiB of memory asked"] = memory.execution_id
    for reason, execution_id in ids.items():
        state = await wait_final(bus, execution_id, timeout=20)
        assert state.status == "rejected", reason
        assert state.error is not None and reason in state.error.message, state.error
        assert state.error.hint
    # still serving
    after = requested("print(2)")
    await bus.publish(after)
    for _ in range(100):
        info = await bus.js.stream_info(JOBS_STREAM)
        if info.state.messages >= 1:
            break
        await asyncio.sleep(0.05)
    assert info.state.messages >= 1


async def test_message_with_a_hostile_subject_is_dead_lettered(
    bus: Bus, dispatcher: Embedded
) -> None:
    """A request whose subject id cannot name an execution goes to the DLQ with the reason."""
    await bus.js.publish("cronium.exec.tester.bad=id.requested", b"{}")
    for _ in range(100):
        try:
            msg = await bus.js.get_last_msg(DLQ_STREAM, "cronium.dlq.dispatcher")
            break
        except Exception:  # noqa: BLE001 - not there yet
            await asyncio.sleep(0.05)
    assert msg.headers is not None
    assert "invalid owner or execution id" in msg.headers["Cronium-Reason"]
    assert msg.headers["Cronium-Subject"] == "cronium.exec.tester.bad=id.requested"


async def test_request_over_the_server_limit_fails_at_the_publisher(bus: Bus) -> None:
    """Over the stream's message cap (16 MiB) the publisher itself gets an error: nothing lost."""
    with pytest.raises(nats.errors.MaxPayloadError):
        await bus.js.publish("cronium.exec.tester.ex_huge.requested", b" " * (17 * 1024 * 1024))
    events = [
        e
        async for e in read_subject(
            bus.js, "CRONIUM_EXEC", "cronium.exec.tester.ex_huge.>", max_bytes=1 << 25
        )
    ]
    assert events == []


async def test_a_deleted_durable_consumer_is_recreated_and_reported(
    bus: Bus, dispatcher: Embedded
) -> None:
    """Someone deletes the dispatcher's durable consumer: the dispatcher reports itself unhealthy,
    recreates it, and requests are dispatched again (bounded: 30 s)."""

    async def queued(execution_id: str) -> bool:
        for _ in range(300):  # bounded: 30 s
            state = await execution_state(bus.js, execution_id, max_bytes=1 << 20)
            if state is not None and state.status == "queued":
                return True
            await asyncio.sleep(0.1)
        return False

    first = requested("print(1)")
    await bus.publish(first)
    assert await queued(first.execution_id)
    await bus.js.delete_consumer("CRONIUM_EXEC", "dispatcher")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    seen_unhealthy = False
    while loop.time() < deadline:
        beats = [b for b in await read_beats(bus.js) if b.kind == "dispatcher"]
        if any(b.status != "ok" for b in beats):
            seen_unhealthy = True
            break
        await asyncio.sleep(0.1)
    assert seen_unhealthy, "the dispatcher never said its consumer was missing"
    again = requested("print(2)")
    await bus.publish(again)
    assert await queued(again.execution_id)
    info = await bus.js.consumer_info("CRONIUM_EXEC", "dispatcher")
    assert info.config.filter_subject == "cronium.exec.*.*.requested"


async def test_an_id_published_again_after_the_duplicate_window_is_rejected(
    bus: Bus, dispatcher: Embedded
) -> None:
    """A second request under an existing execution id (a message id the stream no longer
    remembers) is rejected naming the execution and its status; the first is untouched."""
    first = requested("print(1)")
    await bus.publish(first)
    await _queued(bus, first.execution_id)
    again = msgspec.structs.replace(
        requested("print(666)"), execution_id=first.execution_id, correlation_id=first.execution_id
    )
    subject = f"cronium.exec.tester.{first.execution_id}.requested"
    await bus.js.publish(subject, encode(again), headers={"Nats-Msg-Id": "after-the-window"})
    rejected = []
    for _ in range(100):
        rejected = [
            e
            async for e in read_subject(
                bus.js, "CRONIUM_EXEC", f"cronium.exec.tester.{first.execution_id}.rejected",
                max_bytes=1 << 20,
            )
        ]  # fmt: skip
        if rejected:
            break
        await asyncio.sleep(0.05)
    assert rejected and "already exists (queued)" in rejected[0].error.message  # type: ignore[attr-defined]
    state = await execution_state(bus.js, first.execution_id, max_bytes=1 << 20)
    assert state is not None and state.status == "queued"
    assert state.request is not None and state.request.code == "print(1)"
