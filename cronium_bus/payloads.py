"""Payloads over the inline limits, kept in the JetStream Object Store (DESIGN.md).

Events stay small: a request whose input is larger than ``limits.max_input`` carries a
:class:`PayloadRef` (object name, size, SHA-256) instead of the value, and the input itself is
an object in the ``cronium_payloads`` bucket, uploaded by the producer before it publishes; an
``output(data)`` over 256 KiB is stored the same way by the runner and referenced from
``execution.output_set``. Whoever reads a payload checks its size and digest against the
reference, so a replaced or truncated object is an error, never silently different data.
Objects expire with the lifecycle events (``streams.exec_max_age``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import ObjectStoreConfig, StorageType

from cronium_bus.errors import CroniumError, ErrorKind
from cronium_bus.events import PayloadRef
from cronium_bus.subjects import PAYLOADS_BUCKET, PAYLOADS_STREAM
from cronium_bus.units import format_size


class PayloadError(CroniumError):
    """A referenced payload is missing, or differs from its reference."""

    kind: ErrorKind = "validation"


def payload_config(ttl_s: float, max_bytes: int, replicas: int) -> ObjectStoreConfig:
    """The bucket's configuration (provisioned with the streams)."""
    return ObjectStoreConfig(
        bucket=PAYLOADS_BUCKET,
        description="Inputs and outputs over the inline limits, referenced from events",
        ttl=ttl_s,
        max_bytes=max_bytes,
        storage=StorageType.FILE,
        replicas=replicas,
    )


async def ensure_store(js: JetStreamContext, config: ObjectStoreConfig) -> None:
    """Create the payload bucket if missing; a changed TTL or size limit is applied to its
    stream in place."""
    try:
        stream = (await js.stream_info(PAYLOADS_STREAM)).config
    except nats.js.errors.NotFoundError:
        await js.create_object_store(PAYLOADS_BUCKET, config)
        return
    if stream.max_age != config.ttl or stream.max_bytes != config.max_bytes:
        await js.update_stream(
            dataclasses.replace(stream, max_age=config.ttl, max_bytes=config.max_bytes)
        )


class PayloadStoreError(CroniumError):
    """The payload store could not keep an object (full, or not reachable)."""

    kind: ErrorKind = "infrastructure"


async def put_payload(js: JetStreamContext, name: str, data: bytes) -> PayloadRef:
    """Store ``data`` under ``name`` (replacing an object of that name); its reference."""
    ref = PayloadRef(name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest())
    msgspec.convert(msgspec.to_builtins(ref), PayloadRef)  # the name's pattern, checked early
    try:
        # refuse what cannot fit before sending a byte: cheaper than a failed upload, and the
        # producer role cannot purge the chunks of one (cronium_bus/identity/roles.py)
        info = await js.stream_info(PAYLOADS_STREAM)
        limit = info.config.max_bytes or -1
        if 0 < limit < info.state.bytes + len(data):
            raise PayloadStoreError(
                f"the payload store is full: {format_size(info.state.bytes)} of "
                f"{format_size(limit)} used, {name} needs {format_size(len(data))}",
                hint="raise streams.payloads_max_bytes or let older objects expire "
                "(streams.exec_max_age)",
            )
        store = await js.object_store(PAYLOADS_BUCKET)
        await store.put(name, data)
    except (nats.errors.Error, TimeoutError) as exc:
        raise PayloadStoreError(
            f"the payload store did not keep {name} ({format_size(len(data))}): {exc}",
            hint="if it is full, raise streams.payloads_max_bytes or let older objects expire "
            "(streams.exec_max_age)",
        ) from exc
    return ref


async def check_payload(js: JetStreamContext, ref: PayloadRef) -> None:
    """Raise :class:`PayloadError` unless the object exists with the reference's size (cheap:
    metadata only; the digest is checked when the bytes are read)."""
    store = await js.object_store(PAYLOADS_BUCKET)
    try:
        info = await store.get_info(ref.name)
    except (nats.js.errors.ObjectNotFoundError, nats.js.errors.ObjectDeletedError) as exc:
        raise _missing(ref) from exc
    if info.size != ref.size:
        raise PayloadError(
            f"payload {ref.name} is {format_size(info.size or 0)}, "
            f"the request says {format_size(ref.size)}",
            hint="upload the input again and publish a request with its new reference",
        )


async def get_payload(js: JetStreamContext, ref: PayloadRef, max_bytes: int) -> bytes:
    """The payload's bytes, checked against the reference."""
    if ref.size > max_bytes:
        raise PayloadError(
            f"payload {ref.name} is {format_size(ref.size)}, over the limit of "
            f"{format_size(max_bytes)}",
            hint="pass a smaller input, or raise limits.max_input_object",
        )
    store = await js.object_store(PAYLOADS_BUCKET)
    try:
        result = await store.get(ref.name)
    except (nats.js.errors.ObjectNotFoundError, nats.js.errors.ObjectDeletedError) as exc:
        raise _missing(ref) from exc
    data = result.data or b""
    if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha256:
        raise PayloadError(
            f"payload {ref.name} does not match its reference (size or SHA-256 differs)",
            hint="it was replaced after the request was published; upload it again and rerun",
        )
    return data


async def get_json_payload(js: JetStreamContext, ref: PayloadRef, max_bytes: int) -> Any:
    """The payload decoded as JSON (an input or output kept in the store)."""
    return msgspec.json.decode(await get_payload(js, ref, max_bytes))


def _missing(ref: PayloadRef) -> PayloadError:
    return PayloadError(
        f"payload {ref.name} is not in the payload store (never uploaded, or expired)",
        hint="upload the input before publishing the request (`cronium run --input @FILE` does)",
    )
