"""The container runner against the real Docker engine: outcomes, live output, limits, cleanup."""

from __future__ import annotations

import asyncio
import time

import docker
import pytest

from consumers.container.runtime import LABEL_EXECUTION, LABEL_INSTALLATION
from cronium_bus.bus import Bus
from cronium_bus.events import CancelRequested, Limits, LogChunk, Terminal, follow_up
from cronium_bus.history import execution_events, follow_logs, read_subject
from cronium_bus.provision import installation_id
from cronium_bus.settings import Settings
from cronium_bus.subjects import LOGS_STREAM, log_subject
from tests.conftest import Embedded
from tests.helpers import requested, run_code, wait_final

pytestmark = pytest.mark.docker


async def lines_of(bus: Bus, execution_id: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"stdout": [], "stderr": []}
    async for chunk in read_subject(
        bus.js, LOGS_STREAM, log_subject("*", execution_id), max_bytes=1 << 24
    ):
        assert isinstance(chunk, LogChunk)
        assert chunk.first_seq == len(out[chunk.stream]), "sequence numbers must be gapless"
        out[chunk.stream].extend(chunk.lines)
    return out


async def terminal_of(bus: Bus, execution_id: str) -> Terminal:
    events = await execution_events(bus.js, execution_id, max_bytes=1 << 24)
    terminals = [e for e in events if isinstance(e, Terminal)]
    assert len(terminals) == 1, "exactly one terminal event per attempt"
    return terminals[0]


@pytest.mark.parametrize(
    ("runtime", "code"),
    [("python", "print(6*7)"), ("bash", "echo $((6*7))"), ("node", "console.log(6*7)")],
)
async def test_each_runtime_prints_42(bus: Bus, runner: Embedded, runtime: str, code: str) -> None:
    """python, bash and node each run and their stdout arrives as log lines."""
    state = await run_code(bus, code, runtime)
    assert (state.status, state.exit_code) == ("succeeded", 0)
    assert (await lines_of(bus, state.execution_id))["stdout"] == ["42"]
    term = await terminal_of(bus, state.execution_id)
    assert term.image == f"cronium/runtime-{runtime}:2"
    assert term.image_id and term.image_id.startswith("sha256:")
    assert term.durations.run_ms > 0 and term.durations.setup_ms > 0


@pytest.mark.parametrize(
    ("runtime", "code", "least"),
    [
        ("python", "import sys; print(*sys.version_info[:2], sep='.')", (3, 12)),
        ("node", "console.log(process.versions.node.split('.').slice(0, 2).join('.'))", (20, 0)),
        ("bash", 'echo "${BASH_VERSINFO[0]}.${BASH_VERSINFO[1]}"', (5, 2)),
    ],
)
async def test_runtimes_are_supported_releases(
    bus: Bus, runner: Embedded, runtime: str, code: str, least: tuple[int, int]
) -> None:
    """The images carry maintained runtimes (Debian 13): python 3.12+, node 20+, bash 5.2+."""
    state = await run_code(bus, code, runtime)
    assert state.status == "succeeded"
    (version,) = (await lines_of(bus, state.execution_id))["stdout"]
    assert tuple(int(part) for part in version.split(".")) >= least


async def test_exit_code_and_streams_are_kept_apart(bus: Bus, runner: Embedded) -> None:
    """A failing script ends failed/nonzero_exit with its code; stderr stays on stderr."""
    state = await run_code(bus, "echo out; echo err >&2; exit 3", "bash")
    assert (state.status, state.exit_code) == ("failed", 3)
    assert state.error is not None and state.error.kind == "nonzero_exit"
    assert await lines_of(bus, state.execution_id) == {"stdout": ["out"], "stderr": ["err"]}


async def test_lines_arrive_while_the_script_runs(bus: Bus, runner: Embedded) -> None:
    """A line printed before a sleep reaches a live subscriber before the script ends."""
    event = requested("import time\nprint('first', flush=True)\ntime.sleep(3)\nprint('second')")
    tail = await follow_logs(bus.js, event.execution_id, max_bytes=1 << 20).start()
    await bus.publish(event)
    got_first = None
    async for chunk in tail:
        assert isinstance(chunk, LogChunk)
        if "first" in chunk.lines:
            got_first = time.monotonic()
            break
    await tail.close()
    state = await wait_final(bus, event.execution_id)
    ended = time.monotonic()
    assert state.status == "succeeded"
    assert got_first is not None and ended - got_first > 2.0


async def test_many_lines_are_gapless(bus: Bus, runner: Embedded) -> None:
    """20,000 lines arrive complete, in order, with gapless sequence numbers."""
    state = await run_code(bus, "for i in range(20000): print(i)")
    lines = await lines_of(bus, state.execution_id)
    assert lines["stdout"] == [str(i) for i in range(20000)]
    term = await terminal_of(bus, state.execution_id)
    assert term.stdout_lines == 20000


async def test_timeout_ends_timed_out(bus: Bus, runner: Embedded) -> None:
    """A script sleeping past its timeout is stopped and ends timed_out."""
    t0 = time.monotonic()
    state = await run_code(bus, "sleep 30", "bash", timeout_s=1.0)
    assert state.status == "timed_out"
    assert state.error is not None and state.error.kind == "timeout"
    assert time.monotonic() - t0 < 15


