"""Validation of a request against the configured maxima (pure; no I/O).

Every rejection says what was asked, what is allowed, and what to change.
"""

from __future__ import annotations

from typing import Final

import jsonschema
import msgspec

from cronium_bus.events import Action, ErrorInfo, Limits, Request
from cronium_bus.servers import KEY_PREFIX as SERVER_KEY_PREFIX
from cronium_bus.servers import NAME_RE as SERVER_NAME_RE
from cronium_bus.settings import Settings
from cronium_bus.units import format_size
from cronium_bus.workflows import template

MAX_ACTIONS: Final = 20
"""Conditional actions in one request, counting those of the requests they run."""
MAX_ACTION_DEPTH: Final = 3


def _reject(message: str, hint: str) -> ErrorInfo:
    return ErrorInfo(kind="validation", message=message, hint=hint)


def check_input_schema(request: Request) -> ErrorInfo | None:
    """Refuse an input schema that is not one (the input is checked against it by the
    dispatcher, in a worker with a time limit: :mod:`cronium_bus.schemacheck`)."""
    if request.input_schema is None:
        return None
    try:
        jsonschema.Draft202012Validator.check_schema(request.input_schema)
    except jsonschema.SchemaError as exc:
        return _reject(
            f"input_schema is not a valid JSON Schema: {exc.message[:300]}",
            "write a JSON Schema 2020-12 document",
        )
    return None


def _check_action(action: Action, settings: Settings, depth: int) -> ErrorInfo | None:
    if (action.run is None) == (action.notify is None):
        return _reject(
            "a conditional action is exactly one of run or notify",
            "write `- run: {request}` or `- notify: {message: ...}`",
        )
    if action.notify is not None:
        unknown = template.unknown_fields(action.notify.message)
        if unknown:
            return _reject(
                f"notify message uses unknown field {{{{{unknown[0][:40]}}}}}",
                f"use only {', '.join(template.FIELDS)}",
            )
        return None
    assert action.run is not None
    if action.run.input is not None or action.run.input_ref is not None:
        return _reject(
            "a run action sets its own input",
            "a run action's input is the execution's output",
        )
    if action.run.workflow is not None:
        return _reject("a run action sets workflow", "drop workflow: it is the service's")
    result = validate_request(action.run, settings, _depth=depth + 1)
    if isinstance(result, ErrorInfo):
        return _reject(f"a run action is invalid: {result.message}", result.hint)
    return None


def check_actions(request: Request, settings: Settings, depth: int = 0) -> ErrorInfo | None:
    """Refuse conditional actions that cannot fire: too many, too deeply chained, malformed."""
    if request.on is None:
        return None
    on = request.on
    actions = [*on.always, *on.success, *on.failure, *on.condition]
    if depth >= MAX_ACTION_DEPTH:
        return _reject(
            f"conditional actions chain more than {MAX_ACTION_DEPTH} levels deep",
            "run a workflow for longer chains",
        )
    if _count_actions(request) > MAX_ACTIONS:
        return _reject(
            f"more than {MAX_ACTIONS} conditional actions in one request",
            "run a workflow instead",
        )
    for action in actions:
        why = _check_action(action, settings, depth)
        if why is not None:
            return why
    return None


def _count_actions(request: Request) -> int:
    if request.on is None:
        return 0
    on = request.on
    actions = [*on.always, *on.success, *on.failure, *on.condition]
    return len(actions) + sum(_count_actions(a.run) for a in actions if a.run is not None)


