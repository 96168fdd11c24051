"""What each role may do, as nats-server permissions (the server enforces them, not us).

Roles of people, each a scoped signing key of the ``CRONIUM`` account whose permission template
every user it signs receives (nats-server expands ``{{name()}}`` to the user's name):

- ``admin``: users, shared secrets and servers; sees everything. May publish any request and
  cancel, and a ``queued`` event (``cronium dlq retry`` re-enqueues), but no other lifecycle
  event and no log chunk: what a runner or the dispatcher says happened, only they say. May not
  delete, purge, update or create streams (no rewriting the history), and writes buckets only
  through the services.
- ``user``: runs and cancels **their own** executions and follows them: they may publish only
  ``cronium.exec.<their name>.<id>.requested``, ``….workflow_requested`` and
  ``….cancel_requested``, subscribe only to
  ``cronium.exec.<their name>.>`` and ``cronium.logs.<their name>.>`` (live) and their inbox,
  and ask, on their own name, the sealing service (``cronium.ctl.secrets.user.<name>.*``,
  ``cronium.ctl.servers.user.<name>.*``), the scheduler (``cronium.ctl.schedules.user.<name>.*``)
  and the query service (``cronium.query.user.<name>.{history,logs,events,stats}``),
  which answer with their own only. No JetStream API, no buckets, no payload store.
- ``auditor``: reads history, audit, logs and events of everyone (queries; live subscriptions to
  every execution); runs and cancels nothing.
- ``producer``: an application that runs scripts for its own users (the Cronium app): publishes
  requests and cancels for any owner and reads everyone's like an auditor. It publishes no
  lifecycle event, opens no bucket, has no stream or consumer API (a consumer it made could
  deliver anywhere) and no payload store (one rollup would purge every object).

Service identities (the consumers) and the operators' admin credential of ``cronium up`` are
signed by the account key itself and have no limits inside the account. Every role's inbox is
``_INBOX_<name>`` (clients connect with that ``inbox_prefix``) so that no one can subscribe to
another user's replies.
"""

from __future__ import annotations

from typing import Any, Final, Literal, get_args

Role = Literal["admin", "user", "auditor", "producer"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)
SERVICE: Final = "service"

INBOX: Final = "_INBOX_{{name()}}.>"

OWN_EXEC: Final = "cronium.exec.{{name()}}.>"
OWN_LOGS: Final = "cronium.logs.{{name()}}.>"

# People get no JetStream API on the shared streams and no Object Store access: a consumer they
# created would deliver to any subject they name (nats-server does not check a push consumer's
# deliver subject against its creator's permissions), and the payload store's subjects cannot be
# split by owner. What is stored they read through the query service, under their own name.
_PUBLISH: Final[dict[Role, list[str]]] = {
    "user": [
        "cronium.exec.{{name()}}.*.requested",
        "cronium.exec.{{name()}}.*.cancel_requested",
        "cronium.exec.{{name()}}.*.workflow_requested",
        "cronium.ctl.secrets.user.{{name()}}.*",
        "cronium.ctl.servers.user.{{name()}}.*",
        "cronium.ctl.schedules.user.{{name()}}.*",
        "cronium.query.user.{{name()}}.history",
        "cronium.query.user.{{name()}}.logs",
        "cronium.query.user.{{name()}}.events",
        "cronium.query.user.{{name()}}.stats",
    ],
    "auditor": [
        "cronium.query.history",
        "cronium.query.logs",
        "cronium.query.audit.>",
        "cronium.query.stats",
        "cronium.query.metrics",
        "cronium.query.auditor.{{name()}}.*",
    ],
}
_PUBLISH["producer"] = [
    "cronium.exec.*.*.requested",
    "cronium.exec.*.*.cancel_requested",
    "cronium.exec.*.*.workflow_requested",
    "cronium.query.history",
    "cronium.query.logs",
    "cronium.query.stats",
    "cronium.query.producer.{{name()}}.*",
    # no payload store: its stream takes rollups (the Object Store needs them), so anyone who
    # may publish its metadata subjects may purge every object with one `Nats-Rollup: all`
]
_SUBSCRIBE: Final[dict[Role, list[str]]] = {
    "user": [INBOX, OWN_EXEC, OWN_LOGS],
    "auditor": [INBOX, "cronium.exec.>", "cronium.logs.>"],
    "producer": [INBOX, "cronium.exec.>", "cronium.logs.>"],
}
READERS: Final = ("user", "auditor", "producer")
"""Roles that read what is stored through the query service, under their own name."""


def _service_only() -> list[str]:
    """Subjects of the lifecycle events only the service publishes (and every log chunk)."""
    from cronium_bus.events import EVENT_TYPES, short_type

    # chunks: cronium.logs.>
    people = {"requested", "cancel_requested", "workflow_requested", "queued", "chunk"}
    kinds = sorted({short_type(t) for t in EVENT_TYPES} - people)
    # the event streams, and the buckets whose every write goes through a service
    kept = ("secrets", "servers", "variables", "schedules")
    history = ("CRONIUM_EXEC", "CRONIUM_LOGS", "CRONIUM_SCHED", *(f"KV_cronium_{b}" for b in kept))
    return [
        *(f"cronium.exec.*.*.{kind}" for kind in kinds),
        "cronium.logs.>",
        "cronium.sched.>",  # schedule messages and fires: only the scheduler writes them
        # nor rewrite what was said: no deleting, purging or re-sourcing the event streams,
        # and buckets only through the services
        *(f"$JS.API.STREAM.MSG.DELETE.{s}" for s in history),
        *(f"$JS.API.STREAM.PURGE.{s}" for s in history),
        "$JS.API.STREAM.UPDATE.*",
        "$JS.API.STREAM.DELETE.*",
        "$JS.API.STREAM.CREATE.*",
        *(f"$KV.cronium_{b}.>" for b in kept),
    ]


def template(role: Role) -> dict[str, Any]:
    """The permission template of a role's scoped signing key (``None`` lists: no limit)."""
    limits = {"subs": -1, "data": -1, "payload": -1}
    if role == "admin":
        return {"pub": {"deny": _service_only()}, "sub": {}, **limits}
    return {
        "pub": {"allow": _PUBLISH[role]},
        "sub": {"allow": _SUBSCRIBE[role]},
        **limits,
    }


def inbox_prefix(name: str) -> str:
    """The inbox prefix a user's connection must use (``_INBOX_<name>``)."""
    return f"_INBOX_{name}"
