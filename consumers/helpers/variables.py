"""User-scoped script variables in a NATS KV bucket."""

from __future__ import annotations

import base64
from typing import Any, Final

import msgspec
from nats.js import JetStreamContext

from cronium_bus.provision import kv_value
from cronium_bus.subjects import VARIABLES_BUCKET

MAX_VALUE_BYTES: Final = 64 * 1024


def variable_key(user: str, key: str) -> str:
    """The bucket key of ``key`` for ``user`` (the user is encoded so any name is safe)."""
    scope = base64.b32encode(user.encode()).decode().rstrip("=").lower()
    return f"u_{scope}.{key}"


class VariableStore:
    """Get and set a user's variables; values are JSON."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def get(self, user: str, key: str) -> Any:
        """The value, or ``None`` when unset."""
        value = await kv_value(self.js, VARIABLES_BUCKET, variable_key(user, key))
        return msgspec.json.decode(value) if value is not None else None

    async def put(self, user: str, key: str, encoded: bytes) -> None:
        """Store an already validated, JSON-encoded value."""
        kv = await self.js.key_value(VARIABLES_BUCKET)
        await kv.put(variable_key(user, key), encoded)
