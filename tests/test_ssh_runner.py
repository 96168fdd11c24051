"""The SSH runner against 20 real OpenSSH sshd daemons on 127.0.0.1: fan-out, pooling,
circuit breaking, host-key and auth errors, and no lingering remote processes."""

from __future__ import annotations

import asyncio
import glob
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncssh
import msgspec
import pytest

from consumers.dispatcher.service import Dispatcher
from consumers.secrets.service import SecretsService
from consumers.ssh.service import SshRunner
from cronium_bus.bus import Bus
from cronium_bus.cli.servers import register
from cronium_bus.events import CancelRequested, LogChunk, Terminal, follow_up
from cronium_bus.history import execution_events, read_subject
from cronium_bus.lifecycle import Stopper
from cronium_bus.metrics import scrape
from cronium_bus.servers import CircuitState, circuit_key
from cronium_bus.settings import Settings
from cronium_bus.subjects import CIRCUITS_BUCKET, LOGS_STREAM, log_subject
from tests.helpers import requested, sealer_ready, wait_final
from tests.sshd import Sshd

N = 20


@pytest.fixture(scope="module")
def client_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


@pytest.fixture(scope="module")
def farm(
    tmp_path_factory: pytest.TempPathFactory, client_key: asyncssh.SSHKey
) -> Iterator[list[Sshd]]:
    """Twenty sshd daemons, each with its own host key."""
    root = tmp_path_factory.mktemp("sshd")
    daemons = []
    for i in range(N):  # each picks a free port right before it starts listening on it
        daemons.append(Sshd(root / f"s{i}", client_key.export_public_key()))
        daemons[-1].start()
    yield daemons
    for d in daemons:
        d.stop()


@pytest.fixture
async def ssh_bus(
    settings: Settings, farm: list[Sshd], client_key: asyncssh.SSHKey
) -> AsyncIterator[Bus]:
    """Dispatcher and SSH runner in-process; every daemon registered as s0..s19."""
    tuned = settings.model_copy(
        update={
            "ssh": settings.ssh.model_copy(update={"breaker_open_for": 2.0}),
            "runner": settings.runner.model_copy(update={"slots": 8}),
        }
    )
    async with Bus(tuned, name="ssh-tests") as bus:
        from cronium_bus.provision import provision

        await provision(bus.js, tuned)
        stopper = Stopper()
        tasks = [asyncio.create_task(SecretsService(bus).run(stopper))]
        await sealer_ready(bus)
        key = client_key.export_private_key()
        for i, d in enumerate(farm):
            await register(bus, f"s{i}", f"ssh://root@127.0.0.1:{d.port}", key, d.known_hosts)
        tasks += [
            asyncio.create_task(Dispatcher(bus).run(stopper)),
            asyncio.create_task(SshRunner(bus).run(stopper)),
        ]
        yield bus
        stopper.stop()
        _, pending = await asyncio.wait(tasks, timeout=30)
        assert not pending, "consumers did not stop within 30 s"


async def children_of(bus: Bus, execution_id: str) -> list[Terminal]:
    state = await wait_final(bus, execution_id, timeout=120)
    terminals = []
    for child in state.children:
        events = await execution_events(bus.js, child.execution_id, max_bytes=1 << 20)
        terminals.extend(e for e in events if isinstance(e, Terminal))
    return terminals


async def run_on(bus: Bus, code: str, targets: list[str], **fields: object) -> str:
    event = requested(code, "bash", runner="ssh", targets=tuple(targets), **fields)
    await bus.publish(event)
    return event.execution_id


