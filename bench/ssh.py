"""One command on 10 and 50 real sshd targets: the SSH runner's fan-out through the bus, cold
(fresh connections) and warm (pooled connections from the previous run), against what people
use instead, measured in the same run: a sequential `ssh` loop, `xargs -P` with `ssh`, Debian's
`parallel-ssh`, and Ansible ad-hoc (ansible-core from PyPI) with one fork per target, cold (no
ControlPersist master yet) and warm.

Every path verifies host keys against the same known_hosts file and authenticates with the same
key; the command is `echo ok`. Time is wall time from start to the last result (for the bus:
request published → parent's terminal event), median of the warm repetitions; the bus's cold
and warm rows are medians of as many fresh stacks, each measured cold and then warm.

Run: .venv/bin/python -m bench.ssh [--targets 10,50] [--repeat R] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import asyncssh

from bench.common import median, requested, stack, table
from cronium_bus.bus import Bus
from cronium_bus.cli.servers import register
from cronium_bus.events import Request
from cronium_bus.ids import new_id
from cronium_bus.settings import load_settings
from tests.sshd import Sshd

SECRET_KEY = "bench-secret-key-0123456789abcdef"
COMMAND = "echo ok"
TERMINAL = {"succeeded", "failed", "partial", "timed_out", "cancelled", "lost", "rejected"}


class Farm:
    """N sshd daemons, a client key and a known_hosts file for them."""

    def __init__(self, root: Path, n: int) -> None:
        self.root = root
        self.key = asyncssh.generate_private_key("ssh-ed25519")
        self.key_file = root / "id_ed25519"
        self.key.write_private_key(str(self.key_file))
        self.key_file.chmod(0o600)
        self.daemons = [Sshd(root / f"s{i}", self.key.export_public_key()) for i in range(n)]
        for d in self.daemons:
            d.start()
        self.known_hosts = root / "known_hosts"
        self.known_hosts.write_text("".join(d.known_hosts for d in self.daemons))

    def ssh_argv(self, port: int) -> list[str]:
        return [
            "ssh", "-i", str(self.key_file), "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
            "-p", str(port), "root@127.0.0.1", COMMAND,
        ]  # fmt: skip

    def stop(self) -> None:
        for d in self.daemons:
            d.stop()


def _timed(argv: list[str], **kw: object) -> float:
    t = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {result.stderr[-500:]}")
    return time.perf_counter() - t


def ssh_loop(farm: Farm, ports: list[int]) -> float:
    t = time.perf_counter()
    for port in ports:
        subprocess.run(farm.ssh_argv(port), capture_output=True, check=True)
    return time.perf_counter() - t


def xargs_ssh(farm: Farm, ports: list[int]) -> float:
    argv = farm.ssh_argv(0)
    port_at = argv.index("-p") + 1
    cmd = " ".join(a if i != port_at else "{}" for i, a in enumerate(argv))
    return _timed(
        ["xargs", "-P", str(len(ports)), "-I{}", "sh", "-c", cmd],
        input="\n".join(map(str, ports)) + "\n",
    )


def parallel_ssh(farm: Farm, ports: list[int]) -> float:
    hosts = farm.root / f"pssh-{len(ports)}"
    hosts.write_text("".join(f"root@127.0.0.1:{p}\n" for p in ports))
    ssh_args = (
        f"-i {farm.key_file} -o UserKnownHostsFile={farm.known_hosts} "
        "-o StrictHostKeyChecking=yes -o BatchMode=yes -o LogLevel=ERROR"
    )
    argv = ["parallel-ssh", "-h", str(hosts), "-p", str(len(ports)), "-t", "60", "-x", ssh_args]
    return _timed([*argv, COMMAND])


def ansible(farm: Farm, ports: list[int], control_dir: Path) -> float:
    inventory = farm.root / f"inventory-{len(ports)}"
    inventory.write_text(
        "[targets]\n"
        + "".join(
            f"t{p} ansible_host=127.0.0.1 ansible_port={p} ansible_user=root\n" for p in ports
        )
    )
    env = {
        **os.environ,
        "ANSIBLE_PRIVATE_KEY_FILE": str(farm.key_file),
        "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=60s "
        f"-o UserKnownHostsFile={farm.known_hosts} -o StrictHostKeyChecking=yes",
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_dir),
        "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",
        "ANSIBLE_LOCAL_TEMP": str(farm.root / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
    }
    binary = str(Path(sys.executable).parent / "ansible")
    return _timed(
        [binary, "targets", "-i", str(inventory), "-m", "command", "-a", COMMAND,
         "-f", str(len(ports))],
        env=env,
    )  # fmt: skip


async def through_bus(url: str, names: list[str]) -> float:
    """Request a fan-out to ``names`` and wait for the parent's terminal event."""
    settings = load_settings(nats_url=url, user="bench", secret_key=SECRET_KEY)
    loop = asyncio.get_running_loop()
    eid = new_id("ex")
    done: asyncio.Future[str] = loop.create_future()

    async def on_exec(msg: object) -> None:
        kind = msg.subject.split(".")[4]  # type: ignore[attr-defined]
        if kind in TERMINAL and not done.done():
            done.set_result(kind)

    async with Bus(settings, name="bench-ssh") as bus:
        sub = await bus.nc.subscribe(f"cronium.exec.*.{eid}.*", cb=on_exec)
        req = requested(
            eid, Request(runtime="bash", code=COMMAND, runner="ssh", targets=tuple(names))
        )
        t = time.perf_counter()
        await bus.publish(req)
        kind = await asyncio.wait_for(done, 300)
        elapsed = time.perf_counter() - t
        await sub.unsubscribe()
    if kind != "succeeded":
        raise RuntimeError(f"fan-out ended {kind}")
    return elapsed


