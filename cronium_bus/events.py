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


class WorkflowRef(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The workflow an execution is a node of (set by the workflow consumer)."""

    workflow_id: Id
    node: Id


class Notify(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A ``notify`` action: ``notification.requested`` with ``message`` rendered from the
    execution's fields (``{{execution_id}}``, ``{{status}}``, ... — no code, no attributes; see
    :mod:`consumers.workflow.template`). The app delivers it to ``channel`` / ``to``."""

    message: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    channel: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_-]{0,31}$")] = "default"
    to: tuple[Annotated[str, msgspec.Meta(max_length=256)], ...] = ()


class Action(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One conditional action: exactly one of ``run`` (another request, whose input is this
    execution's output) or ``notify``."""

    run: Request | None = None
    notify: Notify | None = None


ActionList = Annotated[tuple[Action, ...], msgspec.Meta(max_length=10)]


class Actions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Cronium's conditional actions, fired after the execution ends, in this order: ``always``,
    then ``success`` or ``failure``, then ``condition`` (when the script set it true)."""

    always: ActionList = ()
    success: ActionList = ()
    failure: ActionList = ()
    condition: ActionList = ()


ScheduleName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,40}$")]


class ScheduleRef(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The schedule and fire an execution was started by (set by the scheduler)."""

    name: ScheduleName
    schedule_id: Id
    fire_at: Time

    def __post_init__(self) -> None:
        in_utc(self)


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
    input_schema: dict[str, Any] | None = None
    """A JSON Schema (2020-12) the input must satisfy, or the request is rejected naming the
    field (workflow nodes declare one; any request may)."""
    on: Actions | None = None
    """Conditional actions after the execution ends (see :class:`Actions`)."""
    workflow: WorkflowRef | None = None
    """Set on the executions of a workflow's nodes."""
    schedule: ScheduleRef | None = None
    """Set on the executions a schedule fired."""

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


# --------------------------------------------------------------------------- workflows

When = Literal["always", "on_success", "on_failure", "on_condition"]
WHENS: Final[tuple[When, ...]] = ("always", "on_success", "on_failure", "on_condition")


class Edge(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, rename={"source": "from"}
):
    """``from`` → ``to``, taken when ``when`` holds for ``from``'s outcome."""

    source: Id
    to: Id
    when: When = "on_success"


class Node(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One node of a workflow: a request template with a name (its input comes from its
    predecessors; ``input_schema`` checks it)."""

    name: Id


class Definition(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A workflow: its name, its default input, its nodes and edges."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,128}$")]
    input: Any = None
    nodes: Annotated[tuple[Node, ...], msgspec.Meta(min_length=1)]
    edges: tuple[Edge, ...] = ()

    def predecessors(self, name: str) -> list[Edge]:
        """Edges into ``name``, in definition order."""
        return [e for e in self.edges if e.to == name]

    @property
    def starts(self) -> list[str]:
        """Nodes with no incoming edge: they run at once, in parallel."""
        targets = {e.to for e in self.edges}
        return [n.name for n in self.nodes if n.name not in targets]

    def index(self, name: str) -> int:
        """The position of node ``name`` (its execution id's suffix)."""
        return next(i for i, n in enumerate(self.nodes) if n.name == name)


# --------------------------------------------------------------------------- schedules

Overlap = Literal["skip", "queue", "allow"]
Missed = Literal["skip", "once"]


class ScheduleSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A schedule: what to run (``request``) and when — exactly one of ``every_s`` (an interval,
    at least 1 s), ``cron`` (five fields, or six with seconds first) or ``at`` (one shot) — with
    an optional time zone (for ``cron``), start and end, a maximum number of runs (then the
    schedule pauses itself), what to do with a fire while the previous run still runs
    (``overlap``) and with fires that fell while the service was down (``missed``)."""

    name: ScheduleName
    every_s: Annotated[float, msgspec.Meta(ge=1, le=366 * 86400)] | None = None
    cron: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    at: Time | None = None
    tz: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    start: Time | None = None
    end: Time | None = None
    max_runs: Annotated[int, msgspec.Meta(ge=1, le=MAX_SAFE_INT)] | None = None
    overlap: Overlap = "skip"
    missed: Missed = "once"
    request: Request

    def __post_init__(self) -> None:
        in_utc(self)


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


class ActionFired(Event, frozen=True, kw_only=True, tag="execution.action_fired"):
    """A conditional action of this execution fired (``on.<when>[index]``): the execution it
    requested or the notification it asked for, or why it could not."""

    when: Literal["always", "success", "failure", "condition"]
    index: Annotated[int, msgspec.Meta(ge=0, le=100)]
    action: Literal["run", "notify"]
    ok: bool = True
    target_id: Id | None = None
    detail: str = ""


class NotificationRequested(Event, frozen=True, kw_only=True, tag="notification.requested"):
    """A ``notify`` action's message, for the app to deliver (nothing here sends mail)."""

    when: Literal["always", "success", "failure", "condition"]
    index: Annotated[int, msgspec.Meta(ge=0, le=100)]
    channel: str
    to: tuple[str, ...] = ()
    message: str


# Workflow events: ``execution_id`` is the workflow's id; they live on its subjects
# (``cronium.exec.<owner>.<workflow id>.workflow_<event>``) beside its nodes' executions.

NodeOutcome = Literal["succeeded", "failed", "rejected", "skipped", "cancelled"]


class WorkflowRequested(Event, frozen=True, kw_only=True, tag="workflow.requested"):
    """Someone asks to run a workflow: its definition and input, as a request carries its
    code (``input`` null: the definition's default input)."""

    definition: Definition
    input: Any = None


class WorkflowRejected(Event, frozen=True, kw_only=True, tag="workflow.rejected"):
    """The workflow cannot run (its definition or input); terminal."""

    error: ErrorInfo


class NodeRequested(Event, frozen=True, kw_only=True, tag="workflow.node_requested"):
    """The workflow consumer requested a node's execution (``node_execution_id``)."""

    node: Id
    node_execution_id: Id
    input_bytes: PositiveInt = 0


class NodeSkipped(Event, frozen=True, kw_only=True, tag="workflow.node_skipped"):
    """A node will not run, and why (the skip propagates to what depends on it)."""

    node: Id
    reason: str


class NodeEnded(Event, frozen=True, kw_only=True, tag="workflow.node_ended"):
    """A node's execution ended: its outcome, output and condition, as its edges see them.
    ``status`` is the execution's own (succeeded, failed, timed_out, rejected, ...)."""

    node: Id
    node_execution_id: Id
    status: str
    output: Any = None
    output_ref: PayloadRef | None = None
    condition: bool | None = None
    error: ErrorInfo | None = None


class NodeSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One node's outcome in a workflow's terminal event."""

    node: Id
    status: str
    execution_id: Id | None = None
    reason: str = ""


class WorkflowEnded(Event, frozen=True, kw_only=True):
    """Fields every terminal event of a workflow carries: every node's outcome."""

    nodes: tuple[NodeSummary, ...] = ()


class WorkflowSucceeded(WorkflowEnded, frozen=True, kw_only=True, tag="workflow.succeeded"):
    """Every node that ran succeeded."""


class WorkflowFailed(WorkflowEnded, frozen=True, kw_only=True, tag="workflow.failed"):
    """A node that ran did not succeed."""


class WorkflowCancelled(WorkflowEnded, frozen=True, kw_only=True, tag="workflow.cancelled"):
    """Cancelled on request: nothing new started, what ran was cancelled."""


# Schedule events: ``execution_id`` is the schedule's id (``sch-<name>-<hash>``); they live on
# its subjects (``cronium.exec.<owner>.<schedule id>.schedule_<event>``).


class ScheduleCreated(Event, frozen=True, kw_only=True, tag="schedule.created"):
    """A schedule was created (by its owner, or an admin for them)."""

    spec: ScheduleSpec


class ScheduleUpdated(Event, frozen=True, kw_only=True, tag="schedule.updated"):
    """A schedule was replaced by a new spec (its fires so far are kept)."""

    spec: ScheduleSpec


class SchedulePaused(Event, frozen=True, kw_only=True, tag="schedule.paused"):
    """The schedule stopped firing: on request, at ``max_runs``, or past its end."""

    reason: str = ""


class ScheduleResumed(Event, frozen=True, kw_only=True, tag="schedule.resumed"):
    """The schedule fires again."""


class ScheduleDeleted(Event, frozen=True, kw_only=True, tag="schedule.deleted"):
    """The schedule was removed; its history stays."""

    reason: str = ""


class ScheduleFired(Event, frozen=True, kw_only=True, tag="schedule.fired"):
    """A fire at ``fire_at`` started ``run_id`` (an execution id derived from the schedule and
    the fire time); ``next_at`` is when nats-server fires next."""

    fire_at: Time
    run_id: Id
    next_at: Time | None = None
    queued: bool = False


class ScheduleFireSkipped(Event, frozen=True, kw_only=True, tag="schedule.fire_skipped"):
    """A fire that started nothing, and why (overlap, missed while down, paused, ...)."""

    fire_at: Time
    reason: str
    next_at: Time | None = None


class ScheduleFireQueued(Event, frozen=True, kw_only=True, tag="schedule.fire_queued"):
    """A fire waits for the previous run to end (overlap ``queue``)."""

    fire_at: Time
    next_at: Time | None = None


class ScheduleRunEnded(Event, frozen=True, kw_only=True, tag="schedule.run_ended"):
    """A run the schedule started ended (the counters come from these)."""

    run_id: Id
    status: str


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
    | ActionFired
    | NotificationRequested
    | WorkflowRequested
    | WorkflowRejected
    | NodeRequested
    | NodeSkipped
    | NodeEnded
    | WorkflowSucceeded
    | WorkflowFailed
    | WorkflowCancelled
    | ScheduleCreated
    | ScheduleUpdated
    | SchedulePaused
    | ScheduleResumed
    | ScheduleDeleted
    | ScheduleFired
    | ScheduleFireSkipped
    | ScheduleFireQueued
    | ScheduleRunEnded
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
        ActionFired,
        NotificationRequested,
        WorkflowRequested,
        WorkflowRejected,
        NodeRequested,
        NodeSkipped,
        NodeEnded,
        WorkflowSucceeded,
        WorkflowFailed,
        WorkflowCancelled,
        ScheduleCreated,
        ScheduleUpdated,
        SchedulePaused,
        ScheduleResumed,
        ScheduleDeleted,
        ScheduleFired,
        ScheduleFireSkipped,
        ScheduleFireQueued,
        ScheduleRunEnded,
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
    """The subject's last token for a type tag: the tag's last part for an execution's events
    (``execution.requested`` → ``requested``), the whole tag with ``_`` for the others
    (``workflow.requested`` → ``workflow_requested``), so they never share a subject."""
    kind, _, last = event_type.rpartition(".")
    if kind in ("workflow", "notification", "schedule"):
        return f"{kind}_{last}"
    return last
