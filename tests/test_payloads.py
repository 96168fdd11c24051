"""Inputs over the inline limit travel through the payload store (JetStream Object Store):
referenced from the request, checked by the dispatcher, read and verified by the runner."""

from __future__ import annotations

import asyncio
import hashlib
import json

import msgspec
import pytest

from consumers.dispatcher.validate import validate_request
from cronium_bus.bus import Bus
from cronium_bus.codec import decode
from cronium_bus.errors import EventDecodeError
from cronium_bus.events import ErrorInfo, PayloadRef, Request
from cronium_bus.payloads import PayloadError, PayloadStoreError, get_payload, put_payload
from cronium_bus.settings import Settings
from cronium_bus.subjects import PAYLOADS_STREAM
from tests.conftest import Embedded
from tests.helpers import requested, run_code
from tests.test_container_runner import lines_of

BIG = {"rows": [{"id": i, "name": f"row-{i}", "tags": ["a", "b"]} for i in range(60_000)]}
BIG_JSON = msgspec.json.encode(BIG)  # ~2.6 MiB: ten times the inline limit

READ_BACK = """
import cronium, hashlib, json
data = cronium.input()
raw = open('/cronium/input.json', 'rb').read()
print(len(data['rows']), data['rows'][-1]['name'], hashlib.sha256(raw).hexdigest())
"""


def _ref(size: int = 10, name: str = "input/ex1") -> PayloadRef:
    return PayloadRef(name=name, size=size, sha256="0" * 64)


def test_inline_input_over_the_limit_points_to_the_payload_store(settings: Settings) -> None:
    too_big = validate_request(Request(runtime="python", code="1", input=BIG), settings)
    assert isinstance(too_big, ErrorInfo) and "inline limit" in too_big.message
    assert "input_ref" in too_big.hint and "--input @FILE" in too_big.hint


def test_a_reference_is_checked_against_the_limits(settings: Settings) -> None:
    request = Request(runtime="python", code="1", input=1, input_ref=_ref())
    both = validate_request(request, settings)
    assert isinstance(both, ErrorInfo) and "both input and input_ref" in both.message
    huge = _ref(size=settings.limits.max_input_object + 1)
    over = validate_request(Request(runtime="python", code="1", input_ref=huge), settings)
    assert isinstance(over, ErrorInfo) and "max_input_object" in over.hint
    fine = validate_request(Request(runtime="python", code="1", input_ref=_ref()), settings)
    assert isinstance(fine, Request) and fine.input_ref == _ref()


@pytest.mark.parametrize(
    "ref",
    [
        {"name": "../../etc/passwd", "size": 1, "sha256": "0" * 64},
        {"name": "input/" + "x" * 81, "size": 1, "sha256": "0" * 64},
        {"name": "noslash", "size": 1, "sha256": "0" * 64},
        {"name": "input/a b", "size": 1, "sha256": "0" * 64},
        {"name": "input/ex", "size": -1, "sha256": "0" * 64},
        {"name": "input/ex", "size": 1, "sha256": "NOTHEX" * 10 + "abcd"},
        {"name": "input/ex", "size": 1, "sha256": "0" * 64, "url": "http://x"},
        "input/ex",
    ],
)
def test_hostile_references_are_refused_when_decoded(ref: object) -> None:
    event = msgspec.to_builtins(requested("print(1)"))
    event["request"]["input_ref"] = ref
    with pytest.raises(EventDecodeError):
        decode(json.dumps(event).encode(), max_bytes=1 << 20)


async def test_a_large_input_reaches_the_script_intact(bus: Bus, runner: Embedded) -> None:
    """2.6 MiB of input by reference: `cronium.input()` and /cronium/input.json both see it,
    byte for byte (digest printed by the script)."""
    ref = await put_payload(bus.js, "input/large-1", BIG_JSON)
    assert ref.size == len(BIG_JSON) > bus.settings.limits.max_input * 10
    state = await run_code(bus, READ_BACK, input_ref=ref)
    lines = await lines_of(bus, state.execution_id)
    assert state.status == "succeeded", "\n".join(lines["stderr"])
    out = lines["stdout"]
    assert out == [f"60000 row-59999 {hashlib.sha256(BIG_JSON).hexdigest()}"]


