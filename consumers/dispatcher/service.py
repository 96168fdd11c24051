"""The dispatcher consumer: ``execution.requested`` → ``rejected`` or ``queued`` on a lane.

Bad input never crashes it: an undecodable or invalid request becomes ``rejected`` with a reason;
a message it cannot even attribute to an execution, or one that keeps failing, is dead-lettered
after bounded redeliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from consumers.deadletter import dead_letter
from consumers.dispatcher.validate import validate_request
from consumers.retries import enqueue
from cronium_bus import durables
from cronium_bus.bus import Bus
from cronium_bus.codec import decode
from cronium_bus.errors import EventDecodeError
from cronium_bus.events import (
    ErrorInfo,
    Queued,
    Rejected,
    Request,
    Requested,
    error_info,
    utcnow,
)
from cronium_bus.health import Heartbeat
from cronium_bus.history import execution_state
from cronium_bus.ids import is_valid_id, new_id
from cronium_bus.lifecycle import Stopper
from cronium_bus.payloads import PayloadError, check_payload, get_json_payload
from cronium_bus.provision import provision
from cronium_bus.schedules.spec import schedule_id
from cronium_bus.schemacheck import SchemaChecker, SchemaCheckError, SchemaCheckerUnavailable
from cronium_bus.secrets import not_usable, usable_key
from cronium_bus.servers import not_usable as server_not_usable
from cronium_bus.servers import resolve_server
from cronium_bus.subjects import ANY_OWNER, EXEC_STREAM, REQUESTS, exec_subject, job_subject

log = structlog.get_logger(__name__)
DURABLE = "dispatcher"


class Dispatcher:
    """Validates requests and routes them; one or many may run (they share a durable consumer)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.settings = bus.settings
        self.schemas = SchemaChecker(bus.settings.limits.schema_check_timeout)

    async def handle(self, msg: Msg) -> None:
        """Process one message from the request subject; ack it when done."""
        tokens = msg.subject.split(".")
        owner, subject_id = (tokens[2], tokens[3]) if len(tokens) == 5 else ("", "")
        if not is_valid_id(subject_id) or not is_valid_id(owner):
            await dead_letter(
                self.bus.js, DURABLE, msg, f"invalid owner or execution id in {msg.subject!r}"
            )
            return
        reject = functools.partial(self._reject, msg, owner, subject_id)
        try:
            event = decode(msg.data, max_bytes=self.settings.limits.max_request)
        except EventDecodeError as exc:
            await reject(None, error_info(exc))
            return
        if not isinstance(event, Requested):
            await reject(
                None,
                ErrorInfo(
                    kind="validation",
                    message=f"{event.type} was published on the request subject",
                    hint="publish only execution.requested on cronium.exec.<owner>.<id>.requested",
                ),
            )
            return
        if event.execution_id != subject_id:
            await reject(
                event,
                ErrorInfo(
                    kind="validation",
                    message=f"execution_id {event.execution_id!r} does not match subject id "
                    f"{subject_id!r}",
                    hint="publish on cronium.exec.<owner>.<execution_id>.requested",
                ),
            )
            return
        if event.user != owner:
            # the subject's owner is who nats-server let publish there; the field is a claim
            await reject(
                event,
                ErrorInfo(
                    kind="permission",
                    message=f"user {event.user!r} is not the publisher {owner!r}",
                    hint="a request's user is the identity that publishes it: set user to your "
                    "own name, or publish on cronium.exec.<user>.<id>.requested as that user",
                ),
            )
            return
        taken = await self._already_used(msg, owner, event.execution_id)
        if taken is not None:
            # under a message id of its own: the attempt's terminal id belongs to the
            # execution that holds this id, whose real outcome must not be pre-empted
            await reject(event, taken, own_id=True)
            return
        result = validate_request(event.request, self.settings)
        if isinstance(result, ErrorInfo):
            await reject(event, result)
            return
        for name in result.secrets:  # the owner's own, or shared with them; nothing else
            if await usable_key(self.bus.js, owner, name) is None:
                await reject(event, error_info(not_usable(name)))
                return
        for target in result.targets:  # the same for servers
            if await resolve_server(self.bus.js, owner, target) is None:
                await reject(event, error_info(server_not_usable(target)))
                return
        if result.input_ref is not None:  # it must be there now: a runner may start at once
            try:
                await check_payload(self.bus.js, result.input_ref)
            except PayloadError as exc:
                await reject(event, error_info(exc))
                return
        why = await self._input_violation(result)
        if why is not None:
            await reject(event, why)
            return
        sched = result.schedule
        if sched is not None and (
            sched.schedule_id != schedule_id(owner, sched.name)
            or not event.execution_id.startswith(f"{sched.schedule_id}-")
        ):
            await reject(
                event,
                ErrorInfo(
                    kind="validation",
                    message=f"execution {event.execution_id} names schedule {sched.name} but "
                    "is not one of its runs",
                    hint="drop schedule: the scheduler sets it on the runs it starts",
                ),
            )
            return
        wf = result.workflow
        if wf is not None and not event.execution_id.startswith(f"{wf.workflow_id}-"):
            await reject(
                event,
                ErrorInfo(
                    kind="validation",
                    message=f"execution {event.execution_id} names workflow {wf.workflow_id} "
                    "but is not one of its nodes",
                    hint="drop workflow: the workflow consumer sets it on its nodes",
                ),
            )
            return
        delay = result.not_before.timestamp() - utcnow().timestamp() if result.not_before else 0.0
        queued = Queued(
            event_id=new_id("ev"),
            time=utcnow(),
            execution_id=event.execution_id,
            attempt=1,
            correlation_id=event.correlation_id,
            causation_id=event.event_id,
            producer=self.bus.producer,
            user=event.user,
            request=result,
            lane=job_subject(result.runner, result.priority),
            not_before=result.not_before,
        )
        await enqueue(self.bus, queued)
        await msg.ack()
        log.info(
            "queued",
            execution_id=event.execution_id,
            lane=queued.lane,
            delay_s=round(max(delay, 0.0), 3),
        )

    async def _input_violation(self, request: Request) -> ErrorInfo | None:
        """Why the input (inline or in the payload store) violates the request's input
        schema, if it does; checked in a worker with a time limit."""
        if request.input_schema is None:
            return None
        value = request.input
        if request.input_ref is not None:
            try:
                value = await get_json_payload(
                    self.bus.js, request.input_ref, self.settings.limits.max_input_object
                )
            except msgspec.DecodeError:
                return ErrorInfo(
                    kind="validation",
                    message="the input in the payload store is not JSON",
                    hint="upload a JSON input",
                )
        try:
            why = await self.schemas.violation(request.input_schema, value)
        except SchemaCheckError as exc:
            return error_info(exc)
        if why is None:
            return None
        return ErrorInfo(
            kind="validation",
            message=f"input does not match input_schema at {why}",
            hint="send an input the schema accepts",
        )

    async def _already_used(self, msg: Msg, owner: str, execution_id: str) -> ErrorInfo | None:
        """Why this request's execution id may not run, if it may not: another owner's request
        under it came first (ids are the streams' idempotency keys, so two owners' runs under
        one id would share every message id), or an earlier request of the same owner holds it
        — one published again after the duplicate window, however long after."""
        mine = exec_subject(owner, execution_id, "execution.requested")
        info = await self.bus.js.stream_info(
            EXEC_STREAM,
            subjects_filter=exec_subject(ANY_OWNER, execution_id, "execution.requested"),
        )
        subjects = info.state.subjects or {}
        if len(subjects) == 1 and subjects.get(mine, 0) <= 1:
            return None  # the common case: only this request
        seq = msg.metadata.sequence.stream
        for subject in subjects:
            first = await self.bus.js.get_msg(EXEC_STREAM, seq=1, subject=subject, next=True)
            if subject != mine and (first.seq or 0) < seq:
                return ErrorInfo(
                    kind="validation",
                    message=f"execution id {execution_id} is already used by another request",
                    hint="use a fresh execution id for every request",
                )
            if subject == mine and (first.seq or 0) < seq:
                state = await execution_state(
                    self.bus.js,
                    execution_id,
                    max_bytes=self.settings.streams.max_msg_size,
                    owner=owner,
                )
                status = state.status if state is not None else "unknown"
                return ErrorInfo(
                    kind="validation",
                    message=f"execution {execution_id} already exists ({status}); this request "
                    "was not run",
                    hint=f"see `cronium show {execution_id}`; use a fresh execution id to run "
                    "again",
                )
        return None

    async def _reject(
        self,
        msg: Msg,
        owner: str,
        execution_id: str,
        event: Requested | None,
        error: ErrorInfo,
        *,
        own_id: bool = False,
    ) -> None:
        """Publish ``rejected`` on the subject's owner's subject (never on a name a body claims)."""
        rejected = Rejected(
            event_id=new_id("ev"),
            time=utcnow(),
            execution_id=execution_id,
            correlation_id=event.correlation_id if event else execution_id,
            causation_id=event.event_id if event else None,
            producer=self.bus.producer,
            user=owner,
            error=error,
        )
        await self.bus.publish(rejected, msg_id=rejected.event_id if own_id else None)
        await msg.ack()
        log.warning("rejected", execution_id=execution_id, reason=error.message)

    async def run(self, stopper: Stopper) -> None:
        """Consume requests until stopped."""
        await provision(self.bus.js, self.settings)
        config = ConsumerConfig(
            durable_name=DURABLE,
            filter_subject=REQUESTS,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.settings.runner.ack_wait,
            max_deliver=self.settings.runner.max_deliver + 1,
            max_ack_pending=1000,
        )
        sub = await self.bus.js.pull_subscribe(
            REQUESTS, durable=DURABLE, stream=EXEC_STREAM, config=config
        )
        try:
            await self.schemas.start()
        except SchemaCheckerUnavailable as exc:  # it is started again at the first check
            log.warning("schema checker not started", error=exc.message)
        checked = time.monotonic()
        async with Heartbeat(self.bus.js, "dispatcher", self.settings.runner.heartbeat) as hb:
            while not stopper.stopping:
                if time.monotonic() - checked > self.settings.runner.heartbeat:
                    checked = time.monotonic()
                    sub = await self._ensure_durable(sub, config, hb)
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
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
        await asyncio.to_thread(self.schemas.close)

    async def _ensure_durable(
        self, sub: JetStreamContext.PullSubscription, config: ConsumerConfig, hb: Heartbeat
    ) -> JetStreamContext.PullSubscription:
        """Recreate the durable consumer if someone deleted it; unhealthy until it is back."""
        if not await durables.missing(self.bus.js, EXEC_STREAM, DURABLE):
            durables.report(hb, [])
            return sub
        durables.report(hb, [DURABLE])  # unhealthy until the next check finds it in place
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
        try:
            sub = await self.bus.js.pull_subscribe(
                REQUESTS, durable=DURABLE, stream=EXEC_STREAM, config=config
            )
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            log.warning("cannot recreate the durable consumer yet", error=str(exc))
        return sub

    async def _handle_safely(self, msg: Msg) -> None:
        try:
            await self.handle(msg)
        except Exception as exc:  # noqa: BLE001 - no failure may stop the dispatcher
            deliveries = msg.metadata.num_delivered
            reason = f"{type(exc).__name__}: {exc}"
            if deliveries >= self.settings.runner.max_deliver:
                await dead_letter(self.bus.js, DURABLE, msg, reason)
            else:
                log.warning(
                    "handling failed; will retry",
                    subject=msg.subject,
                    deliveries=deliveries,
                    error=reason,
                )
                await msg.nak(delay=min(2.0**deliveries, 30.0))
