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
        # lines as the log splits them: on "\n" only (str.splitlines also splits on \x1c,
        # \u2028, ..., which a log line keeps whole)
        fragments = {
            line.strip().encode()
            for value in secrets
            for line in value.split("\n")
            if len(line.strip()) >= MIN_SECRET_CHARS
        }
        self._fragments = sorted(fragments, key=len, reverse=True)
        self._re = (
            re.compile(b"|".join(map(re.escape, self._fragments))) if self._fragments else None
        )
        self.longest = len(self._fragments[0]) if self._fragments else 0
        """Bytes of the longest fragment: how far past a cut the splitter must see."""

    def __bool__(self) -> bool:
        return self._re is not None

    def mask_bytes(self, raw: bytes) -> bytes:
        """``raw`` with every byte of every occurrence of a secret masked — overlapping ones
        too (``abcXYZdef`` with secrets ``abcXYZ`` and ``XYZdef``), each run of masked bytes
        one ``********``."""
        if self._re is None or self._re.search(raw) is None:
            return raw
        spans: list[tuple[int, int]] = []
        for fragment in self._fragments:
            start = raw.find(fragment)
            while start >= 0:  # every occurrence, overlapping ones included
                spans.append((start, start + len(fragment)))
                start = raw.find(fragment, start + 1)
        spans.sort()
        out = bytearray()
        pos = 0
        end = -1
        for start, stop in spans:
            if start > end:  # a new run of masked bytes
                if end >= 0:
                    out += MASK.encode()
                out += raw[pos:start]
            end = max(end, stop)
            pos = end
        out += MASK.encode() + raw[pos:]
        return bytes(out)

    def mask(self, lines: list[str]) -> list[str]:
        """The lines with secrets masked."""
        if self._re is None:
            return lines
        return [self.mask_bytes(line.encode()).decode(errors="replace") for line in lines]
