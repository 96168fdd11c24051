"""Encoding and decoding of events, with one typed error for everything that can go wrong.

Every failure to decode — size, syntax, invalid UTF-8, nesting, numbers out of range, a time
without an offset, an unknown field — is one :class:`EventDecodeError` with a reason. JSON
values inside events (``input``, ``output``, variables) nest at most :data:`MAX_JSON_DEPTH`
levels; the whole message is checked before it is decoded (msgspec's own recursion limit would
escape as a ``RecursionError``), by a scan that costs nothing unless the message holds more
brackets than the limit.
"""

from __future__ import annotations

import re
from typing import Final, TypeVar

import msgspec

from cronium_bus.errors import EventDecodeError
from cronium_bus.events import EVENT_TYPES, SCHEMA_VERSION, AnyEvent, Event

DEFAULT_MAX_BYTES: Final = 1024 * 1024
MAX_JSON_DEPTH: Final = 64
"""How deeply a JSON value (input, output, a variable) may nest: arrays and objects."""
ENVELOPE_DEPTH: Final = 4
"""Levels an event adds around its values (envelope, request, a field's container)."""
_TOKENS: Final = re.compile(rb'"(?:[^"\\]|\\[\s\S])*+"?|[\[\]{}]')
"""A string (possessive, so an unterminated one costs one pass, not one per quote) or a
bracket: the scan is linear in the message's length."""


def nesting_depth(data: bytes, limit: int) -> int:
    """How deeply ``data`` (JSON text) nests — over ``limit`` exactly when it nests deeper than
    ``limit``; at or under it, possibly an upper bound (brackets inside strings do not count).
    Cheap unless ``data`` holds more than ``limit`` opening brackets."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return min(data.count(b"[") + data.count(b"{"), limit)
    depth = deepest = 0
    for token in _TOKENS.finditer(data):
        char = token.group()
        if char in (b"[", b"{"):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif char in (b"]", b"}"):
            depth -= 1
    return deepest


def check_depth(data: bytes, limit: int = MAX_JSON_DEPTH) -> None:
    """Raise :class:`EventDecodeError` when ``data`` nests deeper than ``limit``."""
    if nesting_depth(data, limit) > limit:
        raise EventDecodeError(
            f"JSON nests deeper than {limit} levels",
            hint=f"JSON values (input, output, variables) nest at most {MAX_JSON_DEPTH} levels",
        )


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyEvent)
_E = TypeVar("_E", bound=Event)


class _Probe(msgspec.Struct):
    type: str = ""
    schema_version: int = SCHEMA_VERSION  # omitted means the current version


_probe = msgspec.json.Decoder(_Probe)


def encode(event: Event) -> bytes:
    """Serialize an event to JSON bytes."""
    return _encoder.encode(event)


def decode(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> AnyEvent:
    """Decode one event, or raise :class:`EventDecodeError` with a reason a person can act on.

    Checks, in order: size, JSON syntax, a known ``type``, the supported ``schema_version``, then
    every field of that type.
    """
    if len(data) > max_bytes:
        raise EventDecodeError(
            f"message is {len(data):,} bytes, over the limit of {max_bytes:,} bytes",
            hint="keep requests small: pass large input by reference, not inline",
        )
    check_depth(data, MAX_JSON_DEPTH + ENVELOPE_DEPTH)
    try:
        probe = _probe.decode(data)
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: test it first
        raise EventDecodeError(
            f"not an event envelope: {exc}",
            hint="an event is a JSON object with 'type' and 'schema_version'",
        ) from exc
    except Exception as exc:
        raise EventDecodeError(
            f"malformed JSON: {exc}", hint="send one JSON object per message"
        ) from exc
    if probe.type not in EVENT_TYPES:
        known = ", ".join(sorted(EVENT_TYPES))
        raise EventDecodeError(
            f"unknown event type {probe.type!r}" if probe.type else "missing event type",
            hint=f"'type' must be one of: {known}",
        )
    if probe.schema_version != SCHEMA_VERSION:
        raise EventDecodeError(
            f"{probe.type} schema_version {probe.schema_version} is not supported",
            hint=f"this service reads schema_version {SCHEMA_VERSION}; see schemas/",
            event_type=probe.type,
        )
    try:
        event: AnyEvent = _decoder.decode(data)
    except Exception as exc:
        raise EventDecodeError(
            f"invalid {probe.type}: {exc}",
            hint=f"validate against schemas/{probe.type}.v{SCHEMA_VERSION}.json",
            event_type=probe.type,
        ) from exc
    return event


def decode_as(data: bytes, cls: type[_E], *, max_bytes: int = DEFAULT_MAX_BYTES) -> _E:
    """Decode and require a specific event class."""
    event = decode(data, max_bytes=max_bytes)
    if not isinstance(event, cls):
        raise EventDecodeError(
            f"expected {cls.__struct_config__.tag}, got {event.type}",
            event_type=event.type,
        )
    return event
