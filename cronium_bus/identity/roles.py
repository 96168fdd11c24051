"""What each role may do, as nats-server permissions (the server enforces them, not us).

Roles of people, each a scoped signing key of the ``CRONIUM`` account whose permission template
every user it signs receives (nats-server expands ``{{name()}}`` to the user's name):

- ``admin``: users, shared secrets and servers; sees everything. No limits inside the account.
- ``user``: runs and cancels executions, follows them, queries. Today this is what a producer
  could do before identities existed (``deploy/nats/accounts.conf``'s ``cronium-producer``): it
  may not publish lifecycle events other than ``requested`` and ``cancel_requested``, read
  secrets, variables or servers, change or delete streams and the service's consumers, or purge
  the payload store. Confining a user to *their own* executions needs the owner in the subjects;
  that is the next step of issue 13 and not here yet.
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

# Reading the lifecycle and log streams with ephemeral consumers of one's own (the CLI's
# `show`, `logs --follow`, `watch`): create, look up, pull, acknowledge, flow control.
_READ_STREAMS: Final = [
    "$JS.API.INFO",
    "$JS.API.STREAM.NAMES",
    "$JS.API.STREAM.INFO.CRONIUM_EXEC",
    "$JS.API.STREAM.INFO.CRONIUM_LOGS",
    "$JS.API.STREAM.MSG.GET.CRONIUM_EXEC",
    "$JS.API.CONSUMER.CREATE.CRONIUM_EXEC",
    "$JS.API.CONSUMER.CREATE.CRONIUM_EXEC.>",
    "$JS.API.CONSUMER.CREATE.CRONIUM_LOGS",
    "$JS.API.CONSUMER.CREATE.CRONIUM_LOGS.>",
    "$JS.API.CONSUMER.INFO.CRONIUM_EXEC.*",
    "$JS.API.CONSUMER.INFO.CRONIUM_LOGS.*",
    "$JS.API.CONSUMER.DELETE.CRONIUM_EXEC.*",
    "$JS.API.CONSUMER.DELETE.CRONIUM_LOGS.*",
    "$JS.API.CONSUMER.MSG.NEXT.CRONIUM_EXEC.*",
    "$JS.API.CONSUMER.MSG.NEXT.CRONIUM_LOGS.*",
    "$JS.ACK.CRONIUM_EXEC.>",
    "$JS.ACK.CRONIUM_LOGS.>",
    "$JS.FC.>",
]

# Inputs over the inline limit go to the Object Store bucket cronium_payloads. No PURGE: an
# input's name is new (input/<execution id>), so an upload replaces nothing.
_UPLOAD_INPUTS: Final = [
    "$JS.API.STREAM.INFO.OBJ_cronium_payloads",
    "$JS.API.STREAM.MSG.GET.OBJ_cronium_payloads",
    "$O.cronium_payloads.C.>",
    "$O.cronium_payloads.M.>",
]

_PUBLISH: Final[dict[Role, list[str]]] = {
    "user": [
        "cronium.exec.*.requested",
        "cronium.exec.*.cancel_requested",
        "cronium.query.>",
        *_READ_STREAMS,
        *_UPLOAD_INPUTS,
    ],
    "auditor": [
        "cronium.query.history",
        "cronium.query.logs",
        "cronium.query.audit.>",
        "cronium.query.stats",
        "cronium.query.metrics",
        *_READ_STREAMS,
    ],
}


def template(role: Role) -> dict[str, Any]:
    """The permission template of a role's scoped signing key (``None`` lists: no limit)."""
    limits = {"subs": -1, "data": -1, "payload": -1}
    if role == "admin":
        return {"pub": {}, "sub": {}, **limits}
    return {"pub": {"allow": _PUBLISH[role]}, "sub": {"allow": [INBOX]}, **limits}


def inbox_prefix(name: str) -> str:
    """The inbox prefix a user's connection must use (``_INBOX_<name>``)."""
    return f"_INBOX_{name}"
