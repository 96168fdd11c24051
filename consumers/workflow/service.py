"""The ``workflow`` consumer: runs workflows and conditional actions, and keeps no state.

It reacts to what the streams say — a ``workflow.requested``, a cancel, an execution's terminal
event — by reading the facts back (the workflow's own events, the execution's fold), calling
the pure :func:`cronium_bus.workflows.fold.decide` and publishing what it returns. Everything it
publishes has a deterministic id: a node's execution id is ``<workflow id>-<node index>``, and a
node's ``node_requested`` / ``node_skipped`` / ``node_ended`` and the workflow's one terminal
event have message ids of their own, so a redelivery, a second consumer or one SIGKILLed at any
instant never starts a node twice or ends a workflow twice. Before it requests a node it looks
whether the node's request is already stored (the duplicate window is not forever).

Several consumers may work on one workflow at once (one reacts to a cancel while another sees
a node end): every decision it publishes on the workflow's subjects is conditional on the
workflow's last stored sequence being the one it read (``Nats-Expected-Last-Subject-Sequence``
over ``cronium.exec.<owner>.<id>.>``), so a decision taken on a stale read is refused by the
server, and the consumer reads again and decides again. A node is claimed (``node_requested``)
before its execution is requested; a claim whose request is missing (a consumer stopped
between the two) is repaired on the next step.

Conditional actions (``on:`` of any request) fire from the same terminal events:
:mod:`consumers.workflow.actions`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Final

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from consumers.deadletter import dead_letter
from consumers.workflow.actions import fire_actions
from cronium_bus import durables
from cronium_bus.authentic import decode_on
from cronium_bus.bus import Bus
from cronium_bus.errors import CroniumError, EventDecodeError
from cronium_bus.events import (
    AnyEvent,
    CancelRequested,
    ErrorInfo,
    Event,
    NodeEnded,
    NodeRequested,
    NodeSkipped,
    NodeSummary,
    PayloadRef,
    Request,
    Requested,
    WorkflowCancelled,
    WorkflowEnded,
    WorkflowFailed,
    WorkflowRef,
    WorkflowRejected,
    WorkflowRequested,
    WorkflowSucceeded,
    utcnow,
)
from cronium_bus.health import Heartbeat
from cronium_bus.history import execution_state, read_messages
from cronium_bus.ids import is_valid_id, new_id
from cronium_bus.lifecycle import Stopper
from cronium_bus.payloads import PayloadError, get_json_payload, put_payload
from cronium_bus.provision import provision
from cronium_bus.state import ExecutionState
from cronium_bus.subjects import EXEC_STREAM, exec_events, exec_subject
from cronium_bus.units import format_size
from cronium_bus.workflows.definition import MAX_WORKFLOW_ID, WorkflowError, check
from cronium_bus.workflows.fold import decide, node_execution_id
from cronium_bus.workflows.state import WorkflowState, fold_workflow

log = structlog.get_logger(__name__)
DURABLE: Final = "workflow"
ENDINGS: Final = ("rejected", "succeeded", "failed", "timed_out", "cancelled", "lost", "partial")
TRIGGERS: Final = tuple(
    f"cronium.exec.*.*.{kind}" for kind in ("workflow_requested", "cancel_requested", *ENDINGS)
)
_ATTEMPTS: Final = 20
_WRONG_LAST_SEQUENCE: Final = 10071


class _Moved(Exception):
    """The workflow's subjects got a new event since it was read."""


class _OverLimit(CroniumError):
    """A node's input would take the workflow's data over its limit."""


class _Cursor:
    """Where a step's conditional publishes stand: the workflow's last stored sequence."""

    def __init__(self, owner: str, workflow_id: str, seq: int) -> None:
        self.filter = exec_events(workflow_id, owner)
        self.seq = seq

    def headers(self) -> dict[str, str]:
        return {
            "Nats-Expected-Last-Subject-Sequence": str(self.seq),
            "Nats-Expected-Last-Subject-Sequence-Subject": self.filter,
        }


_FINALS: Final[dict[str, type[WorkflowEnded]]] = {
    "succeeded": WorkflowSucceeded,
    "failed": WorkflowFailed,
    "cancelled": WorkflowCancelled,
}


