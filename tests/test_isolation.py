"""The sandbox as a security reviewer would probe it: each hostile script fails inside its own
container and the runner keeps serving afterwards."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumers.container.runtime import HOSTS_FILE, ContainerSpec, sandbox_options
from cronium_bus.bus import Bus
from cronium_bus.events import Limits, LogChunk
from cronium_bus.history import follow_logs
from cronium_bus.settings import Settings
from tests.conftest import Embedded
from tests.helpers import requested, run_code, wait_final
from tests.test_container_runner import lines_of

pytestmark = pytest.mark.docker


@pytest.fixture(autouse=True)
def _canary() -> Iterator[None]:
    os.environ["CRONIUM_TEST_CANARY"] = "canary-in-the-runner"
    yield
    del os.environ["CRONIUM_TEST_CANARY"]


async def still_serving(bus: Bus) -> None:
    state = await run_code(bus, "print('still here')")
    assert state.status == "succeeded"


async def test_fork_bomb_is_stopped_by_the_pids_limit(bus: Bus, runner: Embedded) -> None:
    """Forking stops at the pids limit (EAGAIN); a classic bash fork bomb is contained and
    ended by its timeout."""
    code = """
import os, time
n = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        n += 1
except OSError as e:
    print("stopped after", n, "forks, errno", e.errno)
"""
    state = await run_code(bus, code, limits=Limits(pids=50), timeout_s=20.0)
    out = (await lines_of(bus, state.execution_id))["stdout"]
    assert out and out[0].startswith("stopped after") and out[0].endswith("errno 11")
    assert int(out[0].split()[2]) < 50
    bomb = await run_code(
        bus, ":(){ :|:& };: ; sleep 2", "bash", limits=Limits(pids=64), timeout_s=5.0
    )
    assert bomb.final  # contained: it ends (its shell may not even fork `sleep`), no host impact
    await still_serving(bus)


async def test_filling_tmp_fails_inside_the_script_only(bus: Bus, runner: Embedded) -> None:
    """/tmp is a 100 MiB tmpfs: writing 200 MiB fails with ENOSPC inside the sandbox."""
    code = (
        "dd if=/dev/zero of=/tmp/fill bs=1M count=200 2>&1 | grep -o 'No space left on device'"
        " | head -1; df -m /tmp | awk 'NR==2 {print $2}'"
    )
    state = await run_code(bus, code, "bash")
    out = (await lines_of(bus, state.execution_id))["stdout"]
    assert out == ["No space left on device", "100"]
    await still_serving(bus)


async def test_no_network_not_even_loopback_services(
    bus: Bus, runner: Embedded, settings: Settings
) -> None:
    """The host's NATS port on 127.0.0.1 is unreachable; only a private loopback exists, and
    it works: a server the script starts on ``localhost`` answers (networking is disabled in
    the engine, so ``/etc/hosts`` comes from the runner)."""
    port = settings.nats_url.rsplit(":", 1)[1]
    code = f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2)
    print("connected")
except OSError as e:
    print("refused", type(e).__name__)
print(sorted(n for _, n in socket.if_nameindex()))
server = socket.create_server(("localhost", 0))
client = socket.create_connection(("localhost", server.getsockname()[1]), timeout=2)
conn, _ = server.accept()
client.sendall(b"ping")
print("loopback", conn.recv(4).decode(), socket.gethostbyname("localhost"), socket.gethostname())
"""
    state = await run_code(bus, code)
    out = (await lines_of(bus, state.execution_id))["stdout"]
    assert out[0].startswith("refused")
    assert out[1] == "['lo']"
    assert out[2] == "loopback ping 127.0.0.1 sandbox"


ESCALATION = r"""
id -u
grep -E '^(CapEff|NoNewPrivs)' /proc/self/status | tr -s '\t ' ' '
find / -xdev -perm /6000 -type f 2>/dev/null | wc -l
su root -c id </dev/null >/dev/null 2>&1 && echo su-worked || echo su-failed
command -v sudo || echo no-sudo
touch /etc/x 2>&1 | grep -o 'Read-only file system'
env | grep -c -E 'CANARY|NATS|DOCKER' || true
"""


