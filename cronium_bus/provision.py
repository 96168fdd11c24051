"""Idempotent provisioning of streams and buckets from settings.

Run at start by ``cronium up`` and by every consumer; a changed limit in the settings updates the
stream in place.
"""

from __future__ import annotations

import contextlib

import nats.js.errors
import structlog
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue

from cronium_bus.errors import BusUnavailableError
from cronium_bus.ids import new_id
from cronium_bus.payloads import ensure_store, payload_config
from cronium_bus.settings import Settings
from cronium_bus.subjects import (
    CIRCUITS_BUCKET,
    DLQ_ALL,
    DLQ_STREAM,
    EXEC_ALL,
    EXEC_STREAM,
    HEARTBEAT_BUCKET,
    JOBS_ALL,
    JOBS_STREAM,
    LIMITS_BUCKET,
    LOGS_ALL,
    LOGS_STREAM,
    META_BUCKET,
    SCHED_ALL,
    SCHED_STREAM,
    SCHEDULES_BUCKET,
    SECRETS_BUCKET,
    SERVERS_BUCKET,
    VARIABLES_BUCKET,
)

log = structlog.get_logger(__name__)


def stream_configs(settings: Settings) -> list[StreamConfig]:
    """The streams of the service, as the settings define them."""
    s = settings.streams
    return [
        StreamConfig(
            name=EXEC_STREAM,
            description="Execution lifecycle events (source of truth)",
            subjects=[EXEC_ALL],
            retention=RetentionPolicy.LIMITS,
            max_age=s.exec_max_age,
            max_bytes=s.exec_max_bytes,
            discard=DiscardPolicy.OLD,
            storage=StorageType.FILE,
            num_replicas=s.replicas,
            duplicate_window=s.duplicate_window,
            max_msg_size=s.max_msg_size,
        ),
        StreamConfig(
            name=JOBS_STREAM,
            description="Runner lanes: one subject per runner kind and priority",
            subjects=[JOBS_ALL],
            retention=RetentionPolicy.WORK_QUEUE,
            max_age=s.exec_max_age,
            discard=DiscardPolicy.OLD,
            storage=StorageType.FILE,
            num_replicas=s.replicas,
            duplicate_window=s.duplicate_window,
            max_msg_size=s.max_msg_size,
        ),
        StreamConfig(
            name=LOGS_STREAM,
            description="Log chunks for live tail; archived by the projector",
            subjects=[LOGS_ALL],
            retention=RetentionPolicy.LIMITS,
            max_age=s.logs_max_age,
            max_bytes=s.logs_max_bytes,
            discard=DiscardPolicy.OLD,
            storage=StorageType.FILE,
            num_replicas=s.replicas,
            duplicate_window=s.duplicate_window,
            max_msg_size=s.max_msg_size,
        ),
        StreamConfig(
            name=SCHED_STREAM,
            description="Schedule messages nats-server fires from, and their fires",
            subjects=[SCHED_ALL],
            retention=RetentionPolicy.LIMITS,
            max_age=s.exec_max_age,
            max_msgs_per_subject=1000,
            discard=DiscardPolicy.OLD,
            storage=StorageType.FILE,
            num_replicas=s.replicas,
            duplicate_window=s.duplicate_window,
            max_msg_size=s.max_msg_size,
            allow_msg_schedules=True,
            allow_msg_ttl=True,
        ),
        StreamConfig(
            name=DLQ_STREAM,
            description="Messages a consumer gave up on, with the reason in headers",
            subjects=[DLQ_ALL],
            retention=RetentionPolicy.LIMITS,
            max_age=s.exec_max_age,
            discard=DiscardPolicy.OLD,
            storage=StorageType.FILE,
            num_replicas=s.replicas,
            duplicate_window=s.duplicate_window,
            max_msg_size=s.max_msg_size,
        ),
    ]


