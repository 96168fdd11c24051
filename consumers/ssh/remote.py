"""Running one script on a remote host over an SSH channel.

The script travels on the channel's stdin into a private temp dir (removed afterwards) and runs
in its own process group under ``setsid``. A watchdog in the wrapper waits for the channel's stdin
to close: the runner closes it to stop the script (timeout, cancel), and it also closes when the
connection dies — either way the whole process group gets SIGTERM, then SIGKILL after a grace,
so no process of the script lingers on the server.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import asyncssh

from cronium_bus.events import LogStream, Runtime

INTERPRETERS: Final[dict[str, str]] = {"bash": "bash", "python": "python3", "node": "node"}

_WRAPPER: Final = """d=$(mktemp -d "${{TMPDIR:-/tmp}}/cronium.XXXXXXXX") || exit 125
trap 'rm -rf "$d"' EXIT
head -c {size} > "$d/script" || exit 125
exec 3<&0
setsid {interpreter} "$d/script" </dev/null 3<&- &
pid=$!
( read -r _ <&3; kill -TERM -"$pid" 2>/dev/null; sleep {grace}; kill -KILL -"$pid" 2>/dev/null ) \
 >/dev/null 2>&1 &
watchdog=$!
wait "$pid"; rc=$?
kill "$watchdog" 2>/dev/null
exit $rc
"""


@dataclass(frozen=True)
class RemoteExit:
    """How a remote script ended."""

    exit_code: int | None
    timed_out: bool
    cancelled: bool


def wrapper_command(runtime: Runtime, script: bytes, grace: float) -> str:
    """The remote command line (pure; tested)."""
    text = _WRAPPER.format(
        size=len(script), interpreter=INTERPRETERS[runtime], grace=max(1, round(grace))
    )
    return "sh -c " + shlex.quote(text)


OnOutput = Callable[[LogStream, bytes], Awaitable[None]]


async def run_remote(
    conn: asyncssh.SSHClientConnection,
    runtime: Runtime,
    code: str,
    *,
    timeout: float,
    grace: float,
    cancel: asyncio.Event,
    on_output: OnOutput,
) -> RemoteExit:
    """Run ``code`` and stream its output to ``on_output`` until it ends."""
    script = code.encode()
    proc = await conn.create_process(wrapper_command(runtime, script, grace), encoding=None)
    proc.stdin.write(script)

    async def pump(reader: asyncssh.SSHReader[bytes], stream: LogStream) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            await on_output(stream, data)

    pumps = asyncio.gather(pump(proc.stdout, "stdout"), pump(proc.stderr, "stderr"))
    waiter = asyncio.ensure_future(proc.wait())
    cancelled = asyncio.ensure_future(cancel.wait())
    timed_out = False
    try:
        done, _ = await asyncio.wait(
            {waiter, cancelled}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if waiter not in done:
            timed_out = cancelled not in done
            proc.stdin.write_eof()  # the watchdog stops the process group
            try:
                await asyncio.wait_for(asyncio.shield(waiter), grace + 5)
            except TimeoutError:
                proc.close()
        result = await waiter
        await asyncio.wait_for(pumps, 5)
    finally:
        cancelled.cancel()
        if not pumps.done():
            pumps.cancel()
    return RemoteExit(
        exit_code=result.exit_status if result.exit_status is not None else None,
        timed_out=timed_out,
        cancelled=cancel.is_set() and not timed_out,
    )
