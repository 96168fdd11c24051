"""The event catalogue: every lifecycle change and log chunk of an execution.

Wire types are frozen ``msgspec.Struct`` classes. Every event shares one envelope (``Event``) and is
told apart by its ``type`` tag; ``schema_version`` is the version of that type's schema. The JSON
Schemas in ``schemas/`` are generated from these classes (``make schemas``) and a test fails when
they drift, so a producer in any language can validate what it sends.

Lifecycle (DESIGN.md): ``requested → rejected`` or ``requested → queued → started →
succeeded | failed | timed_out | cancelled | lost``; a failed or lost attempt with retries left goes
``retry_scheduled → queued`` with ``attempt + 1``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal, TypedDict, TypeVar

import msgspec

from cronium_bus.errors import CroniumError, ErrorKind
from cronium_bus.ids import ID_PATTERN, NAME_HINT, NAME_PATTERN, new_id

SCHEMA_VERSION: Final = 1

Runtime = Literal["bash", "python", "node"]
Priority = Literal["low", "normal", "high", "critical"]
RunnerKind = Literal["container", "ssh"]
LogStream = Literal["stdout", "stderr"]
Backoff = Literal["fixed", "exponential"]

PRIORITIES: Final[tuple[Priority, ...]] = ("critical", "high", "normal", "low")
"""Lanes in the order a runner prefers them."""

Id = Annotated[str, msgspec.Meta(pattern=ID_PATTERN, description="[A-Za-z0-9_-]{1,64}")]
Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN, description=NAME_HINT)]
MAX_SAFE_INT: Final = 2**53 - 1
"""The largest integer every JSON reader keeps exactly (JavaScript's Number.MAX_SAFE_INTEGER)."""
PositiveInt = Annotated[int, msgspec.Meta(ge=0, le=MAX_SAFE_INT)]
Time = Annotated[
    datetime,
    msgspec.Meta(
        tz=True,
        description="RFC 3339 date-time with an offset (Z or ±hh:mm); read and kept in UTC.",
    ),
]
"""A point in time on the wire: an offset is required (a naive time is refused), and every
time is normalized to UTC when decoded or built, so ``+02:00`` is never taken for UTC."""

_ZERO: Final = timedelta(0)


def in_utc(struct: msgspec.Struct) -> None:
    """Normalize a struct's datetime fields to UTC in place; refuse a naive one."""
    for name in struct.__struct_fields__:
        value = getattr(struct, name)
        if not isinstance(value, datetime):
            continue
        offset = value.utcoffset()
        if offset is None:
            raise ValueError(f"{name} has no UTC offset: write it as RFC 3339, e.g. ...Z")
        if offset != _ZERO or value.tzinfo is not UTC:
            try:
                utc = value.astimezone(UTC)
            except OverflowError as exc:  # e.g. 0001-01-01T00:00:00+01:00
                raise ValueError(f"{name} is out of range once in UTC") from exc
            msgspec.structs.force_setattr(struct, name, utc)


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


# --------------------------------------------------------------------------- request parts


class Limits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Resource limits asked for by a request; ``None`` means the configured default."""

    cpus: Annotated[float, msgspec.Meta(gt=0)] | None = None
    memory_bytes: Annotated[int, msgspec.Meta(gt=0)] | None = None
    pids: Annotated[int, msgspec.Meta(gt=0)] | None = None


class PayloadRef(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where a payload is and what it must be: ``name`` in the payload bucket, its exact size in
    bytes and the hex SHA-256 of its bytes."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}/[A-Za-z0-9_.-]{1,80}$")]
    size: Annotated[int, msgspec.Meta(ge=0)]
    sha256: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a failed attempt is retried: ``max_attempts`` counts the first attempt too."""

    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1
    backoff: Backoff = "exponential"
    base_s: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    max_delay_s: Annotated[float, msgspec.Meta(ge=0)] = 3600.0
    jitter: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.1
    retry_on: tuple[ErrorKind, ...] = ("runner_lost", "infrastructure")


class Request(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a producer asks to run. Unknown fields are refused so a typo is never ignored."""

    runtime: Runtime
    code: str
    runner: RunnerKind = "container"
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    limits: Limits = Limits()
    input: Any = None
    input_ref: PayloadRef | None = None
    """An input over ``limits.max_input``, in the payload store (then ``input`` is null)."""
    priority: Priority = "normal"
    secrets: tuple[Name, ...] = ()
    targets: tuple[str, ...] = ()
    network: bool = False
    event_ref: Name | None = None
    retry: RetryPolicy | None = None
    not_before: Time | None = None

    def __post_init__(self) -> None:
        in_utc(self)


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Why something failed: a kind from one enum, a message, and what to do about it."""

    kind: ErrorKind
    message: str
    hint: str = ""


class PhaseDurations(msgspec.Struct, frozen=True, kw_only=True):
    """Milliseconds spent preparing, running and cleaning up one attempt."""

    setup_ms: float = 0.0
    run_ms: float = 0.0
    cleanup_ms: float = 0.0


class ResourceUsage(msgspec.Struct, frozen=True, kw_only=True):
    """What an attempt consumed, where the runner could measure it."""

    peak_memory_bytes: int | None = None
    cpu_time_ms: float | None = None
    output_bytes: int = 0


# --------------------------------------------------------------------------- the envelope


class Event(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", forbid_unknown_fields=True
):
    """Envelope shared by every event. ``type`` (the tag) names the event. Unknown fields are
    refused, as in a request: what this version does not know, it does not silently drop."""

    event_id: Id
    schema_version: Literal[1] = SCHEMA_VERSION
    time: Time
    execution_id: Id
    attempt: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1
    correlation_id: Id
    causation_id: Id | None = None
    producer: Annotated[str, msgspec.Meta(max_length=128)]
    user: Annotated[
        str,
        msgspec.Meta(
            pattern=ID_PATTERN,
            description="The owner: the identity that published the request, and the owner "
            "token of every subject of the execution ([A-Za-z0-9_-]{1,64}).",
        ),
    ]

    def __post_init__(self) -> None:
        in_utc(self)

    @property
    def type(self) -> str:
        """The event's type tag, e.g. ``execution.requested``."""
        tag = self.__struct_config__.tag
        assert isinstance(tag, str)
        return tag


class Requested(Event, frozen=True, kw_only=True, tag="execution.requested"):
    """A producer asks for an execution. Published on ``cronium.exec.<user>.<id>.requested``,
    which only ``user`` (or an admin or the service) may publish to; ``user`` must be the
    subject's owner or the request is rejected."""

    request: Request


class Rejected(Event, frozen=True, kw_only=True, tag="execution.rejected"):
    """The request cannot run; terminal. ``error.hint`` says how to fix the request."""

    error: ErrorInfo


class Queued(Event, frozen=True, kw_only=True, tag="execution.queued"):
    """Validated and placed on a runner lane (``cronium.jobs.<runner>.<priority>``)."""

    request: Request
    lane: str
    not_before: Time | None = None
    parent_id: Id | None = None
    """Set on the child executions of a fan-out (one per SSH target)."""


class Started(Event, frozen=True, kw_only=True, tag="execution.started"):
    """A runner holds the attempt and the script is starting."""

    runner: str
    image: str | None = None
    target: str | None = None


class Terminal(Event, frozen=True, kw_only=True):
    """Fields every terminal event carries."""

    runner: str = ""
    exit_code: int | None = None
    error: ErrorInfo | None = None
    durations: PhaseDurations = PhaseDurations()
    usage: ResourceUsage = ResourceUsage()
    image: str | None = None
    image_id: str | None = None
    stdout_lines: PositiveInt = 0
    stderr_lines: PositiveInt = 0


class Succeeded(Terminal, frozen=True, kw_only=True, tag="execution.succeeded"):
    """The script exited 0."""


class Failed(Terminal, frozen=True, kw_only=True, tag="execution.failed"):
    """The attempt failed; ``error.kind`` says how (nonzero_exit, oom, output_limit, ...)."""


class TimedOut(Terminal, frozen=True, kw_only=True, tag="execution.timed_out"):
    """The script ran past its timeout and was stopped (SIGTERM, grace, SIGKILL)."""


class Cancelled(Terminal, frozen=True, kw_only=True, tag="execution.cancelled"):
    """Cancelled on request, before or while running."""


class Lost(Terminal, frozen=True, kw_only=True, tag="execution.lost"):
    """The runner holding the attempt stopped proving it was alive."""


class Partial(Terminal, frozen=True, kw_only=True, tag="execution.partial"):
    """A fan-out parent: some targets succeeded, some did not."""


class ChildRef(msgspec.Struct, frozen=True, kw_only=True):
    """One child execution of a fan-out."""

    execution_id: Id
    target: str


class FannedOut(Event, frozen=True, kw_only=True, tag="execution.fanned_out"):
    """A request with several targets was split into one child execution per target."""

    children: tuple[ChildRef, ...]


class RetryScheduled(Event, frozen=True, kw_only=True, tag="execution.retry_scheduled"):
    """The attempt failed with retries left; attempt ``next_attempt`` is queued at ``at``."""

    next_attempt: Annotated[int, msgspec.Meta(ge=2)]
    at: Time
    reason: ErrorInfo


class CancelRequested(Event, frozen=True, kw_only=True, tag="execution.cancel_requested"):
    """Someone asked to cancel the execution."""

    reason: str = ""


class LogChunk(Event, frozen=True, kw_only=True, tag="log.chunk"):
    """Consecutive lines of one stream; line ``i`` has sequence number ``first_seq + i``."""

    stream: LogStream
    first_seq: PositiveInt
    lines: tuple[str, ...]
    source: str | None = None


class HelperCalled(Event, frozen=True, kw_only=True, tag="helper.called"):
    """A script called a helper (input, output, getVariable, ...). The audit record of it."""

    helper: str
    key: str | None = None
    ok: bool = True
    detail: str = ""


class OutputSet(Event, frozen=True, kw_only=True, tag="execution.output_set"):
    """The script set its output (``output(data)``): inline, or — over the inline limit — in
    the payload store, referenced by ``output_ref`` (then ``output`` is null)."""

    output: Any = None
    output_ref: PayloadRef | None = None


class ConditionSet(Event, frozen=True, kw_only=True, tag="execution.condition_set"):
    """The script set its condition (``setCondition(bool)``)."""

    condition: bool


class VariableSet(Event, frozen=True, kw_only=True, tag="variable.set"):
    """The script set a user-scoped variable. The value lives in the variables bucket."""

    key: Name
    size_bytes: PositiveInt


_T = TypeVar("_T", bound=Terminal)
TerminalEvent = Succeeded | Failed | TimedOut | Cancelled | Lost | Partial
AnyEvent = (
    Requested
    | Rejected
    | Queued
    | Started
    | Succeeded
    | Failed
    | TimedOut
    | Cancelled
    | Lost
    | Partial
    | FannedOut
    | RetryScheduled
    | CancelRequested
    | LogChunk
    | HelperCalled
    | OutputSet
    | ConditionSet
    | VariableSet
)

EVENT_TYPES: Final[dict[str, type[Event]]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (
        Requested,
        Rejected,
        Queued,
        Started,
        Succeeded,
        Failed,
        TimedOut,
        Cancelled,
        Lost,
        Partial,
        FannedOut,
        RetryScheduled,
        CancelRequested,
        LogChunk,
        HelperCalled,
        OutputSet,
        ConditionSet,
        VariableSet,
    )
}
TERMINAL_TYPES: Final = frozenset(t for t, cls in EVENT_TYPES.items() if issubclass(cls, Terminal))


class EnvelopeFields(TypedDict):
    """The envelope of a new event, ready to splat into an event constructor."""

    event_id: str
    time: datetime
    execution_id: str
    attempt: int
    correlation_id: str
    causation_id: str | None
    producer: str
    user: str


def error_info(exc: CroniumError) -> ErrorInfo:
    """What an event says about a :class:`CroniumError`: its kind, message and hint."""
    return ErrorInfo(kind=exc.kind, message=exc.message, hint=exc.hint)


def new_request(execution_id: str, request: Request, *, producer: str, user: str) -> Requested:
    """The ``execution.requested`` event that starts ``execution_id`` (its own correlation)."""
    return Requested(
        event_id=new_id("ev"),
        time=utcnow(),
        execution_id=execution_id,
        correlation_id=execution_id,
        producer=producer,
        user=user,
        request=request,
    )


def follow_up(cause: Event, producer: str, *, attempt: int | None = None) -> EnvelopeFields:
    """The envelope of an event caused by ``cause``: same execution, correlation and user."""
    return EnvelopeFields(
        event_id=new_id("ev"),
        time=utcnow(),
        execution_id=cause.execution_id,
        attempt=cause.attempt if attempt is None else attempt,
        correlation_id=cause.correlation_id,
        causation_id=cause.event_id,
        producer=producer,
        user=cause.user,
    )


def make_terminal(
    cls: type[_T],
    env: EnvelopeFields,
    *,
    runner: str,
    error: ErrorInfo | None = None,
    exit_code: int | None = None,
    durations: PhaseDurations | None = None,
    usage: ResourceUsage | None = None,
    stdout_lines: int = 0,
    stderr_lines: int = 0,
    image: str | None = None,
    image_id: str | None = None,
) -> _T:
    """A terminal event of class ``cls`` (typed, without splatting loose dicts)."""
    return cls(
        **env,
        runner=runner,
        error=error,
        exit_code=exit_code,
        durations=durations or PhaseDurations(),
        usage=usage or ResourceUsage(),
        stdout_lines=stdout_lines,
        stderr_lines=stderr_lines,
        image=image,
        image_id=image_id,
    )


def short_type(event_type: str) -> str:
    """The last part of a type tag, used as the subject's last token (``requested``)."""
    return event_type.rsplit(".", 1)[-1]
