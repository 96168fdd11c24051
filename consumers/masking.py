"""Masking of secret values in log output.

Masking works on whole lines, on their bytes, **before** a line is cut at the line limit: the
line splitter holds an over-long line's head until it has the longest secret's length past the
cut, masks, and only then cuts, so a secret straddling the cut never leaks its first part.
A multi-line secret is masked line by line. Values shorter than :data:`MIN_SECRET_CHARS` cannot
be masked without masking ordinary text everywhere, so they are refused when stored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from cronium_bus.secrets import MIN_SECRET_CHARS

MASK: Final = "********"


class Masker:
    """Replaces every occurrence of the given secret values with ``********``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        fragments = {
            line.strip().encode()
            for value in secrets
            for line in value.splitlines() or [value]
            if len(line.strip()) >= MIN_SECRET_CHARS
        }
        ordered = sorted(fragments, key=len, reverse=True)  # longest first
        self._re = re.compile(b"|".join(map(re.escape, ordered))) if ordered else None
        self.longest = len(ordered[0]) if ordered else 0
        """Bytes of the longest fragment: how far past a cut the splitter must see."""

    def __bool__(self) -> bool:
        return self._re is not None

    def mask_bytes(self, raw: bytes) -> bytes:
        """``raw`` with secrets masked."""
        return self._re.sub(MASK.encode(), raw) if self._re is not None else raw

    def mask(self, lines: list[str]) -> list[str]:
        """The lines with secrets masked."""
        if self._re is None:
            return lines
        return [self.mask_bytes(line.encode()).decode(errors="replace") for line in lines]
