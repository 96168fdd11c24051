"""Request bodies and refusals the sealing service's two families (secrets, servers) share."""

from __future__ import annotations

from typing import TypeVar

import msgspec

from cronium_bus.errors import CroniumError

_E = TypeVar("_E", bound=CroniumError)


class NameOnly(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``rm``: which one; ``shared`` for an admin's shared one."""

    name: str
    shared: bool = False


class Nothing(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``list`` takes no fields."""


def refused(error: _E) -> _E:
    """``error`` as a refusal for lack of permission (the CLI exits 77)."""
    error.kind = "permission"
    return error