async def test_no_root_no_capabilities_no_escalation(bus: Bus, runner: Embedded) -> None:
    """uid 1000, no capabilities, no_new_privs, no setuid binaries, setuid(0) and su fail,
    / is read-only, and the runner's environment is not visible."""
    state = await run_code(bus, ESCALATION, "bash")
    out = (await lines_of(bus, state.execution_id))["stdout"]
    assert out == [
        "1000",
        "CapEff: 0000000000000000",
        "NoNewPrivs: 1",
        "0",
        "su-failed",
        "no-sudo",
        "Read-only file system",
        "0",
    ]
    py = await run_code(
        bus,
        "import os\ntry:\n    os.setuid(0)\nexcept OSError as e:\n    print('refused', e.errno)",
    )
    assert (await lines_of(bus, py.execution_id))["stdout"] == ["refused 1"]
    await still_serving(bus)


RUNTIME_FILES = """
import os, time
for name in ("", "token", "input.json", "event.json", "api.sock"):
    st = os.stat(os.path.join("/cronium", name))
    print(name or "/cronium", oct(st.st_mode & 0o777), st.st_uid)
print("ready", flush=True)
time.sleep(8)
"""


async def test_runtime_files_are_the_sandboxs_alone(
    bus: Bus, runner: Embedded, settings: Settings
) -> None:
    """The token, input and API socket are the sandbox uid's (files 0600) in a directory only
    root may change (0750, group of the sandbox): another host user cannot read the token nor
    connect to the socket while the script runs."""
    event = requested(RUNTIME_FILES)
    tail = await follow_logs(bus.js, event.execution_id, max_bytes=1 << 20).start()
    await bus.publish(event)
    seen: list[str] = []
    async for chunk in tail:
        assert isinstance(chunk, LogChunk)
        seen.extend(chunk.lines)
        if "ready" in seen:
            break
    await tail.close()
    assert seen[:5] == [
        "/cronium 0o750 0",
        "token 0o600 1000",
        "input.json 0o600 1000",
        "event.json 0o600 1000",
        "api.sock 0o600 1000",
    ]
    # the runtime root may be anyone's to traverse (e.g. under /tmp): the attempt dir itself
    # must keep other users out
    settings.runtime_dir.chmod(0o755)
    tokens = list(settings.runtime_dir.glob("*/*/token"))  # <root>/i<installation>/<attempt>
    assert tokens, "the attempt's runtime dir is on the host while it runs"
    for token in tokens:
        as_nobody = subprocess.run(  # noqa: ASYNC221 - a short probe while the script sleeps
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", str(token)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert as_nobody.returncode != 0 and "Permission denied" in as_nobody.stderr
        sock = token.parent / "api.sock"
        connect = subprocess.run(  # noqa: ASYNC221 - a short probe while the script sleeps
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "/usr/bin/python3",
                "-c",
                f"import socket; socket.socket(socket.AF_UNIX).connect({str(sock)!r})",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert connect.returncode != 0 and "Permission denied" in connect.stderr
    state = await wait_final(bus, event.execution_id)
    assert state.status == "succeeded"


def test_sandbox_options_disable_networking_unless_it_is_allowed(tmp_path: Path) -> None:
    """Without network: networking disabled in the engine (no network sandbox, no hook) and
    the runtime dir's hosts file over /etc/hosts; with network: neither."""
    spec = ContainerSpec(
        image="img",
        command=["true"],
        labels={},
        runtime_dir=tmp_path,
        cpus=0.5,
        memory_bytes=2**28,
        pids=64,
        tmp_size=2**20,
        workspace_size=2**20,
    )
    closed = sandbox_options(spec)
    assert closed["network_disabled"] is True and closed["network_mode"] == "none"
    assert closed["volumes"][str(tmp_path / HOSTS_FILE)] == {"bind": "/etc/hosts", "mode": "ro"}
    opened = sandbox_options(dataclasses.replace(spec, network=True))
    assert opened["network_disabled"] is False and opened["network_mode"] == "bridge"
    assert list(opened["volumes"]) == [str(tmp_path)]
