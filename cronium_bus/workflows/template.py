"""Messages of ``notify`` actions: ``{{field}}`` placeholders filled from an execution's facts.

Sandboxed by construction: there is no expression language, no attribute access and no code —
a placeholder is one of :data:`FIELDS`, and anything else in ``{{ }}`` refuses the request when
it is validated. Values are plain text, and the output is cut at :data:`MAX_MESSAGE` characters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

FIELDS: Final = (
    "execution_id",
    "status",
    "exit_code",
    "user",
    "runtime",
    "event_ref",
    "attempt",
    "duration_s",
    "error_kind",
    "error_message",
    "output",
    "workflow_id",
    "node",
)
MAX_MESSAGE: Final = 8192
_PLACEHOLDER: Final = re.compile(r"\{\{\s*([^{}]{0,64}?)\s*\}\}")


def unknown_fields(message: str) -> list[str]:
    """Placeholders of ``message`` that are not one of :data:`FIELDS`."""
    return [m for m in _PLACEHOLDER.findall(message) if m not in FIELDS]


def render(message: str, facts: Mapping[str, str]) -> str:
    """``message`` with every ``{{field}}`` replaced by its fact (empty when unknown)."""
    out = _PLACEHOLDER.sub(lambda m: facts.get(m.group(1), ""), message)
    return out[:MAX_MESSAGE]
