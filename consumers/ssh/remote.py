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
from pathlib import Path
from typing import Final

import asyncssh

from cronium_bus.events import LogStream, Runtime

INTERPRETERS: Final[dict[str, str]] = {"bash": "bash", "python": "python3", "node": "node"}

_WRAPPER: Final = """d={workdir}
trap 'rm -rf "$d"' EXIT
export CRONIUM_API_SOCKET="$d/api.sock" CRONIUM_API_TOKEN_FILE="$d/token"
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


_MKTEMP: Final = '$(mktemp -d "${TMPDIR:-/tmp}/cronium.XXXXXXXX") || exit 125'
SDK_DIR: Final = Path(__file__).resolve().parents[2] / "images" / "sdk"
_PRELUDES: Final = {
    "bash": "bin/cronium.sh",
    "python": "python/cronium.py",
    "node": "node/cronium.js",
}


def wrapper_command(
    runtime: Runtime, script: bytes, grace: float, workdir: str | None = None
) -> str:
    """The remote command line (pure; tested). ``workdir`` is a directory made beforehand
    (holding the helpers' token); without it a private temp dir is made."""
    text = _WRAPPER.format(
        size=len(script),
        interpreter=INTERPRETERS[runtime],
        grace=max(1, round(grace)),
        workdir=shlex.quote(workdir) if workdir else _MKTEMP,
    )
    return "sh -c " + shlex.quote(text)


def uses_helpers(code: str) -> bool:
    """Whether a script may call a helper (every helper's name starts with ``cronium``)."""
    return "cronium" in code


def with_helpers(runtime: Runtime, code: str) -> str:
    """The script with the helper SDK in front, so ``cronium`` works with nothing installed."""
    prelude = (SDK_DIR / _PRELUDES[runtime]).read_text()
    return f"{prelude}\n{code}"


async def prepare_remote_dir(conn: asyncssh.SSHClientConnection, path: str, token: str) -> None:
    """Make the private remote directory and put the helpers' token in it (sent on stdin)."""
    command = 'sh -c \'umask 077 && mkdir "$0" && cat > "$0/token"\' ' + shlex.quote(path)
    await conn.run(command, input=token, check=True, timeout=30)


OnOutput = Callable[[LogStream, bytes], Awaitable[None]]


async def run_remote(
    conn: asyncssh.SSHClientConnection,
    runtime: Runtime,
    code: str,
    *,
    workdir: str | None = None,
    timeout: float,
    grace: float,
    cancel: asyncio.Event,
    on_output: OnOutput,
) -> RemoteExit:
    """Run ``code`` and stream its output to ``on_output`` until it ends."""
    script = code.encode()
    proc = await conn.create_process(
        wrapper_command(runtime, script, grace, workdir), encoding=None
    )
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
