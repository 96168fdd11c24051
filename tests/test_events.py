"""The event catalogue and its codec: round trips and one typed error for every bad message."""

from __future__ import annotations

import json

import msgspec
import pytest

from cronium_bus import codec
from cronium_bus.bus import message_id, subject_of
from cronium_bus.errors import EventDecodeError
from cronium_bus.events import (
    EVENT_TYPES,
    TERMINAL_TYPES,
    ErrorInfo,
    Failed,
    LogChunk,
    Rejected,
    Succeeded,
    follow_up,
)
from cronium_bus.ids import is_valid_id, new_id
from tests.helpers import requested


def test_request_round_trips() -> None:
    """An encoded request decodes to an equal event."""
    event = requested("print(1)", input={"a": [1, 2]}, priority="high")
    assert codec.decode(codec.encode(event)) == event


def test_every_type_is_in_the_catalogue() -> None:
    """The catalogue covers the whole lifecycle of DESIGN.md and the helper calls."""
    for name in (
        "requested",
        "rejected",
        "queued",
        "started",
        "succeeded",
        "failed",
        "timed_out",
        "cancelled",
        "lost",
        "retry_scheduled",
        "cancel_requested",
    ):
        assert f"execution.{name}" in EVENT_TYPES
    assert {"log.chunk", "helper.called", "variable.set"} <= set(EVENT_TYPES)
    assert {
        f"execution.{t}"
        for t in ("succeeded", "failed", "timed_out", "cancelled", "lost", "partial")
    } == TERMINAL_TYPES


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{not json", "malformed JSON"),
        (b"", "malformed JSON"),
        (b"[1,2]", "not an event envelope"),
        (b'"just a string"', "not an event envelope"),
        (b'{"type": "execution.exploded"}', "unknown event type 'execution.exploded'"),
        (b'{"schema_version": 1}', "missing event type"),
        (b'{"type": 42}', "not an event envelope"),
        (b'{"type": "execution.requested", "schema_version": 2}', "schema_version 2"),
        (b'{"type": "execution.requested", "schema_version": 1}', "invalid execution.requested"),
    ],
)
def test_bad_messages_raise_one_typed_error(data: bytes, reason: str) -> None:
    """Each malformed message raises EventDecodeError naming what is wrong and a hint."""
    with pytest.raises(EventDecodeError) as info:
        codec.decode(data)
    assert reason in info.value.reason
    assert info.value.hint
    assert info.value.kind == "validation"


def test_oversized_message_is_refused_before_parsing() -> None:
    """A 10 MB message is refused by size, with both sizes in the reason."""
    with pytest.raises(EventDecodeError, match=r"over the limit of 1,048,576 bytes"):
        codec.decode(b" " * (10 * 1024 * 1024))


def test_wrong_field_types_and_typos_are_named() -> None:
    """Field errors point at the JSON path; unknown request fields are refused, not ignored."""
    good = json.loads(codec.encode(requested("print(1)")))
    bad_runtime = {**good, "request": {**good["request"], "runtime": "ruby"}}
    with pytest.raises(EventDecodeError, match=r"\$\.request\.runtime"):
        codec.decode(json.dumps(bad_runtime).encode())
    typo = {**good, "request": {**good["request"], "timout_s": 5}}
    with pytest.raises(EventDecodeError, match="timout_s"):
        codec.decode(json.dumps(typo).encode())
    hostile_id = {**good, "execution_id": "a.b.>"}
    with pytest.raises(EventDecodeError, match="execution_id"):
        codec.decode(json.dumps(hostile_id).encode())


def test_decode_as_checks_the_class() -> None:
    """decode_as refuses an event of another type."""
    data = codec.encode(requested("print(1)"))
    with pytest.raises(EventDecodeError, match=r"expected execution\.rejected"):
        codec.decode_as(data, Rejected)


def test_terminal_events_of_an_attempt_share_one_message_id() -> None:
    """Any two terminal events of one attempt deduplicate on the bus (invariant 1)."""
    req = requested("print(1)")
    ok = Succeeded(**follow_up(req, "t"))
    bad = Failed(**follow_up(req, "t"), error=ErrorInfo(kind="oom", message="m"))
    retry = Failed(**follow_up(req, "t", attempt=2), error=ErrorInfo(kind="oom", message="m"))
    assert message_id(ok) == message_id(bad)
    assert message_id(retry) != message_id(ok)
    assert message_id(req) == req.execution_id
    assert subject_of(ok) == f"cronium.exec.{req.user}.{req.execution_id}.succeeded"


def test_log_chunks_go_to_the_log_subject_with_their_sequence() -> None:
    """A log chunk's subject is the live-tail subject and its id carries stream and sequence."""
    req = requested("print(1)")
    chunk = LogChunk(**follow_up(req, "t"), stream="stderr", first_seq=50, lines=("x",))
    assert subject_of(chunk) == f"cronium.logs.{req.user}.{req.execution_id}"
    assert message_id(chunk) == f"{req.execution_id}:1:stderr:50"


def test_ids_are_subject_safe_and_ordered() -> None:
    """New ids are valid subject tokens, unique, and sort by creation time."""
    ids = [new_id("ex") for _ in range(200)]
    assert all(is_valid_id(i) for i in ids)
    assert len(set(ids)) == 200
    assert [i[:13] for i in ids] == sorted(i[:13] for i in ids)
    for hostile in ("", "a.b", "a*", "a>", "x" * 65, "a b", "ü"):
        assert not is_valid_id(hostile)


def test_msgspec_structs_are_frozen() -> None:
    """Events are immutable once built."""
    event = requested("print(1)")
    with pytest.raises(AttributeError):
        event.user = "mallory"  # type: ignore[misc]
    assert msgspec.structs.asdict(event)["user"] == "tester"
