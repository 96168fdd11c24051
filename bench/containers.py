"""Trivial container jobs end to end through the bus, against docker-py and `docker run`
measured in the same run at the same concurrency, with the same isolation and limits.

Baselines: docker-py with the options a user writes for ``docker run --network none`` and the
bus's limits (the engine sets up its own network sandbox and ``/etc/hosts``), and -- to show what
the engine options are worth by themselves -- docker-py with exactly the bus's create options
(networking disabled in the engine, see ``consumers.container.runtime.sandbox_options``).

Latency is what a live subscriber sees: from just before the request is published to the first
log line arriving on ``cronium.logs.<owner>.<id>``, and to the terminal event on
``cronium.exec.<owner>.<id>.*``
(published once the container has exited; its removal follows). For docker-py: create, attach,
start, first output frame, wait, remove. For `docker run --rm`: first stdout line, exit.

Run: .venv/bin/python -m bench.containers [--jobs N] [--concurrency C] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import docker
from docker.utils.socket import frames_iter

from bench.common import median, pct, requested, stack, table
from consumers.container.runtime import HOSTS, HOSTS_FILE, ContainerSpec, sandbox_options
from cronium_bus.bus import Bus
from cronium_bus.events import Request
from cronium_bus.ids import new_id
from cronium_bus.settings import load_settings

JOBS = {
    "python": ("print('ready')", ["python3", "-c", "print('ready')"]),
    "bash": ("echo ready", ["bash", "-c", "echo ready"]),
}
TERMINAL = {"succeeded", "failed", "timed_out", "cancelled", "lost", "rejected", "partial"}


@dataclass
class Samples:
    """First-line and end latencies (ms) of N jobs, and the wall time of the whole batch."""

    first: list[float] = field(default_factory=list)
    end: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    failures: int = 0

    @property
    def throughput(self) -> float:
        return len(self.end) / self.wall_s if self.wall_s else float("nan")


async def through_bus(
    url: str, runtime: str, n: int, concurrency: int, interval: float | None = None
) -> Samples:
    """N jobs through a running stack, at most ``concurrency`` in flight; with ``interval``,
    job *i* is submitted at ``i * interval`` (paced arrivals) instead of as soon as a slot
    frees (closed loop)."""
    settings = load_settings(nats_url=url, user="bench")
    code = JOBS[runtime][0]
    out = Samples()
    t0: dict[str, float] = {}
    first: dict[str, float] = {}
    done: dict[str, asyncio.Future[bool]] = {}
    loop = asyncio.get_running_loop()

    async def on_log(msg: object) -> None:
        eid = msg.subject.split(".")[3]  # type: ignore[attr-defined]
        if eid in t0 and eid not in first:
            first[eid] = time.perf_counter()

    async def on_exec(msg: object) -> None:
        tokens = msg.subject.split(".")  # type: ignore[attr-defined]
        eid, kind = tokens[3], tokens[4]
        fut = done.get(eid)
        if kind in TERMINAL and fut is not None and not fut.done():
            if eid in first:
                out.first.append((first[eid] - t0[eid]) * 1000)
            out.end.append((time.perf_counter() - t0[eid]) * 1000)
            fut.set_result(kind == "succeeded")

    async with Bus(settings, name="bench") as bus:
        subs = [
            await bus.nc.subscribe("cronium.logs.>", cb=on_log),
            await bus.nc.subscribe("cronium.exec.*.*.*", cb=on_exec),
        ]
        slots = asyncio.Semaphore(concurrency)
        start = time.perf_counter()

        async def one(i: int) -> None:
            if interval is not None:
                await asyncio.sleep(max(0.0, start + i * interval - time.perf_counter()))
            async with slots:
                eid = new_id("ex")
                req = requested(eid, Request(runtime=runtime, code=code))  # type: ignore[arg-type]
                done[eid] = loop.create_future()
                t0[eid] = time.perf_counter()
                await bus.publish(req)
                ok = await asyncio.wait_for(done[eid], 120)
                if not ok:
                    out.failures += 1

        await asyncio.gather(*(one(i) for i in range(n)))
        out.wall_s = time.perf_counter() - start
        for sub in subs:
            await sub.unsubscribe()
    return out


def _pool_run(one: Callable[[], None], n: int, concurrency: int, interval: float | None) -> float:
    """Run ``one`` n times on ``concurrency`` threads (paced like :func:`through_bus`)."""
    start = time.perf_counter()

    def job(i: int) -> None:
        if interval is not None:
            time.sleep(max(0.0, start + i * interval - time.perf_counter()))
        one()

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(job, range(n)))
    return time.perf_counter() - start


def _spec(image: str, command: list[str], scratch: Path) -> ContainerSpec:
    return ContainerSpec(
        image=image,
        command=command,
        labels={"org.cronium.bench": "1"},
        runtime_dir=scratch,
        cpus=0.5,
        memory_bytes=512 * 1024**2,
        pids=100,
        tmp_size=100 * 1024**2,
        workspace_size=500 * 1024**2,
    )


def user_options(opts: dict[str, Any]) -> dict[str, Any]:
    """The bus's create options as a user writes them for ``docker run --network none``:
    network mode ``none`` (the engine builds its network sandbox and ``/etc/hosts``)."""
    out = {k: v for k, v in opts.items() if k != "network_disabled"}
    out["volumes"] = {k: v for k, v in opts["volumes"].items() if v["bind"] != "/etc/hosts"}
    return out


def docker_py(
    runtime: str,
    n: int,
    concurrency: int,
    image: str,
    interval: float | None = None,
    *,
    bus_options: bool = False,
) -> Samples:
    """N jobs through docker-py directly (create, attach, start, wait, remove), with the
    options of ``docker run --network none`` or, with ``bus_options``, the bus's own."""
    client = docker.from_env(max_pool_size=concurrency * 2 + 2)
    scratch = Path(tempfile.mkdtemp(prefix="crb-"))
    (scratch / HOSTS_FILE).write_text(HOSTS)
    opts = sandbox_options(_spec(image, JOBS[runtime][1], scratch))
    if not bus_options:
        opts = user_options(opts)
    out = Samples()
    lock = threading.Lock()

    def one() -> None:
        t0 = time.perf_counter()
        c = client.containers.create(**opts)
        sock = client.api.attach_socket(
            str(c.id), params={"stdout": 1, "stderr": 1, "stream": 1, "logs": 0}
        )
        c.start()
        first = None
        for _, data in frames_iter(sock, tty=False):  # type: ignore[no-untyped-call]
            if data and first is None:
                first = (time.perf_counter() - t0) * 1000
        inner = getattr(sock, "_sock", None)
        sock.close()
        if inner is not None:
            inner.close()
        code = c.wait()["StatusCode"]
        c.remove(force=True)
        with lock:
            if first is not None:
                out.first.append(first)
            out.end.append((time.perf_counter() - t0) * 1000)
            out.failures += int(code != 0)

    out.wall_s = _pool_run(one, n, concurrency, interval)
    client.close()
    return out


