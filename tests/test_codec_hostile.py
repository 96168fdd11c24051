"""Hostile input to the codec: every failure is one EventDecodeError with a reason, and the
published schemas accept exactly what the service accepts."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import jsonschema
import msgspec
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from cronium_bus import codec
from cronium_bus.codec import MAX_JSON_DEPTH, decode, nesting_depth
from cronium_bus.errors import EventDecodeError
from cronium_bus.schemagen import SCHEMA_DIR
from tests.helpers import requested

# RFC 3339 date-time as the codec reads it: also a space for the T (RFC 3339 section 5.6
# allows it) and an offset without its colon. Stricter validators (ajv-formats) refuse those
# two: a producer that validates with them is never refused by the service.
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:?\d{2})$")
FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    """RFC 3339 ``date-time`` (an offset required), as JSON Schema defines it."""
    if not isinstance(value, str):
        return True
    if not _RFC3339.fullmatch(value):
        return False
    datetime.fromisoformat(value.upper().replace("Z", "+00:00").replace(" ", "T"))
    return True


VALIDATOR = jsonschema.Draft202012Validator(
    json.loads((SCHEMA_DIR / "execution.requested.v1.json").read_text()),
    format_checker=FORMATS,
)


def _good() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(codec.encode(requested("print(1)", input={"k": [1, 2]})))
    return doc


def _with_input(depth: int) -> bytes:
    """A request whose input nests ``depth`` levels (written as text: json.dumps would hit
    Python's own recursion limit first)."""
    inner = b"[" * depth + b"1" + b"]" * depth
    doc = _good()
    doc["request"]["input"] = "@INPUT@"
    return json.dumps(doc).encode().replace(b'"@INPUT@"', inner)


def test_deep_nesting_is_refused_before_decoding() -> None:
    """1,100 levels of input (2.5 KB) is one EventDecodeError naming the limit — msgspec's
    RecursionError never escapes — and the limit itself is accepted."""
    assert len(_with_input(1100)) < 3500
    with pytest.raises(EventDecodeError, match=f"deeper than {MAX_JSON_DEPTH + 4}"):
        decode(_with_input(1100))
    assert decode(_with_input(MAX_JSON_DEPTH)).type == "execution.requested"
    with pytest.raises(EventDecodeError):
        decode(b"[" * 200_000)
    assert nesting_depth(b'{"a": "[[[[[[[[[[[[[["}', 3) == 1  # brackets in strings do not count
    assert nesting_depth(b'["\\\\", [[[]]]]', 3) == 4  # an escaped backslash ends no string


def test_times_need_an_offset_and_are_kept_in_utc() -> None:
    """A naive `not_before` or `time` is refused; `+02:00` is read as the instant it names."""
    for field in ("time", "not_before"):
        doc = _good()
        target = doc if field == "time" else doc["request"]
        target[field] = "2026-12-01T10:00:00"
        with pytest.raises(EventDecodeError, match="timezone"):
            decode(json.dumps(doc).encode())
    doc = _good()
    doc["time"] = "2026-12-01T10:00:00+02:00"
    doc["request"]["not_before"] = "2026-12-01T10:00:00-05:30"
    event = decode(json.dumps(doc).encode())
    assert event.time == datetime(2026, 12, 1, 8, 0, tzinfo=UTC) and event.time.tzinfo is UTC
    assert event.request.not_before == datetime(2026, 12, 1, 15, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ({"schema_version": 2}, "schema_version 2 is not supported"),
        ({"extra": 1}, "unknown field `extra`"),
        ({"attempt": 2**70}, "invalid execution.requested"),
        ({"time": "yesterday"}, "invalid execution.requested"),
        ({"time": "0001-01-01T00:00:00+01:00"}, "out of range once in UTC"),
        ({"time": "9999-12-31T23:59:59-01:00"}, "out of range once in UTC"),
    ],
)
def test_the_envelope_is_strict(patch: dict[str, Any], reason: str) -> None:
    """Unknown envelope fields, other schema versions, numbers out of range and non-times are
    refused with a reason, as the schema says."""
    doc = {**_good(), **patch}
    with pytest.raises(EventDecodeError, match=reason):
        decode(json.dumps(doc).encode())
    if "out of range" not in reason:  # a valid date-time the service cannot hold in UTC
        assert not VALIDATOR.is_valid(doc)


@given(st.binary(max_size=400))
def test_any_bytes_decode_or_raise_one_error(data: bytes) -> None:
    """Whatever arrives: an event or an EventDecodeError, never anything else."""
    try:
        outcome = decode(data).type
    except EventDecodeError as exc:
        outcome = exc.message
    assert outcome


_TIMES = st.sampled_from(
    [
        "2026-12-01T10:00:00Z",
        "2026-12-01T10:00:00.123456+02:00",
        "2026-12-01T10:00:00",
        "2026-12-01 10:00:00Z",
        "2026-13-01T10:00:00Z",
        "2026-12-01T10:00:00+0200",
        "not a time",
        "",
    ]
)
_MUTATIONS = st.one_of(
    st.tuples(st.just("time"), _TIMES),
    st.tuples(st.just("request.not_before"), _TIMES | st.none()),
    st.tuples(st.just("schema_version"), st.sampled_from([1, 2, 0, "1", None])),
    st.tuples(st.just("user"), st.sampled_from(["alice", "", "a.b", "x" * 64, "x" * 65])),
    st.tuples(
        st.just("request.secrets"),
        st.lists(st.sampled_from(["API", "a.b", "a..b", ".a", "a.", "a/b", "x" * 129]), max_size=3),
    ),
    st.tuples(st.just("request.runtime"), st.sampled_from(["bash", "python", "ruby", 1])),
    st.tuples(st.just("request.priority"), st.sampled_from(["low", "urgent"])),
    st.tuples(st.sampled_from(["extra", "request.extra"]), st.integers()),
    st.tuples(st.just("attempt"), st.sampled_from([1, 0, -1, 2**63, 1.5])),
)


@hsettings(max_examples=300)
@given(st.lists(_MUTATIONS, min_size=0, max_size=4))
def test_the_schema_and_the_service_agree_on_every_request(
    mutations: list[tuple[str, Any]],
) -> None:
    """Generated requests, valid and invalid: jsonschema (with date-time checked) accepts a
    request exactly when the codec decodes it."""
    doc = _good()
    for path, value in mutations:
        *parents, leaf = path.split(".")
        target = doc
        for key in parents:
            target = target[key]
        target[leaf] = value
    try:
        decode(msgspec.json.encode(doc))
    except EventDecodeError:
        decoded = False
    else:
        decoded = True
    errors = [e.message for e in VALIDATOR.iter_errors(doc)]
    assert decoded == (not errors), (mutations, errors)


@pytest.mark.timeout(30)
def test_the_nesting_scan_is_linear() -> None:
    """An unterminated string of escaped quotes (1 MB) is scanned in one pass, not once per
    quote (that took hours before, so this test's timeout would end it): it is refused."""
    data = b'"' + b'\\"' * 500_000 + b"[]" * 70
    assert nesting_depth(data, 68) <= 68  # the unterminated string swallows the rest
    with pytest.raises(EventDecodeError):
        decode(data, max_bytes=2 << 20)