async def test_a_missing_object_is_rejected_with_the_reason(bus: Bus, runner: Embedded) -> None:
    state = await run_code(bus, READ_BACK, input_ref=_ref(name="input/never-uploaded"))
    assert state.status == "rejected" and state.error is not None
    assert "not in the payload store" in state.error.message
    assert "--input @FILE" in state.error.hint


async def test_an_object_replaced_after_the_request_fails_the_attempt(
    bus: Bus, runner: Embedded
) -> None:
    """Same name, same size, other bytes: the dispatcher's size check passes, the runner's
    digest check does not — the script never runs on different input."""
    ref = await put_payload(bus.js, "input/swapped", b'{"n": 1}')
    await put_payload(bus.js, "input/swapped", b'{"n": 2}')
    state = await run_code(bus, "print('ran')", input_ref=ref)
    assert state.status == "failed" and state.error is not None
    assert state.error.kind == "validation"
    assert "does not match its reference" in state.error.message
    assert (await lines_of(bus, state.execution_id))["stdout"] == []


async def test_get_payload_checks_the_size_limit_before_reading(bus: Bus) -> None:
    ref = await put_payload(bus.js, "input/small", b"[1,2,3]")
    assert await get_payload(bus.js, ref, max_bytes=7) == b"[1,2,3]"
    with pytest.raises(PayloadError, match="over the limit"):
        await get_payload(bus.js, ref, max_bytes=6)


async def test_a_large_output_is_kept_in_the_payload_store(bus: Bus, settings: Settings) -> None:
    """An output over the inline 256 KiB goes to the payload store (the event carries the
    reference); over limits.max_output_object (1 MiB here) the script gets a 413 with the
    limit and the setting to raise, and nothing is stored."""
    from consumers.container.service import ContainerRunner
    from consumers.dispatcher.service import Dispatcher

    small = settings.model_copy(
        update={"limits": settings.limits.model_copy(update={"max_output_object": 1024**2})}
    )
    async with Bus(small, name="small-output") as small_bus:
        emb = Embedded()
        emb.tasks.append(asyncio.create_task(Dispatcher(small_bus).run(emb.stopper)))
        emb.tasks.append(asyncio.create_task(ContainerRunner(small_bus).run(emb.stopper)))
        try:
            code = (
                "import cronium\n"
                "cronium.output({'rows': ['r' * 100] * 5000})\n"
                "try:\n"
                "    cronium.output('x' * 2_000_000)\n"
                "except cronium.CroniumError as e:\n"
                "    print('refused:', e)\n"
            )
            state = await run_code(bus, code)
        finally:
            await emb.stop()
    lines = await lines_of(bus, state.execution_id)
    assert state.status == "succeeded", lines["stderr"]
    assert state.output is None and state.output_ref is not None
    assert state.output_ref.name == f"output/{state.execution_id}-1"
    data = await get_payload(bus.js, state.output_ref, max_bytes=1024**2)
    assert msgspec.json.decode(data) == {"rows": ["r" * 100] * 5000}
    (refusal,) = lines["stdout"]
    assert "refused:" in refusal and "1,048,576" in refusal and "max_output_object" in refusal


async def test_a_changed_payload_retention_is_applied_at_the_next_start(
    bus: Bus, settings: Settings
) -> None:
    from cronium_bus.provision import provision

    shorter = settings.model_copy(
        update={
            "streams": settings.streams.model_copy(
                update={"exec_max_age": 3600.0, "payloads_max_bytes": 2 * 1024**3}
            )
        }
    )
    await provision(bus.js, shorter)
    config = (await bus.js.stream_info(PAYLOADS_STREAM)).config
    assert (config.max_age, config.max_bytes) == (3600.0, 2 * 1024**3)
    full = settings.model_copy(
        update={"streams": settings.streams.model_copy(update={"payloads_max_bytes": 1024**2})}
    )
    await provision(bus.js, full)
    with pytest.raises(PayloadStoreError) as refused:  # a full store says so, and what to change
        await put_payload(bus.js, "input/too-big-for-the-store", BIG_JSON)
    assert "payload store is full" in refused.value.message
    assert "input/too-big-for-the-store needs" in refused.value.message
    assert "payloads_max_bytes" in refused.value.hint
    await provision(bus.js, settings)  # the module's server is shared: put the settings back
