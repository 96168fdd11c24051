"""Masking of secret values in log lines.

Masking works on whole lines (the line splitter joins output read in pieces first), so a secret
printed across two reads of the container's output, or two log chunks, is still masked.
A multi-line secret is masked line by line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

MASK: Final = "********"
_MIN_LEN: Final = 3  # shorter fragments would mask ordinary text everywhere


class Masker:
    """Replaces every occurrence of the given secret values with ``********``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        fragments = {
            line.strip()
            for value in secrets
            for line in value.splitlines() or [value]
            if len(line.strip()) >= _MIN_LEN
        }
        ordered = sorted(fragments, key=len, reverse=True)  # longest first
        self._re = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __bool__(self) -> bool:
        return self._re is not None

    def mask(self, lines: list[str]) -> list[str]:
        """The lines with secrets masked."""
        if self._re is None:
            return lines
        return [self._re.sub(MASK, line) for line in lines]