async def test_one_command_on_20_servers_runs_in_parallel(ssh_bus: Bus) -> None:
    """20 targets finish in well under the sum of their times; lines arrive tagged, ordered."""
    targets = [f"s{i}" for i in range(N)]
    parent = await run_on(ssh_bus, "for i in 1 2 3; do echo line $i; sleep 0.3; done", targets)
    state = await wait_final(ssh_bus, parent, timeout=120)
    assert state.status == "succeeded"
    assert [c.target for c in state.children] == targets
    terminals = await children_of(ssh_bus, parent)
    assert len(terminals) == N and all(t.type == "execution.succeeded" for t in terminals)
    parent_events = await execution_events(ssh_bus.js, parent, max_bytes=1 << 20)
    parent_ms = next(e for e in parent_events if isinstance(e, Terminal)).durations.run_ms
    assert parent_ms < sum(t.durations.run_ms for t in terminals) / 4
    for child in state.children:
        chunks = [
            c
            async for c in read_subject(
                ssh_bus.js,
                LOGS_STREAM,
                log_subject("*", child.execution_id),
                max_bytes=1 << 20,
            )
        ]
        assert all(isinstance(c, LogChunk) and c.source == child.target for c in chunks)
        lines = [
            line
            for c in chunks
            if isinstance(c, LogChunk) and c.stream == "stdout"
            for line in c.lines
        ]
        assert lines == ["line 1", "line 2", "line 3"]  # (stderr may hold the host's login noise)


async def test_stopped_servers_make_a_partial_run_and_open_their_circuits(
    ssh_bus: Bus, farm: list[Sshd]
) -> None:
    """3 of 20 stopped: partial, 3 × ssh_unreachable; after 5 failures the circuit opens and
    fails fast; restarting the servers closes it again."""
    down = [17, 18, 19]
    for i in down:
        farm[i].stop()
    try:
        parent = await run_on(ssh_bus, "echo ok", [f"s{i}" for i in range(N)])
        state = await wait_final(ssh_bus, parent, timeout=120)
        assert state.status == "partial"
        kinds = {t.error.kind for t in await children_of(ssh_bus, parent) if t.error}
        assert kinds == {"ssh_unreachable"}
        for _ in range(4):  # failures 2..5 on each stopped host
            await wait_final(ssh_bus, await run_on(ssh_bus, "echo ok", [f"s{i}" for i in down]))
        fast = await run_on(ssh_bus, "echo ok", [f"s{i}" for i in down])
        terminals = await children_of(ssh_bus, fast)
        assert {t.error.kind for t in terminals if t.error} == {"circuit_open"}
        assert all(t.durations.setup_ms < 100 for t in terminals)
        kv = await ssh_bus.js.key_value(CIRCUITS_BUCKET)
        entry = await kv.get(circuit_key("127.0.0.1", farm[17].port))
        assert msgspec.json.decode(entry.value or b"", type=CircuitState).state == "open"
        exported = (await scrape(ssh_bus, warehouse=False)).body.decode()
        for i in down:  # the exporter says which hosts fail fast
            key = circuit_key("127.0.0.1", farm[i].port)
            assert f'cronium_ssh_circuit_open{{circuit="{key}"}} 1.0' in exported
        assert 'cronium_ssh_circuits{state="open"} 3.0' in exported
    finally:
        for i in down:
            farm[i].start()
    await asyncio.sleep(2.1)  # breaker_open_for in these tests
    for _ in range(2):  # two successful trials close it
        state = await wait_final(ssh_bus, await run_on(ssh_bus, "echo ok", [f"s{i}" for i in down]))
        assert state.status == "succeeded"
    entry = await kv.get(circuit_key("127.0.0.1", farm[17].port))
    assert msgspec.json.decode(entry.value or b"", type=CircuitState).state == "closed"
    exported = (await scrape(ssh_bus, warehouse=False)).body.decode()
    assert 'cronium_ssh_circuits{state="open"} 0.0' in exported
    assert 'cronium_ssh_circuits{state="half_open"} 0.0' in exported


