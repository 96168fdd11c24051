"""Conditional actions: what a request's ``on:`` asks for once its execution has ended.

Cronium's order: ``always``, then ``success`` or ``failure``, then ``condition`` (when the script
called ``setCondition(true)``). A ``run`` action requests another execution whose input is this
one's output (inline, or the same payload-store reference); a ``notify`` action publishes
``notification.requested`` with its message rendered from the execution's facts
(:mod:`cronium_bus.workflows.template`). Each action's outcome is an ``execution.action_fired``
event of the execution. Ids are deterministic (``<id>-<when><index>`` for a run, message ids by
when and index), so firing again after a crash or a redelivery changes nothing.
"""

from __future__ import annotations

from typing import Any

import msgspec
import nats.js.errors
import structlog

from cronium_bus.bus import Bus
from cronium_bus.events import (
    Action,
    ActionFired,
    NotificationRequested,
    Request,
    Requested,
    utcnow,
)
from cronium_bus.ids import derived_id, new_id
from cronium_bus.state import ExecutionState
from cronium_bus.subjects import EXEC_STREAM, exec_subject
from cronium_bus.workflows import template

log = structlog.get_logger(__name__)


def action_execution_id(execution_id: str, when: str, index: int, secret: str) -> str:
    """The execution id a ``run`` action requests: ``<id>-<w><index>-<digest>`` (see
    :func:`cronium_bus.ids.derived_id`; ``secret`` is the request's event id)."""
    return derived_id(execution_id, f"{when[0]}{index}", secret)


def facts(state: ExecutionState, request: Request) -> dict[str, str]:
    """What a notify message may say about an execution (plain text)."""
    last = state.attempts[-1] if state.attempts else None
    duration = ""
    if last is not None and last.ended_at is not None and state.requested_at is not None:
        duration = f"{(last.ended_at - state.requested_at).total_seconds():.1f}"
    output = "" if state.output is None else msgspec.json.encode(state.output).decode()[:1024]
    return {
        "execution_id": state.execution_id,
        "status": state.status,
        "exit_code": "" if state.exit_code is None else str(state.exit_code),
        "user": state.user or "",
        "runtime": request.runtime,
        "event_ref": request.event_ref or "",
        "attempt": str(state.attempt),
        "duration_s": duration,
        "error_kind": state.error.kind if state.error else "",
        "error_message": state.error.message if state.error else "",
        "output": output,
        "workflow_id": request.workflow.workflow_id if request.workflow else "",
        "node": request.workflow.node if request.workflow else "",
    }


def due(state: ExecutionState, request: Request) -> list[tuple[str, int, Action]]:
    """The actions to fire, in Cronium's order, with their ``when`` and index."""
    on = request.on
    if on is None:
        return []
    out = [("always", i, a) for i, a in enumerate(on.always)]
    if state.status == "succeeded":
        out += [("success", i, a) for i, a in enumerate(on.success)]
    else:
        out += [("failure", i, a) for i, a in enumerate(on.failure)]
    if state.condition is True:
        out += [("condition", i, a) for i, a in enumerate(on.condition)]
    return out


async def fire_actions(bus: Bus, state: ExecutionState, request: Request, secret: str) -> None:
    """Fire every due action of an ended execution, in order (idempotent); ``secret`` is the
    request's event id (the runs' ids derive from it)."""
    owner = state.user or ""
    envelope: dict[str, Any] = {
        "time": utcnow(),
        "execution_id": state.execution_id,
        "attempt": state.attempt,
        "correlation_id": state.correlation_id or state.execution_id,
        "producer": bus.producer,
        "user": owner,
    }
    for when, index, action in due(state, request):
        if action.run is not None:
            child = action_execution_id(state.execution_id, when, index, secret)
            subject = exec_subject(owner, child, "execution.requested")
            try:
                await bus.js.get_last_msg(EXEC_STREAM, subject)
            except nats.js.errors.NotFoundError:
                run = msgspec.structs.replace(
                    action.run, input=state.output, input_ref=state.output_ref
                )
                await bus.publish(
                    Requested(
                        **{**envelope, "execution_id": child, "correlation_id": child},
                        event_id=new_id("ev"),
                        causation_id=None,
                        request=run,
                    )
                )
            fired = ActionFired(
                **envelope,
                event_id=new_id("ev"),
                when=when,  # type: ignore[arg-type]
                index=index,
                action="run",
                target_id=child,
                detail=f"requested {child}",
            )
        else:
            assert action.notify is not None
            note = action.notify
            await bus.publish(
                NotificationRequested(
                    **envelope,
                    event_id=new_id("ev"),
                    when=when,  # type: ignore[arg-type]
                    index=index,
                    channel=note.channel,
                    to=note.to,
                    message=template.render(note.message, facts(state, request)),
                )
            )
            fired = ActionFired(
                **envelope,
                event_id=new_id("ev"),
                when=when,  # type: ignore[arg-type]
                index=index,
                action="notify",
                detail=f"notification on {note.channel}",
            )
        await bus.publish(fired)
        log.info("action fired", execution_id=state.execution_id, when=when, index=index)
