"""How small the log archive is: 1,000,000 realistic log lines archived by the projector into
chdb, compared with the raw text and with gzip -6 of the same text, in the same run.

Run: .venv/bin/python -m bench.archive_compression [--lines N]
"""

from __future__ import annotations

import argparse
import gzip
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cronium_bus.events import LogChunk
from projections.ddl import statements
from projections.rows import log_rows
from projections.warehouse import ChdbWarehouse

LEVELS = ["INFO"] * 8 + ["DEBUG"] * 3 + ["WARN", "ERROR"]
PATHS = ["/api/v1/jobs", "/api/v1/events", "/healthz", "/api/v1/logs", "/login", "/static/app.js"]


def realistic_lines(n: int, seed: int = 1) -> list[str]:
    """Application-log lines: timestamps, levels, components, request ids, paths, durations."""
    rng = random.Random(seed)
    t0 = datetime(2026, 11, 27, tzinfo=UTC)
    lines = []
    for i in range(n):
        ts = (t0 + timedelta(milliseconds=i * 37)).isoformat(timespec="milliseconds")
        level = rng.choice(LEVELS)
        if rng.random() < 0.6:
            lines.append(
                f"{ts} {level} http request_id={rng.getrandbits(64):016x} method=GET "
                f"path={rng.choice(PATHS)} status={rng.choice([200, 200, 200, 304, 404, 500])}"
                f" duration_ms={rng.randint(1, 900)} bytes={rng.randint(200, 90000)}"
            )
        else:
            lines.append(
                f"{ts} {level} worker[{rng.randint(1, 8)}] processed batch {i // 100} item "
                f"{i} of customer c{rng.randint(1, 5000):05d} in {rng.random() * 3:.3f}s"
            )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    lines = realistic_lines(args.lines)
    raw = ("\n".join(lines) + "\n").encode()
    t = time.perf_counter()
    gz = gzip.compress(raw, compresslevel=6)
    gzip_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as d:
        wh = ChdbWarehouse(Path(d))
        for sql in statements():
            wh.command(sql)
        now = datetime.now(UTC)
        t = time.perf_counter()
        for first in range(0, len(lines), 5000):
            chunk = LogChunk(
                event_id="ev_b",
                time=now,
                execution_id="ex_bench",
                correlation_id="ex_bench",
                producer="bench",
                user="bench",
                stream="stdout",
                first_seq=first,
                lines=tuple(lines[first : first + 5000]),
            )
            wh.insert("cronium.log_archive", log_rows(chunk))
        insert_s = time.perf_counter() - t
        wh.command("OPTIMIZE TABLE cronium.log_archive FINAL")
        parts = wh.query(
            "SELECT sum(data_compressed_bytes) AS c, sum(data_uncompressed_bytes) AS u"
            " FROM system.parts WHERE database = 'cronium' AND table = 'log_archive'"
            " AND active"
        )
        count = wh.query("SELECT count() AS n, uniqExact(seq) AS s FROM cronium.log_archive")
        wh.close()
    archived = int(parts[0]["c"])
    print(
        f"lines archived            {int(count[0]['n']):>14,} (distinct seq {int(count[0]['s']):,})"
    )
    print(f"raw text                  {len(raw):>14,} bytes")
    print(
        f"gzip -6 of the text       {len(gz):>14,} bytes  ratio {len(raw) / len(gz):5.1f}x  "
        f"({gzip_s:.1f} s)"
    )
    print(
        f"archive (all columns)     {archived:>14,} bytes  ratio {len(raw) / archived:5.1f}x  "
        f"(insert {insert_s:.1f} s, {args.lines / insert_s:,.0f} lines/s)"
    )
    print(f"archive size / gzip size  {archived / len(gz):5.2f}")


if __name__ == "__main__":
    main()