def validate_request(
    request: Request, settings: Settings, *, _depth: int = 0
) -> Request | ErrorInfo:
    """The request with defaults filled in, or why it cannot run."""
    lim = settings.limits
    code_bytes = len(request.code.encode())
    if not request.code.strip():
        return _reject("the script is empty", "pass a file or -c CODE with something to run")
    if code_bytes > lim.max_code:
        return _reject(
            f"the script is {format_size(code_bytes)}, "
            f"over the limit of {format_size(lim.max_code)}",
            "move data out of the script into input, or raise limits.max_code",
        )
    if "\x00" in request.code:
        return _reject("the script contains a NUL byte", "scripts must be text")
    input_bytes = len(msgspec.json.encode(request.input))
    if input_bytes > lim.max_input:
        return _reject(
            f"input is {format_size(input_bytes)}, over the inline limit of "
            f"{format_size(lim.max_input)}",
            "upload it to the payload store and send input_ref (`cronium run --input @FILE` "
            "does), or raise limits.max_input",
        )
    if request.input_ref is not None:
        if request.input is not None:
            return _reject(
                "both input and input_ref were given", "send the input inline or by reference"
            )
        if request.input_ref.size > lim.max_input_object:
            return _reject(
                f"input is {format_size(request.input_ref.size)}, over the limit of "
                f"{format_size(lim.max_input_object)}",
                "pass a smaller input, or raise limits.max_input_object",
            )
    timeout = request.timeout_s if request.timeout_s is not None else lim.default_timeout
    if not lim.min_timeout <= timeout <= lim.max_timeout:
        return _reject(
            f"timeout {timeout:g}s is outside {lim.min_timeout:g}s..{lim.max_timeout:g}s",
            f"ask for a timeout between {lim.min_timeout:g}s and {lim.max_timeout:g}s",
        )
    cpus = request.limits.cpus if request.limits.cpus is not None else lim.default_cpus
    if cpus > lim.max_cpus:
        return _reject(
            f"{cpus:g} CPUs asked, the maximum is {lim.max_cpus:g}",
            f"ask for --cpus {lim.max_cpus:g} or less",
        )
    memory = request.limits.memory_bytes or lim.default_memory
    if memory > lim.max_memory:
        return _reject(
            f"{format_size(memory)} of memory asked, the maximum is {format_size(lim.max_memory)}",
            f"ask for --memory {lim.max_memory // 1024**2}m or less",
        )
    if memory < 6 * 1024**2:
        return _reject(
            f"{format_size(memory)} of memory is too little to start a container",
            "ask for at least 6m",
        )
    pids = request.limits.pids or lim.default_pids
    if pids > lim.max_pids:
        return _reject(
            f"{pids} processes asked, the maximum is {lim.max_pids}",
            f"ask for --pids {lim.max_pids} or less",
        )
    if request.network and not lim.allow_network:
        return _reject(
            "network access was asked but policy forbids it",
            "drop the network flag, or have an operator set limits.allow_network",
        )
    if request.runner == "container" and request.targets:
        return _reject(
            "targets were given for a container run", "use runner 'ssh' to run on servers"
        )
    if request.runner == "ssh":
        if not request.targets:
            return _reject("an ssh run needs at least one target", "name one or more servers")
        bad = [t for t in request.targets if not SERVER_NAME_RE.fullmatch(t)]
        if bad:
            return _reject(
                f"target {bad[0][:80]!r} is not a server name",
                "register it with `cronium servers add NAME ssh://USER@HOST:PORT`",
            )
        if len(set(request.targets)) != len(request.targets):
            return _reject("a target is named twice", "name each server once")
        if len(request.targets) > lim.max_targets:
            return _reject(
                f"{len(request.targets)} targets, the maximum is {lim.max_targets}",
                "split the run, or raise limits.max_targets",
            )
    reserved = [n for n in request.secrets if n.startswith(SERVER_KEY_PREFIX)]
    if reserved:
        return _reject(
            f"secret {reserved[0]!r} is a registered server's private key: no execution may "
            "read it",
            "name the server as a target (--target) instead; only the SSH runner uses its key",
        )
    for check in (check_input_schema(request), check_actions(request, settings, _depth)):
        if check is not None:
            return check
    if request.runtime not in settings.runner.images:
        return _reject(
            f"no image is configured for runtime {request.runtime!r}",
            "set runner.images in the settings",
        )
    return msgspec.structs.replace(
        request,
        timeout_s=timeout,
        limits=Limits(cpus=cpus, memory_bytes=memory, pids=pids),
    )
