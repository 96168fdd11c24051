"""From raw output bytes to log-chunk events: line splitting and batching.

``LineSplitter`` is pure. ``LogPump`` batches the lines of each stream and flushes a chunk when it
holds ``max_lines`` lines or ``max_bytes`` bytes, or when its oldest line has waited ``flush_s``
seconds — so a line reaches live subscribers within ``flush_s`` of being printed. A line that
arrives after a quiet period (nothing flushed for ``flush_s``) is flushed at once (leading edge):
the first line of a job, or the next after a pause, costs no batching delay. Every line keeps
its own sequence number per (execution, attempt, stream), gapless from 0.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from consumers.masking import Masker
from cronium_bus.events import LogStream

TRUNCATED = " …[line truncated]"


class LineSplitter:
    """Splits a byte stream into text lines, secrets masked (``masker``); over-long lines are
    cut at ``max_line_bytes`` after masking, never before."""

    def __init__(self, max_line_bytes: int, masker: Masker | None = None) -> None:
        self.max_line_bytes = max_line_bytes
        self._masker = masker or Masker(())
        # an over-long line's head waits until a secret straddling the cut is all in sight
        self._margin = max(self._masker.longest - 1, 0)
        self._buf = bytearray()
        self._skipping = False  # inside an over-long line whose head was already emitted

    def feed(self, data: bytes) -> list[str]:
        """Complete lines found in ``data`` (without their newline)."""
        lines: list[str] = []
        self._buf += data
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > self.max_line_bytes + self._margin:
                    if not self._skipping:
                        head = bytes(self._buf[: self.max_line_bytes + self._margin])
                        lines.append(self._line(head, cut=True))
                        self._skipping = True
                    del self._buf[:]
                return lines
            raw = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if self._skipping:
                self._skipping = False
                continue
            lines.append(self._line(raw))

    def close(self) -> list[str]:
        """The last, unterminated line, if any."""
        rest, self._buf = bytes(self._buf), bytearray()
        if self._skipping or not rest:
            self._skipping = False
            return []
        return [self._line(rest)]

    def _line(self, raw: bytes, *, cut: bool = False) -> str:
        """One line: masked, then cut at the limit (marked; ``cut``: it goes on), then decoded."""
        masked = self._masker.mask_bytes(raw)
        if cut or len(masked) > self.max_line_bytes:
            return self._decode(masked[: self.max_line_bytes]) + TRUNCATED
        return self._decode(masked)

    @staticmethod
    def _decode(raw: bytes) -> str:
        return raw.decode("utf-8", errors="replace").rstrip("\r")


Publish = Callable[[LogStream, int, list[str]], Awaitable[None]]


class _Pending:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.bytes = 0
        self.since = 0.0
        self.last_flush = 0.0
        self.next_seq = 0


class LogPump:
    """Batches lines of stdout and stderr into chunks and hands them to ``publish``."""

    def __init__(self, publish: Publish, *, flush_s: float, max_lines: int, max_bytes: int) -> None:
        self._publish = publish
        self.flush_s = flush_s
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self._pending: dict[LogStream, _Pending] = {"stdout": _Pending(), "stderr": _Pending()}
        self._lock = asyncio.Lock()

    def lines_sent(self, stream: LogStream) -> int:
        """How many lines of ``stream`` were handed over so far (the next sequence number)."""
        return self._pending[stream].next_seq

    async def add(self, stream: LogStream, lines: list[str]) -> None:
        """Queue lines; flush the stream if its batch is full."""
        p = self._pending[stream]
        for line in lines:
            if not p.lines:
                now = time.monotonic()
                quiet = now - p.last_flush >= self.flush_s
                p.since = now - self.flush_s if quiet else now  # due at once after a pause
            p.lines.append(line)
            p.bytes += len(line) + 1
            if len(p.lines) >= self.max_lines or p.bytes >= self.max_bytes:
                await self._flush(stream)

    def next_deadline(self) -> float | None:
        """Seconds until the oldest pending line must be flushed, or ``None`` if none is pending."""
        sinces = [p.since for p in self._pending.values() if p.lines]
        if not sinces:
            return None
        return max(0.0, min(sinces) + self.flush_s - time.monotonic())

    async def flush_due(self) -> None:
        """Flush every stream whose oldest line has waited ``flush_s``."""
        now = time.monotonic()
        for stream, p in self._pending.items():
            if p.lines and now - p.since >= self.flush_s:
                await self._flush(stream)

    async def flush_all(self) -> None:
        """Flush everything pending (end of output)."""
        for stream in self._pending:
            await self._flush(stream)

    async def _flush(self, stream: LogStream) -> None:
        async with self._lock:
            p = self._pending[stream]
            if not p.lines:
                return
            lines, first = p.lines, p.next_seq
            p.lines, p.bytes = [], 0
            p.last_flush = time.monotonic()
            p.next_seq += len(lines)
            await self._publish(stream, first, lines)