def docker_run(
    runtime: str, n: int, concurrency: int, image: str, interval: float | None = None
) -> Samples:
    """N jobs through the `docker run --rm` command with the same isolation flags."""
    flags = [
        "--rm", "--network", "none", "--read-only", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "--pids-limit", "100", "--memory", "512m",
        "--memory-swap", "512m", "--cpus", "0.5", "--user", "1000:1000", "--log-driver", "none",
        "--tmpfs", "/tmp:rw,nosuid,nodev,size=100m",
    ]  # fmt: skip
    out = Samples()
    lock = threading.Lock()

    def one() -> None:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            ["docker", "run", *flags, image, *JOBS[runtime][1]],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        first = (time.perf_counter() - t0) * 1000
        proc.stdout.read()
        code = proc.wait()
        with lock:
            if line:
                out.first.append(first)
            out.end.append((time.perf_counter() - t0) * 1000)
            out.failures += int(code != 0)

    out.wall_s = _pool_run(one, n, concurrency, interval)
    return out


def _merge(parts: list[Samples]) -> Samples:
    """Rounds of one path as one sample: latencies pooled, throughput over the summed walls."""
    out = Samples()
    for p in parts:
        out.first += p.first
        out.end += p.end
        out.wall_s += p.wall_s
        out.failures += p.failures
    return out