async def test_changed_host_key_and_wrong_client_key(
    ssh_bus: Bus, farm: list[Sshd], tmp_path: Path
) -> None:
    """A changed host key is refused with ssh_host_key (fingerprint shown); a key the server
    does not accept gives ssh_auth."""
    victim = farm[5]
    victim.stop()
    victim.new_host_key()
    victim.start()
    fingerprint = victim.host_key.get_fingerprint()
    terminals = await children_of(ssh_bus, await run_on(ssh_bus, "echo hi", ["s5", "s6"]))
    errors = {t.error.kind: t.error.message for t in terminals if t.error}
    assert list(errors) == ["ssh_host_key"]
    assert fingerprint in errors["ssh_host_key"]
    stranger = asyncssh.generate_private_key("ssh-ed25519").export_private_key()
    await register(
        ssh_bus, "stranger", f"ssh://root@127.0.0.1:{farm[7].port}", stranger, farm[7].known_hosts
    )
    terminals = await children_of(ssh_bus, await run_on(ssh_bus, "echo hi", ["stranger"]))
    assert terminals[0].error is not None and terminals[0].error.kind == "ssh_auth"


async def test_50_runs_on_one_server_reuse_the_pool(ssh_bus: Bus, farm: list[Sshd]) -> None:
    """50 consecutive executions open no more connections than the pool limit (5)."""
    before = farm[3].accepted()
    for _ in range(50):
        state = await wait_final(ssh_bus, await run_on(ssh_bus, "true", ["s3"]))
        assert state.status == "succeeded"
    assert 1 <= farm[3].accepted() - before <= 5


def remote_processes(marker: str) -> list[str]:
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True, check=False)
    return out.stdout.split()


async def test_timeout_and_cancel_leave_no_remote_process(ssh_bus: Bus) -> None:
    """Timeout and cancel kill the whole remote process group."""
    parent = await run_on(ssh_bus, "sleep 3001 & sleep 3001 & wait", ["s8"], timeout_s=1.5)
    terminals = await children_of(ssh_bus, parent)
    assert terminals[0].type == "execution.timed_out"
    await asyncio.sleep(0.3)
    assert remote_processes("sleep 3001") == []

    event = requested("sleep 3002 & sleep 3002 & wait", "bash", runner="ssh", targets=("s9",))
    await ssh_bus.publish(event)
    deadline = time.monotonic() + 20
    while not remote_processes("sleep 3002") and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert remote_processes("sleep 3002")
    await ssh_bus.publish(CancelRequested(**follow_up(event, "tests")))
    state = await wait_final(ssh_bus, event.execution_id)
    assert (await children_of(ssh_bus, event.execution_id))[0].type == "execution.cancelled"
    assert state.status == "failed"
    await asyncio.sleep(0.3)
    assert remote_processes("sleep 3002") == []


async def test_cli_servers_and_multi_target_run(
    ssh_bus: Bus,
    farm: list[Sshd],
    client_key: asyncssh.SSHKey,
    cronium_bin: str,
    tmp_path: Path,
    settings: Settings,
) -> None:
    """`cronium servers add|list` and `cronium run --target A --target B` with tagged lines."""
    key_file = tmp_path / "id_ed25519"
    key_file.write_bytes(client_key.export_private_key())
    known = tmp_path / "known_hosts"
    known.write_text(farm[11].known_hosts)
    env = {
        "CRONIUM_SECRET_KEY": settings.secret_key.get_secret_value() if settings.secret_key else "",
        "CRONIUM_CREDS": str(settings.creds),
        "CRONIUM_USER": settings.user,  # whose servers s0..s19 are
        "PATH": "/usr/bin:/bin",
    }

    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        # in a thread: the runner under test shares this event loop
        return await asyncio.to_thread(
            subprocess.run,
            [cronium_bin, *args, "--nats-url", settings.nats_url],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            check=False,
        )

    added = await cli(
        "servers",
        "add",
        "web1",
        f"ssh://root@127.0.0.1:{farm[10].port}",
        "--key",
        str(key_file),
        "--host-key",
        farm[10].host_key_line,
    )
    assert added.returncode == 0, added.stderr
    listed = await cli("servers", "list", "--json")
    assert any(row["name"] == "web1" for row in __import__("json").loads(listed.stdout))
    run = await cli(
        "run",
        "--runtime",
        "bash",
        "--target",
        "web1",
        "--target",
        "s1",
        "-c",
        "echo hello from $((40+2))",
    )
    assert run.returncode == 0, run.stderr
    assert sorted(run.stdout.splitlines()) == ["[s1] hello from 42", "[web1] hello from 42"]
    inline = await cli(
        "run",
        "--runtime",
        "python",
        "--target",
        f"ssh://root@127.0.0.1:{farm[11].port}",
        "--ssh-key",
        str(key_file),
        "--known-hosts",
        str(known),
        "-c",
        "print(6*7)",
    )
    assert inline.returncode == 0, inline.stderr
    assert inline.stdout.endswith("42\n")
    bad = await cli(
        "servers", "add", "web2", "ftp://nope", "--key", str(key_file), "--host-key", "x y"
    )
    assert bad.returncode == 2 and "ssh://USER@HOST" in bad.stderr
    missing = await cli(
        "run", "--runtime", "bash", "--target", "ssh://root@127.0.0.1:1", "-c", "true"
    )
    assert missing.returncode == 2 and "--ssh-key" in missing.stderr


