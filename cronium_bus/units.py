"""Parsing of human-written sizes and durations (CLI flags, settings)."""

from __future__ import annotations

import math
import re
from typing import Final

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNIT: Final = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_DUR_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DUR_UNIT: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_SIZE: Final = 1024**5


def parse_size(text: str | int) -> int:
    """Bytes from ``"512m"``, ``"2g"``, ``"100MiB"``, ``"1.5GB"`` or a plain number.

    Units are binary, as in ``docker run --memory``: k = 1024, m = 1024², g = 1024³.
    """
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"size must not be negative, got {text}")
        return text
    match = _SIZE_RE.fullmatch(text)
    if not match:
        raise ValueError(f"cannot read size {text!r}: use a number with k, m, g or t (e.g. 512m)")
    value = float(match.group(1)) * _UNIT[match.group(2).lower()]
    if value > MAX_SIZE:
        raise ValueError(f"size {text!r} is absurdly large")
    return int(value)


def parse_duration(text: str | float) -> float:
    """Seconds from ``"90"``, ``"30s"``, ``"5m"``, ``"1h30m"``, ``"2d"`` or ``"250ms"``."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        stripped = text.strip().lower()
        try:
            seconds = float(stripped)
        except ValueError:
            parts = _DUR_RE.findall(stripped)
            if not parts or "".join(n + u for n, u in parts) != stripped:
                raise ValueError(
                    f"cannot read duration {text!r}: use e.g. 30s, 5m, 1h30m or 2d"
                ) from None
            seconds = sum(float(n) * _DUR_UNIT[u] for n, u in parts)
    if math.isnan(seconds) or seconds < 0 or seconds > 10 * 365 * 86400:  # NaN, negative, absurd
        raise ValueError(f"duration {text!r} is out of range")
    return seconds


def format_size(n: int) -> str:
    """``536870912`` → ``"512 MiB"``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover - loop always returns


_MAX_HOST_LEN: Final = 253


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) to bind; port 0 picks a free one. Raises
    ``ValueError`` with what to write instead."""
    host, sep, port_text = text.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or len(host) > _MAX_HOST_LEN or any(c.isspace() for c in host):
        raise ValueError(f"{text[:80]!r} is not HOST:PORT (e.g. 127.0.0.1:9464)")
    digits = port_text.isascii() and port_text.isdigit() and len(port_text) <= 5
    if not digits or int(port_text) > 65535:
        raise ValueError(f"{port_text[:20]!r} is not a port (0-65535) in {text[:80]!r}")
    return host, int(port_text)
