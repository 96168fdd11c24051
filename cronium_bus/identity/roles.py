"""What each role may do, as nats-server permissions (the server enforces them, not us).

Roles of people, each a scoped signing key of the ``CRONIUM`` account whose permission template
every user it signs receives (nats-server expands ``{{name()}}`` to the user's name):

- ``admin``: users, shared secrets and servers; sees everything. No limits inside the account.
- ``user``: runs and cancels **their own** executions and follows them: they may publish only
  ``cronium.exec.<their name>.<id>.requested`` and ``….cancel_requested``, and read (live or from
  the streams, through consumers whose filter is their own subjects) only
  ``cronium.exec.<their name>.>`` and ``cronium.logs.<their name>.>``. They may not publish any
  other lifecycle event, touch secrets, variables or servers, create, change or delete streams or
  the service's durable consumers, purge the payload store or query the warehouse (which does
  not yet answer per user).
- ``auditor``: reads history, audit and logs of everyone (JetStream reads and queries); runs and
  cancels nothing.

Service identities (the consumers) and the operators' admin credential of ``cronium up`` are
signed by the account key itself and have no limits inside the account. Every role's inbox is
``_INBOX_<name>`` (clients connect with that ``inbox_prefix``) so that no one can subscribe to
another user's replies.
"""

from __future__ import annotations

from typing import Any, Final, Literal, get_args

Role = Literal["admin", "user", "auditor"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)
SERVICE: Final = "service"

INBOX: Final = "_INBOX_{{name()}}.>"

# The service's durable consumers on the streams users may read: no one else may create, update
# or pull them (a pull would take messages away from the service).
SERVICE_DURABLES: Final = {
    "CRONIUM_EXEC": ("dispatcher", "projector-exec"),
    "CRONIUM_LOGS": ("projector-logs",),
}
_KEEP_OFF_DURABLES: Final = [
    f"$JS.API.CONSUMER.{verb}.{stream}.{name}{tail}"
    for stream, names in SERVICE_DURABLES.items()
    for name in names
    for verb, tail in (("CREATE", ".>"), ("CREATE", ""), ("MSG.NEXT", ""), ("DURABLE.CREATE", ""))
]


def _read_streams(exec_filter: str, logs_filter: str) -> list[str]:
    """Reading the lifecycle and log streams with consumers of one's own whose filter matches
    ``exec_filter`` / ``logs_filter``: create (named, so the filter is in the subject), look up,
    pull (no acks: readers use AckPolicy NONE), flow control of ordered consumers."""
    return [
        "$JS.API.INFO",
        "$JS.API.STREAM.INFO.CRONIUM_EXEC",
        "$JS.API.STREAM.INFO.CRONIUM_LOGS",
        f"$JS.API.CONSUMER.CREATE.CRONIUM_EXEC.*.{exec_filter}",
        f"$JS.API.CONSUMER.CREATE.CRONIUM_LOGS.*.{logs_filter}",
        "$JS.API.CONSUMER.INFO.CRONIUM_EXEC.*",
        "$JS.API.CONSUMER.INFO.CRONIUM_LOGS.*",
        "$JS.API.CONSUMER.MSG.NEXT.CRONIUM_EXEC.*",
        "$JS.API.CONSUMER.MSG.NEXT.CRONIUM_LOGS.*",
        "$JS.FC.>",
    ]


# Inputs and outputs over the inline limits live in the Object Store bucket cronium_payloads.
# No PURGE: an input's name is new (input/<execution id>), so an upload replaces nothing.
_PAYLOADS: Final = [
    "$JS.API.STREAM.INFO.OBJ_cronium_payloads",
    "$JS.API.STREAM.MSG.GET.OBJ_cronium_payloads",
    "$O.cronium_payloads.C.>",
    "$O.cronium_payloads.M.>",
]

OWN_EXEC: Final = "cronium.exec.{{name()}}.>"
OWN_LOGS: Final = "cronium.logs.{{name()}}.>"

_PUBLISH: Final[dict[Role, list[str]]] = {
    "user": [
        "cronium.exec.{{name()}}.*.requested",
        "cronium.exec.{{name()}}.*.cancel_requested",
        "cronium.ctl.secrets.user.{{name()}}.*",
        *_read_streams(OWN_EXEC, OWN_LOGS),
        *_PAYLOADS,
    ],
    "auditor": [
        "cronium.query.history",
        "cronium.query.logs",
        "cronium.query.audit.>",
        "cronium.query.stats",
        "cronium.query.metrics",
        "$JS.API.STREAM.MSG.GET.CRONIUM_EXEC",
        *_read_streams("cronium.exec.>", "cronium.logs.>"),
    ],
}
_SUBSCRIBE: Final[dict[Role, list[str]]] = {
    "user": [INBOX, OWN_EXEC, OWN_LOGS],
    "auditor": [INBOX, "cronium.exec.>", "cronium.logs.>"],
}


def template(role: Role) -> dict[str, Any]:
    """The permission template of a role's scoped signing key (``None`` lists: no limit)."""
    limits = {"subs": -1, "data": -1, "payload": -1}
    if role == "admin":
        return {"pub": {}, "sub": {}, **limits}
    return {
        "pub": {"allow": _PUBLISH[role], "deny": _KEEP_OFF_DURABLES},
        "sub": {"allow": _SUBSCRIBE[role]},
        **limits,
    }


def inbox_prefix(name: str) -> str:
    """The inbox prefix a user's connection must use (``_INBOX_<name>``)."""
    return f"_INBOX_{name}"