async def test_a_large_input_by_reference_reaches_remote_scripts(ssh_bus: Bus) -> None:
    """An input in the payload store (2.6 MiB) is read by the runner and served to each
    target's script through the forwarded helper socket."""
    from cronium_bus.payloads import put_payload
    from tests.test_container_runner import lines_of
    from tests.test_payloads import BIG_JSON

    ref = await put_payload(ssh_bus.js, "input/ssh-large", BIG_JSON)
    code = "d = cronium.input()\nprint(len(d['rows']), d['rows'][7]['name'])"
    event = requested(code, "python", runner="ssh", targets=("s12", "s13"), input_ref=ref)
    await ssh_bus.publish(event)
    state = await wait_final(ssh_bus, event.execution_id, timeout=60)
    assert state.status == "succeeded", await children_of(ssh_bus, event.execution_id)
    for child in state.children:
        assert (await lines_of(ssh_bus, child.execution_id))["stdout"] == ["60000 row-7"]


@pytest.mark.parametrize("runtime", ["python", "bash"])
async def test_helpers_work_on_remote_hosts(ssh_bus: Bus, runtime: str) -> None:
    """input, output, variables and condition work over SSH through a forwarded Unix socket,
    with nothing installed on the server; the remote private directory is removed."""
    code = {
        "python": "d = cronium.input()\ncronium.set_variable('remote', d['n'] * 2)\n"
        "cronium.setCondition(True)\ncronium.output({'host': cronium.event()['user']})\n"
        "print('var', cronium.getVariable('remote'))",
        "bash": 'n=$(cronium_input | jq .n)\ncronium_set_variable remote "$((n * 2))"\n'
        "cronium_set_condition true\n"
        'cronium_output "{\\"host\\": $(cronium_event | jq .user)}"\n'
        'echo "var $(cronium_get_variable remote)"',
    }[runtime]
    event = requested(code, runtime, runner="ssh", targets=("s12", "s13"), input={"n": 21})
    await ssh_bus.publish(event)
    state = await wait_final(ssh_bus, event.execution_id, timeout=60)
    assert state.status == "succeeded", await children_of(ssh_bus, event.execution_id)
    for child in state.children:
        child_state = await wait_final(ssh_bus, child.execution_id)
        assert child_state.output == {"host": "tester"}
        assert child_state.condition is True
        chunks = [
            c
            async for c in read_subject(
                ssh_bus.js,
                LOGS_STREAM,
                log_subject("*", child.execution_id),
                max_bytes=1 << 20,
            )
        ]
        out = [
            ln for c in chunks if isinstance(c, LogChunk) and c.stream == "stdout" for ln in c.lines
        ]
        assert out == ["var 42"]
    leftovers = " ".join(glob.glob("/tmp/cronium-*"))
    assert event.execution_id not in leftovers