async def register_all(url: str, farm: Farm) -> list[str]:
    settings = load_settings(nats_url=url, user="bench", secret_key=SECRET_KEY)
    key = farm.key.export_private_key()
    names = []
    async with Bus(settings, name="bench-ssh") as bus:
        for i, d in enumerate(farm.daemons):
            await register(bus, f"b{i}", f"ssh://root@127.0.0.1:{d.port}", key, d.known_hosts)
            names.append(f"b{i}")
    return names


def run(sizes: list[int], repeat: int) -> str:
    root = Path(tempfile.mkdtemp(prefix="cronium-bench-ssh-"))
    farm = Farm(root, max(sizes))
    has_pssh = shutil.which("parallel-ssh") is not None
    has_ansible = (Path(sys.executable).parent / "ansible").exists()
    rows = []
    try:
        for n in sizes:
            ports = [d.port for d in farm.daemons[:n]]
            results: dict[str, float] = {}

            def warm(
                name: str, fn: Callable[[], float], results: dict[str, float] = results
            ) -> None:
                results[name] = median([fn() for _ in range(repeat)])

            results["ssh loop"] = ssh_loop(farm, ports)
            warm("xargs -P ssh", lambda: xargs_ssh(farm, ports))  # noqa: B023
            if has_pssh:
                warm("parallel-ssh", lambda: parallel_ssh(farm, ports))  # noqa: B023
            if has_ansible:
                control = Path(tempfile.mkdtemp(prefix="cp-", dir="/tmp"))
                results["ansible ad-hoc, cold"] = ansible(farm, ports, control)
                warm("ansible ad-hoc, warm", lambda: ansible(farm, ports, control))  # noqa: B023
                shutil.rmtree(control, ignore_errors=True)
            cold: list[float] = []
            warm_runs: list[float] = []
            for _ in range(repeat):  # cold and warm interleaved: a fresh stack, then a rerun
                with stack(
                    {"CRONIUM_SECRET_KEY": SECRET_KEY, "CRONIUM_SSH__FANOUT_CONCURRENCY": str(n)},
                    consumers="dispatcher,ssh,secrets",  # servers add goes through the sealer
                ) as s:
                    names = asyncio.run(register_all(s.url, farm))[:n]
                    cold.append(asyncio.run(through_bus(s.url, names)))
                    warm_runs.append(asyncio.run(through_bus(s.url, names)))
            results["cronium bus, cold"] = median(cold)
            results["cronium bus, warm"] = median(warm_runs)
            ansible_ref = results.get("ansible ad-hoc, cold")
            for name, seconds in results.items():
                rows.append(
                    [
                        n,
                        name,
                        seconds * 1000,
                        f"{results['ssh loop'] / seconds:.1f}x",
                        f"{ansible_ref / seconds:.1f}x" if ansible_ref else "n/a",
                    ]
                )
    finally:
        farm.stop()
        shutil.rmtree(root, ignore_errors=True)
    missing = [n for n, ok in (("parallel-ssh", has_pssh), ("ansible", has_ansible)) if not ok]
    note = f" (not installed, rows missing: {', '.join(missing)})" if missing else ""
    return table(
        f"SSH fan-out of `{COMMAND}` (ms, wall; warm rows and the bus's rows: median of "
        f"{repeat}){note}",
        ["targets", "path", "ms", "speed-up vs ssh loop", "speed-up vs ansible cold"],
        rows,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--targets", default="10,50", help="comma-separated target counts")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="10 targets, 1 repetition")
    args = parser.parse_args(argv)
    if args.quick:
        print(run([10], 1))
    else:
        print(run([int(x) for x in args.targets.split(",")], args.repeat))


if __name__ == "__main__":
    main()