async def test_cancel_mid_run_ends_cancelled(bus: Bus, runner: Embedded) -> None:
    """cancel_requested while running ends the execution cancelled within 2 s."""
    event = requested("echo started; sleep 60", "bash")
    await bus.publish(event)
    async for chunk in follow_logs(bus.js, event.execution_id, max_bytes=1 << 20):
        if isinstance(chunk, LogChunk) and "started" in chunk.lines:
            break
    t0 = time.monotonic()
    await bus.publish(CancelRequested(**follow_up(event, "tests")))
    state = await wait_final(bus, event.execution_id)
    assert state.status == "cancelled"
    assert time.monotonic() - t0 < 2.0


async def test_memory_hog_ends_oom(bus: Bus, runner: Embedded) -> None:
    """A script allocating past its memory limit ends failed with kind oom."""
    code = "x = []\nwhile True: x.append(bytearray(16 * 1024 * 1024))"
    state = await run_code(bus, code, limits=Limits(memory_bytes=64 * 1024**2))
    assert state.status == "failed"
    assert state.error is not None and state.error.kind == "oom", state.error
    assert state.exit_code == 137


async def test_files_filling_the_memory_limit_end_tmpfs_full(bus: Bus, runner: Embedded) -> None:
    """tmpfs pages count against the memory limit on this kernel: a script that fills /tmp and
    /workspace past its memory (256 MiB here) is not called a memory hog — it ends tmpfs_full,
    saying how much its files held."""
    code = (
        "for i in $(seq 1 40); do head -c 8M /dev/zero > /workspace/w$i; sleep 0.05; done; "
        "for i in $(seq 1 40); do head -c 8M /dev/zero > /tmp/t$i; sleep 0.05; done"
    )
    state = await run_code(bus, code, "bash", limits=Limits(memory_bytes=256 * 1024**2))
    assert state.status == "failed"
    assert state.error is not None and state.error.kind == "tmpfs_full", state.error
    assert "files in /tmp and /workspace held" in state.error.message
    assert "tmpfs" in state.error.hint


async def test_output_over_the_cap_ends_output_limit(bus: Bus, runner: Embedded) -> None:
    """Printing past the output cap (1 MiB in tests) stops the script: output_limit."""
    state = await run_code(bus, "yes 'spam spam spam spam'", "bash")
    assert state.status == "failed"
    assert state.error is not None and state.error.kind == "output_limit"
    term = await terminal_of(bus, state.execution_id)
    assert term.usage.output_bytes <= 1024 * 1024


async def test_missing_image_is_image_unavailable(bus: Bus, settings: Settings) -> None:
    """A runtime whose image is not on the engine ends image_unavailable with a hint."""
    from consumers.container.service import ContainerRunner
    from consumers.dispatcher.service import Dispatcher

    images = {**settings.runner.images, "python": "cronium/does-not-exist:0"}
    broken = settings.model_copy(
        update={"runner": settings.runner.model_copy(update={"images": images})}
    )
    async with Bus(broken) as b:
        emb = Embedded()
        emb.tasks += [
            asyncio.create_task(Dispatcher(b).run(emb.stopper)),
            asyncio.create_task(ContainerRunner(b).run(emb.stopper)),
        ]
        try:
            state = await run_code(b, "print(1)")
        finally:
            await emb.stop()
    assert state.status == "failed"
    assert state.error is not None and state.error.kind == "image_unavailable"
    assert "make images" in state.error.hint


async def test_sandbox_has_no_network_no_root_and_a_read_only_root(
    bus: Bus, runner: Embedded
) -> None:
    """The script runs as uid 1000, cannot write /, and cannot reach 127.0.0.1."""
    code = (
        "id -u\n"
        "touch /evil 2>/dev/null && echo wrote-root || echo ro-root\n"
        "(exec 3<>/dev/tcp/127.0.0.1/22) 2>/dev/null && echo net || echo no-net\n"
        "env | grep -c CRONIUM_NATS_URL || true\n"
    )
    state = await run_code(bus, code, "bash")
    assert state.status == "succeeded"
    assert (await lines_of(bus, state.execution_id))["stdout"] == ["1000", "ro-root", "no-net", "0"]


async def test_no_container_is_left_behind(bus: Bus, runner: Embedded) -> None:
    """After runs end, no container of theirs remains: none labelled with their executions,
    and the warm containers they consumed are gone (only the idle pool is left)."""
    states = await asyncio.gather(*(run_code(bus, f"print({i})") for i in range(4)))
    client = docker.from_env()
    ids = {s.execution_id for s in states}
    idle_max = bus.settings.runner.warm_pool * len(bus.settings.runner.warm_runtimes)
    left: list[str] = []
    pooled: list[dict[str, object]] = []
    mine = [LABEL_EXECUTION, f"{LABEL_INSTALLATION}={await installation_id(bus.js)}"]
    for _ in range(100):  # removal follows the terminal event; bounded wait
        found = client.api.containers(all=True, filters={"label": mine})
        left = [c["Id"] for c in found if (c.get("Labels") or {}).get(LABEL_EXECUTION) in ids]
        pooled = [c for c in found if (c.get("Labels") or {}).get("org.cronium.pool")]
        exited = [c for c in pooled if c.get("State") not in ("created", "running")]
        if not left and len(pooled) <= idle_max and not exited:
            break
        await asyncio.sleep(0.1)
    assert left == []
    assert len(pooled) <= idle_max  # idle or being created: none a finished run left
    assert all(c.get("State") in ("created", "running") for c in pooled)