class WorkflowService:
    """Advances workflows and fires conditional actions; run one or many (one durable)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.settings = bus.settings
        self._max = bus.settings.streams.max_msg_size

    # ------------------------------------------------------------------ messages

    async def handle(self, msg: Msg) -> None:
        """React to one trigger; ack when everything it implies is published."""
        tokens = msg.subject.split(".")
        if len(tokens) != 5 or not (is_valid_id(tokens[2]) and is_valid_id(tokens[3])):
            await dead_letter(self.bus.js, DURABLE, msg, f"not a trigger: {msg.subject!r}")
            return
        owner, subject_id, kind = tokens[2], tokens[3], tokens[4]
        if kind == "workflow_requested":
            why = self._undecodable(msg)
            if why is not None:  # answered, so the requester learns why nothing runs
                await self._reject_raw(owner, subject_id, why)
            else:
                await self.advance(owner, subject_id)
        elif kind == "cancel_requested":
            await self.advance(owner, subject_id)
        else:
            await self._ended(owner, subject_id)
        await msg.ack()

    def _undecodable(self, msg: Msg) -> ErrorInfo | None:
        """Why a message on a ``workflow_requested`` subject is no workflow request."""
        try:
            event = decode_on(msg.subject, msg.data, max_bytes=self.settings.limits.max_request)
        except EventDecodeError as exc:
            return ErrorInfo(kind="validation", message=exc.message[:1000], hint=exc.hint)
        if not isinstance(event, WorkflowRequested):
            return ErrorInfo(
                kind="validation",
                message=f"{event.type} was published on the workflow request subject",
                hint="publish workflow.requested on cronium.exec.<owner>.<id>.workflow_requested",
            )
        return None

    async def _reject_raw(self, owner: str, workflow_id: str, why: ErrorInfo) -> None:
        """Reject what was published on a workflow's request subject, once (the workflow's one
        terminal id), unless a real request of that workflow is stored."""
        if await self._workflow(owner, workflow_id) is not None:
            return  # a workflow request of this id exists: junk beside it changes nothing
        rejected = WorkflowRejected(
            event_id=new_id("ev"),
            time=utcnow(),
            execution_id=workflow_id,
            correlation_id=workflow_id,
            producer=self.bus.producer,
            user=owner,
            error=why,
        )
        # under a message id of its own: a real request of this id may still come, and its
        # one terminal id must stay free for it
        await self.bus.publish(rejected, msg_id=rejected.event_id)
        log.warning("workflow request refused", workflow_id=workflow_id, reason=why.message)

    async def _request_of(self, owner: str, execution_id: str) -> Requested | None:
        """The stored request of an execution (one direct read), if it has one."""
        subject = exec_subject(owner, execution_id, "execution.requested")
        try:
            stored = await self.bus.js.get_last_msg(EXEC_STREAM, subject)
        except nats.js.errors.NotFoundError:
            return None
        try:
            event = decode_on(subject, stored.data or b"", max_bytes=self._max)
        except EventDecodeError:
            return None
        return event if isinstance(event, Requested) else None

    async def _ended(self, owner: str, execution_id: str) -> None:
        """An execution's terminal event: its actions, and its workflow's next step."""
        requested = await self._request_of(owner, execution_id)
        if requested is None:
            return  # a fan-out's child, or no request at all: nothing to do
        request = requested.request
        if request.on is None and request.workflow is None:
            return
        state = await execution_state(self.bus.js, execution_id, max_bytes=self._max, owner=owner)
        if state is None or not state.final:
            return  # a retry follows: its last attempt ends it
        if request.on is not None and state.status != "rejected":
            # a rejected request never ran, and its actions were not accepted either
            await fire_actions(self.bus, state, request, requested.event_id)
        ref = request.workflow
        if ref is not None:
            workflow = await self._workflow(owner, ref.workflow_id)
            if workflow is None or workflow.final:
                return
            node = workflow.nodes.get(ref.node)
            if node is None or execution_id != node_execution_id(
                ref.workflow_id, workflow.definition, ref.node, workflow.request_event_id
            ):
                log.warning("a node of no workflow", execution_id=execution_id, node=ref.node)
                return
            if node.status in ("pending", "running"):
                await self._publish_node_ended(workflow, ref.node, state)
            await self.advance(owner, ref.workflow_id)

    # ------------------------------------------------------------------ workflows

    async def _workflow(self, owner: str, workflow_id: str) -> WorkflowState | None:
        return (await self._workflow_at(owner, workflow_id))[0]

    async def _workflow_at(self, owner: str, workflow_id: str) -> tuple[WorkflowState | None, int]:
        """The workflow's fold and the stream sequence of its last stored event."""
        events: list[AnyEvent] = []
        last = 0
        subject = exec_events(workflow_id, owner)
        async for msg in read_messages(self.bus.js, EXEC_STREAM, subject):
            last = max(last, msg.metadata.sequence.stream)
            try:
                events.append(decode_on(msg.subject, msg.data, max_bytes=self._max))
            except EventDecodeError:
                continue
        return fold_workflow(events), last

    def _envelope(self, workflow: WorkflowState) -> dict[str, Any]:
        return {
            "event_id": new_id("ev"),
            "time": utcnow(),
            "execution_id": workflow.workflow_id,
            "correlation_id": workflow.workflow_id,
            "causation_id": workflow.request_event_id,
            "producer": self.bus.producer,
            "user": workflow.user,
        }

    async def advance(self, owner: str, workflow_id: str) -> None:
        """Read a workflow back and publish its next step (idempotent; see module docstring)."""
        for _ in range(_ATTEMPTS):
            workflow, seq = await self._workflow_at(owner, workflow_id)
            if workflow is None or workflow.final:
                return
            try:
                await self._step(workflow, _Cursor(owner, workflow_id, seq))
            except _Moved:
                log.debug("workflow moved on meanwhile; reading again", workflow_id=workflow_id)
            else:
                return
        raise RuntimeError(f"workflow {workflow_id} kept changing under {_ATTEMPTS} reads")

    async def _publish_on(self, cursor: _Cursor, event: Event) -> None:
        """Publish one of the workflow's own events, if nothing was stored since the read."""
        try:
            ack = await self.bus.publish(event, headers=cursor.headers())
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code == _WRONG_LAST_SEQUENCE:
                raise _Moved from exc
            raise
        if not ack.duplicate:
            cursor.seq = ack.seq

    async def _step(self, workflow: WorkflowState, cursor: _Cursor) -> None:
        why = self._refusal(workflow)
        if why is not None:
            await self._publish_on(cursor, WorkflowRejected(**self._envelope(workflow), error=why))
            log.warning("workflow rejected", workflow_id=workflow.workflow_id, reason=why.message)
            return
        if workflow.cancel_requested:
            await self._cancel_running(workflow)
        await self._repair(workflow)
        for _ in range(len(workflow.nodes) + 1):  # again while a node is refused at once
            decision = decide(
                workflow.definition,
                workflow.input,
                workflow.fold_states(),
                cancelled=workflow.cancel_requested,
            )
            refused = False
            for name, _input in decision.start:
                refused |= not await self._start(workflow, cursor, name)
            for name, reason in decision.skip:
                skipped = NodeSkipped(**self._envelope(workflow), node=name, reason=reason)
                await self._publish_on(cursor, skipped)
                workflow.nodes[name].status, workflow.nodes[name].reason = "skipped", reason
            if not refused:
                break
        if decision.final is not None:
            summary = tuple(
                NodeSummary(
                    node=v.name,
                    status="not started" if v.status == "pending" else v.status,
                    execution_id=v.execution_id,
                    reason=v.reason,
                )
                for v in workflow.nodes.values()
            )
            cls = _FINALS[decision.final]
            await self._publish_on(cursor, cls(**self._envelope(workflow), nodes=summary))
            log.info("workflow ended", workflow_id=workflow.workflow_id, status=decision.final)

    async def _repair(self, workflow: WorkflowState) -> None:
        """Request the executions of claimed nodes whose request is missing (a consumer
        stopped between the claim and the request)."""
        for name, view in workflow.nodes.items():
            if view.status != "running" or view.execution_id is None:
                continue
            if await self._request_of(workflow.user, view.execution_id) is None:
                inline, ref, _size = await self._node_input(workflow, name, claimed=True)
                await self._publish_request(workflow, name, view.execution_id, inline, ref)

    def _refusal(self, workflow: WorkflowState) -> ErrorInfo | None:
        """Why a requested workflow cannot run (checked again here: anyone may publish one)."""
        limits = self.settings.limits
        if len(workflow.workflow_id) > MAX_WORKFLOW_ID:
            return ErrorInfo(
                kind="validation",
                message=f"workflow id {workflow.workflow_id!r} is longer than {MAX_WORKFLOW_ID}",
                hint="use a shorter id: node execution ids append -<index>",
            )
        try:
            check(workflow.definition, max_nodes=limits.max_workflow_nodes)
        except WorkflowError as exc:
            return ErrorInfo(kind="validation", message=exc.message, hint=exc.hint)
        return None

    async def _cancel_running(self, workflow: WorkflowState) -> None:
        for view in workflow.nodes.values():
            if view.status != "running" or view.execution_id is None:
                continue
            cancel = CancelRequested(
                **{**self._envelope(workflow), "execution_id": view.execution_id},
                reason=f"workflow {workflow.workflow_id} was cancelled",
            )
            await self.bus.publish(cancel, msg_id=f"{view.execution_id}:workflow-cancel")

    async def _node_input(
        self, workflow: WorkflowState, name: str, *, claimed: bool = False
    ) -> tuple[Any, PayloadRef | None, int]:
        """A node's input inline or by reference, and its size in bytes: the workflow's input
        for a start node, its predecessor's output when one ran, else an object keyed by node
        name. Refused before anything is read when it would take the workflow's data over its
        limit (``claimed``: the claim counted it already)."""
        preds = [e.source for e in workflow.definition.predecessors(name)]
        ran = [workflow.nodes[p] for p in preds if workflow.nodes[p].status != "skipped"]
        node_input: Any
        if not preds:
            node_input = workflow.input
        elif len(ran) == 1 and ran[0].output_ref is not None:
            ref = ran[0].output_ref
            self._within_limit(workflow, name, 0 if claimed else ref.size)
            return None, ref, ref.size  # passed on as it is
        elif len(ran) == 1:
            node_input = ran[0].output
        else:
            stored = sum(v.output_ref.size for v in ran if v.output_ref is not None)
            self._within_limit(workflow, name, 0 if claimed else stored)
            node_input = {
                v.name: (
                    await get_json_payload(
                        self.bus.js, v.output_ref, self.settings.limits.max_output_object
                    )
                    if v.output_ref is not None
                    else v.output
                )
                for v in ran
            }
        data = msgspec.json.encode(node_input)
        self._within_limit(workflow, name, 0 if claimed else len(data))
        if len(data) <= self.settings.limits.max_input:
            return node_input, None, len(data)
        ref = await put_payload(self.bus.js, f"{workflow.workflow_id}/{name}.input.json", data)
        return None, ref, len(data)

    def _within_limit(self, workflow: WorkflowState, name: str, size: int) -> None:
        limit = self.settings.limits.max_workflow_data
        if workflow.data_bytes() + size > limit:
            raise _OverLimit(
                f"node {name}'s input ({format_size(size)}) takes the workflow's data over its "
                f"limit of {format_size(limit)}",
                hint="pass less between nodes, or raise limits.max_workflow_data",
            )

    async def _start(self, workflow: WorkflowState, cursor: _Cursor, name: str) -> bool:
        """Claim a node and request its execution, once (see module docstring); ``False``
        when the node was refused at once (its input too large, its id taken)."""
        execution_id = node_execution_id(
            workflow.workflow_id, workflow.definition, name, workflow.request_event_id
        )
        mine = WorkflowRef(workflow_id=workflow.workflow_id, node=name)
        existing = await self._request_of(workflow.user, execution_id)
        error: ErrorInfo | None = None
        inline: Any = None
        ref: PayloadRef | None = None
        size = 0
        if existing is not None and existing.request.workflow != mine:
            error = ErrorInfo(
                kind="validation",
                message=f"execution id {execution_id} is already used by another request",
                hint="run the workflow again under a fresh id",
            )
        elif existing is None:
            try:
                inline, ref, size = await self._node_input(workflow, name)
            except (PayloadError, _OverLimit) as exc:
                error = ErrorInfo(kind="validation", message=exc.message, hint=exc.hint)
        if error is not None:
            ended = NodeEnded(
                **self._envelope(workflow),
                node=name,
                node_execution_id=execution_id,
                status="rejected",
                error=error,
            )
            await self._publish_on(cursor, ended)
            workflow.nodes[name].status = "rejected"
            workflow.nodes[name].reason = error.message
            return False
        claim = NodeRequested(
            **self._envelope(workflow),
            node=name,
            node_execution_id=execution_id,
            input_bytes=size,
        )
        await self._publish_on(cursor, claim)
        view = workflow.nodes[name]
        view.status, view.input_bytes, view.execution_id = "running", size, execution_id
        if existing is None:
            await self._publish_request(workflow, name, execution_id, inline, ref)
        return True

    async def _publish_request(
        self,
        workflow: WorkflowState,
        name: str,
        execution_id: str,
        inline: Any,
        ref: PayloadRef | None,
    ) -> None:
        template = next(n for n in workflow.definition.nodes if n.name == name)
        fields = {f: getattr(template, f) for f in Request.__struct_fields__}
        request = Request(
            **{
                **fields,
                "input": inline,
                "input_ref": ref,
                "workflow": WorkflowRef(workflow_id=workflow.workflow_id, node=name),
            }
        )
        envelope = self._envelope(workflow)
        await self.bus.publish(
            Requested(**{**envelope, "execution_id": execution_id}, request=request)
        )
        log.info("node requested", workflow_id=workflow.workflow_id, node=name)

    async def _publish_node_ended(
        self, workflow: WorkflowState, name: str, state: ExecutionState
    ) -> None:
        event = NodeEnded(
            **self._envelope(workflow),
            node=name,
            node_execution_id=state.execution_id,
            status=state.status,
            output=state.output,
            output_ref=state.output_ref,
            condition=state.condition,
            error=state.error,
        )
        await self.bus.publish(event)

    # ------------------------------------------------------------------ the loop

    async def run(self, stopper: Stopper) -> None:
        """Consume triggers until stopped."""
        await provision(self.bus.js, self.settings)
        config = ConsumerConfig(
            durable_name=DURABLE,
            filter_subjects=list(TRIGGERS),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.settings.runner.ack_wait,
            max_deliver=self.settings.runner.max_deliver + 1,
            max_ack_pending=1000,
        )
        sub = await self._subscribe(config)
        checked = time.monotonic()
        async with Heartbeat(self.bus.js, "workflow", self.settings.runner.heartbeat) as hb:
            while not stopper.stopping:
                if time.monotonic() - checked > self.settings.runner.heartbeat:
                    checked = time.monotonic()
                    if await durables.missing(self.bus.js, EXEC_STREAM, DURABLE):
                        durables.report(hb, [DURABLE])
                        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                            sub = await self._subscribe(config)
                    else:
                        durables.report(hb, [])
                try:
                    msgs = await sub.fetch(64, timeout=1.0)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                except nats.errors.ConnectionClosedError:
                    break
                except (nats.errors.Error, nats.js.errors.Error) as exc:
                    log.warning("fetch failed; retrying", error=str(exc))
                    await asyncio.sleep(0.5)
                    continue
                hb.in_flight = len(msgs)
                for msg in msgs:
                    await self._handle_safely(msg)
                hb.in_flight = 0

    async def _subscribe(self, config: ConsumerConfig) -> JetStreamContext.PullSubscription:
        """The durable (several filter subjects: created, then bound)."""
        await self.bus.js.add_consumer(EXEC_STREAM, config)
        return await self.bus.js.pull_subscribe_bind(DURABLE, stream=EXEC_STREAM)

    async def _handle_safely(self, msg: Msg) -> None:
        try:
            await self.handle(msg)
        except Exception as exc:  # noqa: BLE001 - no failure may stop the consumer
            deliveries = msg.metadata.num_delivered
            reason = f"{type(exc).__name__}: {exc}"
            if deliveries >= self.settings.runner.max_deliver:
                await dead_letter(self.bus.js, DURABLE, msg, reason)
            else:
                log.warning("handling failed; will retry", subject=msg.subject, error=reason)
                await msg.nak(delay=min(2.0**deliveries, 30.0))