def run(
    n: int, concurrency: int, runtimes: list[str], modes: list[str], interval: float, rounds: int
) -> str:
    """Measure every path for every runtime: latency with paced arrivals (one job every
    ``interval`` s, the way scheduled work arrives) and throughput in a closed loop at
    ``concurrency``. Paths alternate round by round, so drift of the machine (other load,
    the engine's state) affects all of them alike. Returns the tables."""
    images = load_settings().runner.images
    paced: dict[tuple[str, str], list[Samples]] = {}
    loaded: dict[tuple[str, str], list[Samples]] = {}

    def baselines(runtime: str) -> None:
        image = images[runtime]
        paths: tuple[tuple[str, Callable[..., Samples]], ...] = (
            ("docker-py", docker_py),
            ("docker-py, bus's create options", partial(docker_py, bus_options=True)),
            ("docker run", docker_run),
        )
        for name, fn in paths:
            paced.setdefault((name, runtime), []).append(
                fn(runtime, n, concurrency, image, interval)
            )
            loaded.setdefault((name, runtime), []).append(fn(runtime, n, concurrency, image))

    for runtime in runtimes:
        docker_py(runtime, 2, 1, images[runtime])  # warm the engine's caches
    for mode in modes:
        warm = str(concurrency) if mode == "bus, warm pool" else "0"
        env = {
            "CRONIUM_RUNNER__SLOTS": str(concurrency),
            "CRONIUM_RUNNER__WARM_POOL": warm,
            "CRONIUM_RUNNER__WARM_RUNTIMES": "[" + ",".join(f'"{r}"' for r in runtimes) + "]",
        }
        with stack(env) as s:
            time.sleep(3.0)  # let the warm pool fill
            for runtime in runtimes:
                asyncio.run(through_bus(s.url, runtime, 3, 1, interval))  # warm-up
                for _ in range(rounds):
                    if mode == modes[-1]:  # baselines interleaved with the last mode's rounds
                        baselines(runtime)
                    time.sleep(1.0)  # let the pool refill
                    key = (mode, runtime)
                    paced.setdefault(key, []).append(
                        asyncio.run(through_bus(s.url, runtime, n, concurrency, interval))
                    )
                    time.sleep(1.0)
                    loaded.setdefault(key, []).append(
                        asyncio.run(through_bus(s.url, runtime, n, concurrency))
                    )
    latency_rows, load_rows = [], []
    order = ["docker-py", "docker-py, bus's create options", "docker run", *modes]

    def rows(results: dict[tuple[str, str], list[Samples]]) -> list[tuple[str, str]]:
        """Keys by job, then baselines before the bus."""
        return sorted(results, key=lambda k: (runtimes.index(k[1]), order.index(k[0])))

    for key in rows(paced):
        smp, base = _merge(paced[key]), _merge(paced[("docker-py", key[1])])
        latency_rows.append(
            [
                *key,
                len(smp.end),
                smp.failures,
                median(smp.first),
                pct(smp.first, 95),
                median(smp.end),
                pct(smp.end, 95),
                f"{median(smp.first) / median(base.first):.2f}x",
                f"{median(smp.end) / median(base.end):.2f}x",
            ]
        )
    for key in rows(loaded):
        smp, base = _merge(loaded[key]), _merge(loaded[("docker-py", key[1])])
        same = _merge(loaded[("docker-py, bus's create options", key[1])])
        load_rows.append(
            [
                *key,
                len(smp.end),
                smp.failures,
                smp.throughput,
                median(smp.first),
                median(smp.end),
                f"{smp.throughput / base.throughput:.2f}x",
                f"{smp.throughput / same.throughput:.2f}x",
            ]
        )
    return table(
        f"Latency, one trivial job every {interval:g} s ({rounds} rounds of {n}; ms; vs docker-py "
        "in the same run, <1x is faster)",
        [
            "path", "job", "N", "failed", "first line p50", "p95", "terminal p50", "p95",
            "first line vs docker-py", "terminal vs docker-py",
        ],
        latency_rows,
    ) + "\n" + table(
        f"Throughput, closed loop at concurrency {concurrency} ({rounds} rounds of {n}; "
        ">1x is faster)",
        [
            "path", "job", "N", "failed", "jobs/s", "first line p50", "terminal p50",
            "throughput vs docker-py", "vs docker-py, bus's options",
        ],
        load_rows,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=24, metavar="N")
    parser.add_argument("--concurrency", type=int, default=4, metavar="C")
    parser.add_argument("--interval", type=float, default=0.6, metavar="S")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="python only, warm pool only")
    args = parser.parse_args(argv)
    if args.quick:
        print(run(12, args.concurrency, ["python"], ["bus, warm pool"], args.interval, 1))
    else:
        modes = ["bus, cold", "bus, warm pool"]
        print(
            run(args.jobs, args.concurrency, ["python", "bash"], modes, args.interval, args.rounds)
        )


if __name__ == "__main__":
    main()
