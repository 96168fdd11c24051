"""A script printing 1,000,000 realistic log lines, end to end: a container prints them, the log
pump publishes chunks on JetStream, a live subscriber follows ``cronium.logs.<owner>.<id>`` and the
projector archives them in ClickHouse (chdb). Measured in the same run:

- lines/s through the bus (first to last line at the live subscriber) and into the archive
  (until the archive holds every line);
- live-tail latency: each line carries the time it was printed; p50/p99 of arrival − print;
- bytes: raw text, gzip -6 of the same text, and the archive on disk.

Run: .venv/bin/python -m bench.logs [--lines N]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import time

import msgspec

from bench.common import median, pct, requested, stack, table
from cronium_bus.bus import Bus
from cronium_bus.events import LogChunk, Request
from cronium_bus.ids import new_id
from cronium_bus.settings import load_settings

SCRIPT = """
import random, sys, time
rng = random.Random(1)
levels = ["INFO"] * 8 + ["DEBUG"] * 3 + ["WARN", "ERROR"]
paths = ["/api/v1/jobs", "/api/v1/events", "/healthz", "/api/v1/logs", "/login"]
out = sys.stdout
for i in range({lines}):
    if rng.random() < 0.6:
        line = (f"{{time.time():.6f}} {{rng.choice(levels)}} http request_id="
                f"{{rng.getrandbits(64):016x}} method=GET path={{rng.choice(paths)}} "
                f"status={{rng.choice([200, 200, 200, 304, 404, 500])}} "
                f"duration_ms={{rng.randint(1, 900)}}")
    else:
        line = (f"{{time.time():.6f}} {{rng.choice(levels)}} worker[{{rng.randint(1, 8)}}] "
                f"processed item {{i}} of customer c{{rng.randint(1, 5000):05d}} in "
                f"{{rng.random() * 3:.3f}}s")
    out.write(line + "\\n")
"""


async def measure(url: str, lines: int) -> dict[str, float]:
    settings = load_settings(nats_url=url, user="bench")
    decoder = msgspec.json.Decoder(LogChunk)
    eid = new_id("ex")
    received: list[str] = []
    latencies: list[float] = []
    first_at = last_at = 0.0
    done = asyncio.Event()

    async def on_log(msg: object) -> None:
        nonlocal first_at, last_at
        now = time.time()
        chunk = decoder.decode(msg.data)  # type: ignore[attr-defined]
        if not first_at:
            first_at = time.perf_counter()
        last_at = time.perf_counter()
        if chunk.stream != "stdout":
            return
        received.extend(chunk.lines)
        for line in chunk.lines[::50]:  # every 50th line's age
            latencies.append((now - float(line.split(" ", 1)[0])) * 1000)
        if len(received) >= lines:
            done.set()

    async with Bus(settings, name="bench-logs") as bus:
        sub = await bus.nc.subscribe(f"cronium.logs.*.{eid}", cb=on_log)
        req = requested(
            eid, Request(runtime="python", code=SCRIPT.format(lines=lines), timeout_s=600)
        )
        start = time.perf_counter()
        await bus.publish(req)
        await asyncio.wait_for(done.wait(), 600)
        bus_s = last_at - first_at
        archived: dict[str, int] = {}
        while True:  # until the archive holds every line (bounded by the timeout above)
            reply = await bus.nc.request(
                "cronium.query.stats", msgspec.json.encode({"since": "2000-01-01"}), timeout=30
            )
            answer = msgspec.json.decode(reply.data)
            if not answer.get("ok"):
                raise RuntimeError(f"stats query failed: {answer.get('error')}")
            archived = answer["result"]["archive"]
            if int(archived["lines"] or 0) >= lines or time.perf_counter() - start > 900:
                break
            await asyncio.sleep(0.5)
        archive_s = time.perf_counter() - start
        await sub.unsubscribe()
    raw = ("\n".join(received) + "\n").encode()
    return {
        "lines": len(received),
        "bus_lines_per_s": len(received) / bus_s if bus_s else float("nan"),
        "archive_lines_per_s": lines / archive_s,
        "tail_p50_ms": median(latencies),
        "tail_p99_ms": pct(latencies, 99),
        "raw_bytes": len(raw),
        "gzip_bytes": len(gzip.compress(raw, compresslevel=6)),
        "archive_bytes": int(archived["compressed_bytes"] or 0),
    }


def run(lines: int) -> str:
    env = {"CRONIUM_LIMITS__OUTPUT_CAP": "512m", "CRONIUM_RUNNER__WARM_POOL": "0"}
    with stack(env) as s:
        r = asyncio.run(measure(s.url, lines))
    rows = [
        ["lines received live", f"{r['lines']:,.0f}", ""],
        ["through the bus", f"{r['bus_lines_per_s']:,.0f} lines/s", "first → last line"],
        ["into the archive", f"{r['archive_lines_per_s']:,.0f} lines/s", "request → all archived"],
        ["live-tail latency p50", f"{r['tail_p50_ms']:.1f} ms", "printed → at the subscriber"],
        ["live-tail latency p99", f"{r['tail_p99_ms']:.1f} ms", ""],
        ["raw text", f"{r['raw_bytes']:,} bytes", "1.0x"],
        ["gzip -6", f"{r['gzip_bytes']:,} bytes", f"{r['raw_bytes'] / r['gzip_bytes']:.1f}x"],
        [
            "archive on disk",
            f"{r['archive_bytes']:,} bytes",
            f"{r['raw_bytes'] / max(r['archive_bytes'], 1):.1f}x "
            f"({r['archive_bytes'] / r['gzip_bytes']:.2f} of gzip; before background merges)",
        ],
    ]
    return table(f"Logs: one script printing {lines:,} lines", ["measure", "value", "note"], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="100,000 lines")
    args = parser.parse_args(argv)
    print(run(100_000 if args.quick else args.lines))


if __name__ == "__main__":
    main()
