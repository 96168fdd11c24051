"""Following one execution live: its lifecycle events and its log lines, until it ends."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from typing import Final, TextIO

from cronium_bus.bus import Bus
from cronium_bus.events import AnyEvent, FannedOut, LogChunk, Terminal
from cronium_bus.history import Follower
from cronium_bus.reading import LiveFollower, follow
from cronium_bus.state import ExecutionState, apply

_LINES_GRACE_S: Final = 5.0


class Watch:
    """Prints an execution's lines to the matching streams and folds its lifecycle."""

    def __init__(
        self,
        bus: Bus,
        execution_id: str,
        *,
        out: TextIO | None = None,
        err: TextIO | None = None,
        on_event: Callable[[AnyEvent, ExecutionState], None] | None = None,
    ) -> None:
        max_bytes = bus.settings.streams.max_msg_size
        self.execution_id = execution_id
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.on_event = on_event
        self.state: ExecutionState | None = None
        self.terminal: Terminal | None = None
        self._printed: dict[int, dict[str, int]] = {}  # per attempt: lines printed per stream
        self._max_bytes = max_bytes
        self._bus = bus
        self._children: list[Follower | LiveFollower] = []
        self._events = follow(bus, execution_id, "exec", max_bytes=max_bytes)
        self._logs = follow(bus, execution_id, "logs", max_bytes=max_bytes)
        self._final = asyncio.Event()
        self._lines_changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Subscribe to both subjects (call before publishing a request)."""
        await self._events.start()
        await self._logs.start()
        self._tasks = [
            asyncio.create_task(self._follow_events(self._events)),
            asyncio.create_task(self._follow_logs(self._logs)),
        ]

    async def _follow_events(self, events: Follower | LiveFollower) -> None:
        async for event in events:
            self.state = apply(self.state, event)
            if isinstance(event, FannedOut):
                for child in event.children:
                    follower = follow(
                        self._bus, child.execution_id, "logs", max_bytes=self._max_bytes
                    )
                    await follower.start()
                    self._children.append(follower)
                    self._tasks.append(
                        asyncio.create_task(
                            self._follow_logs(follower, prefix=f"[{child.target}] ")
                        )
                    )
            if isinstance(event, Terminal) and event.attempt == self.state.attempt:
                self.terminal = event
            if self.on_event is not None:
                self.on_event(event, self.state)
            if self.state.final:
                self._final.set()

    @property
    def printed(self) -> dict[str, int]:
        """Lines printed per stream for the current attempt."""
        attempt = self.state.attempt if self.state else 1
        return self._printed.setdefault(attempt, {"stdout": 0, "stderr": 0})

    async def _follow_logs(self, logs: Follower | LiveFollower, prefix: str = "") -> None:
        child: dict[int, dict[str, int]] = {}
        async for event in logs:
            if not isinstance(event, LogChunk):
                continue
            # every attempt's lines are shown, each attempt's sequence numbers from 0
            per_attempt = child if prefix else self._printed
            printed = per_attempt.setdefault(event.attempt, {"stdout": 0, "stderr": 0})
            skip = max(0, printed[event.stream] - event.first_seq)  # redelivered chunk
            lines = event.lines[skip:]
            if not lines:
                continue
            target = self.out if event.stream == "stdout" else self.err
            target.write("".join(f"{prefix}{line}\n" for line in lines))
            target.flush()
            printed[event.stream] = event.first_seq + len(event.lines)
            self._lines_changed.set()

    async def wait_final(self, timeout: float | None = None) -> ExecutionState:
        """Wait for the final state, then until every line it reports has been printed."""
        await asyncio.wait_for(self._final.wait(), timeout)
        assert self.state is not None
        if self.state.children:
            await self._quiet(0.3)
        elif self.terminal is not None:
            want = {"stdout": self.terminal.stdout_lines, "stderr": self.terminal.stderr_lines}
            loop = asyncio.get_running_loop()
            deadline = loop.time() + _LINES_GRACE_S
            while any(self.printed[s] < n for s, n in want.items()):
                self._lines_changed.clear()
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._lines_changed.wait(), remaining)
        return self.state

    async def _quiet(self, gap: float) -> None:
        """Wait until no line arrived for ``gap`` seconds (at most the grace period)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _LINES_GRACE_S
        while loop.time() < deadline:
            self._lines_changed.clear()
            try:
                await asyncio.wait_for(self._lines_changed.wait(), gap)
            except TimeoutError:
                return

    async def close(self) -> None:
        """Stop following."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._events.close()
        await self._logs.close()
        for follower in self._children:
            await follower.close()