def bucket_configs(settings: Settings) -> list[KeyValueConfig]:
    """The KV buckets of the service."""

    def bucket(
        name: str,
        description: str,
        *,
        history: int = 1,
        ttl: float | None = None,
        max_value_size: int | None = None,
    ) -> KeyValueConfig:
        return KeyValueConfig(
            bucket=name,
            description=description,
            history=history,
            ttl=ttl,
            max_value_size=max_value_size,
            replicas=settings.streams.replicas,
            storage=StorageType.FILE,
        )

    return [
        bucket(
            HEARTBEAT_BUCKET,
            "Consumer heartbeats (liveness); entries expire",
            ttl=max(10.0, settings.runner.heartbeat * 5),
        ),
        bucket(
            VARIABLES_BUCKET, "User-scoped script variables", history=5, max_value_size=1024 * 1024
        ),
        bucket(
            SECRETS_BUCKET,
            "Secrets, encrypted at rest with the settings' key",
            max_value_size=64 * 1024,
        ),
        bucket(
            SERVERS_BUCKET,
            "Users' servers for the SSH runner (keys are secrets)",
            max_value_size=64 * 1024,
        ),
        bucket(
            CIRCUITS_BUCKET, "Circuit-breaker state per SSH host, as the runners see it", ttl=3600.0
        ),
        bucket(
            LIMITS_BUCKET,
            "Running and waiting executions per user and per event (concurrency limits)",
            ttl=86400.0,
        ),
        bucket(META_BUCKET, "Facts of this installation (its id)", max_value_size=1024),
        bucket(SCHEDULES_BUCKET, "Schedules' folded state: snapshots of their events"),
    ]


async def provision(js: JetStreamContext, settings: Settings) -> None:
    """Create or update every stream and bucket; safe to run any number of times."""
    for config in stream_configs(settings):
        assert config.name is not None
        try:
            await js.stream_info(config.name)
        except nats.js.errors.NotFoundError:
            await js.add_stream(config)
            log.debug("stream created", stream=config.name)
            continue
        except nats.js.errors.ServiceUnavailableError as exc:
            raise BusUnavailableError(
                "JetStream is not enabled on this NATS server",
                hint="run nats-server with -js (cronium up does this)",
            ) from exc
        try:
            await js.update_stream(config)
        except nats.js.errors.BadRequestError as exc:
            raise BusUnavailableError(
                f"stream {config.name} exists with settings that cannot be changed: {exc}",
                hint="back up and delete the stream, or restore the previous settings",
            ) from exc
    for bucket in bucket_configs(settings):
        await ensure_bucket(js, bucket)
    s = settings.streams
    await ensure_store(js, payload_config(s.exec_max_age, s.payloads_max_bytes, s.replicas))


async def installation_id(js: JetStreamContext) -> str:
    """This installation's id: made once, on first use, and the same for every process of it
    (runners label their containers and runtime dirs with it, and reap only their own)."""
    kv = await js.key_value(META_BUCKET)
    with contextlib.suppress(
        nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError
    ):
        await kv.create("installation", new_id("in").encode())
    value = await kv_value(js, META_BUCKET, "installation")
    if value is None:
        raise BusUnavailableError("the installation id could not be read", hint="run `cronium up`")
    return value.decode()


async def bucket_keys(js: JetStreamContext, bucket: str) -> list[str]:
    """The keys of a KV bucket that hold a message now, sorted: read from the bucket stream's
    subject list in one request. ``kv.keys()`` (a watcher) was seen to return before it had
    every key on a loaded machine — a heartbeat missed that way makes a live runner look dead.
    A deleted or purged key still has its marker: readers skip keys whose value is ``None``."""
    prefix = f"$KV.{bucket}."
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=f"{prefix}>")
    return sorted(subject.removeprefix(prefix) for subject in (info.state.subjects or {}))


async def kv_value(js: JetStreamContext, bucket: str, key: str) -> bytes | None:
    """The value stored under ``key``, or ``None`` when the key is absent or deleted."""
    kv = await js.key_value(bucket)
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        return None
    return entry.value or None


async def ensure_bucket(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    """Open a KV bucket, creating it if missing."""
    try:
        return await js.key_value(config.bucket)
    except nats.js.errors.BucketNotFoundError:
        return await js.create_key_value(config)
