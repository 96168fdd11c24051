"""Execution identifiers.

The producer chooses the execution id; it is the idempotency key (``Nats-Msg-Id``) of the request
and a token of every subject of the execution, so it may hold only characters that are safe in a
NATS subject token and a file name.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from typing import Final

_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def is_valid_id(value: str) -> bool:
    """Whether ``value`` may be used as an execution, correlation or event id."""
    return bool(_ID_RE.fullmatch(value))


def new_id(prefix: str = "ex") -> str:
    """A new time-ordered id: ``<prefix>_`` + 10 chars of milliseconds + 16 random chars."""
    millis = int(time.time() * 1000)
    rand = int.from_bytes(os.urandom(10), "big")
    head = "".join(_CROCKFORD[(millis >> shift) & 31] for shift in range(45, -1, -5))
    tail = "".join(_CROCKFORD[(rand >> shift) & 31] for shift in range(75, -1, -5))
    return f"{prefix}_{head}{tail}"


ID_PATTERN = _ID_RE.pattern
NAME_PATTERN: Final = r"^(?=.{1,128}$)[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"
"""Names of secrets and variables: 1-128 characters, dot-separated tokens of [A-Za-z0-9_-]
(no leading, trailing or double dot — each name is also a NATS KV key)."""
NAME_HINT: Final = "use 1-128 characters: words of [A-Za-z0-9_-] joined by single dots"


def derived_id(base: str, suffix: str, secret: str) -> str:
    """The id of an execution the service starts on an owner's behalf (a workflow's node, a
    conditional action's run, a schedule's fire): ``<base>-<suffix>-<digest>``, the same every
    time it is derived — so a redelivery or a second consumer never starts it twice — and
    unguessable to anyone who has not seen ``secret`` (an event id of the owner's own), so no
    one else can take the id first. A base too long to fit is shortened with a hash of it."""
    digest = hashlib.sha256(f"{secret}/{suffix}".encode()).hexdigest()[:6]
    tail = f"-{suffix}-{digest}"
    if len(base) + len(tail) > 64:
        short = hashlib.sha256(base.encode()).hexdigest()[:8]
        base = f"{base[: 64 - len(tail) - 9]}-{short}"
    return base + tail
