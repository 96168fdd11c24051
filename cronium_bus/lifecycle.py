"""Graceful shutdown, one shared pattern (as in arq and faststream).

On SIGTERM/SIGINT a service stops taking work, waits up to a grace period for work in flight,
then cancels it. ``install_signals=False`` lets tests embed services without touching signals.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)


class Stopper:
    """A stop flag that signals, tests or a parent process can set."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested."""
        return self.event.is_set()

    def stop(self) -> None:
        """Request a stop (idempotent)."""
        self.event.set()

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until stopped or ``timeout``; return whether a stop was requested."""
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
        except TimeoutError:
            return False
        return True


async def run_service(
    main: Callable[[Stopper], Awaitable[None]],
    *,
    install_signals: bool = True,
    stopper: Stopper | None = None,
) -> None:
    """Run ``main(stopper)`` until it returns; signals set the stopper."""
    stopper = stopper or Stopper()
    loop = asyncio.get_running_loop()
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopper.stop)
    try:
        await main(stopper)
    finally:
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


async def drain_tasks(tasks: set[asyncio.Task[None]], grace: float) -> None:
    """Wait up to ``grace`` seconds for ``tasks``, then cancel what is left."""
    if not tasks:
        return
    done, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        task.cancel()
    if pending:
        log.warning("cancelled work in flight after grace period", count=len(pending))
        await asyncio.wait(pending, timeout=5.0)  # bounded, as cancellation can be lost
    del done
