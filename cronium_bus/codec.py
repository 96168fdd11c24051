"""Encoding and decoding of events, with one typed error for everything that can go wrong."""

from __future__ import annotations

from typing import Final, TypeVar

import msgspec

from cronium_bus.errors import EventDecodeError
from cronium_bus.events import EVENT_TYPES, SCHEMA_VERSION, AnyEvent, Event

DEFAULT_MAX_BYTES: Final = 1024 * 1024

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
    try:
        probe = _probe.decode(data)
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: test it first
        raise EventDecodeError(
            f"not an event envelope: {exc}",
            hint="an event is a JSON object with 'type' and 'schema_version'",
        ) from exc
    except msgspec.DecodeError as exc:
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
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
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
