"""Every benchmark, each against its baselines measured in the same run.

    python -m bench            # full (≈ 20 min on a 2-core machine)
    python -m bench --quick    # under two minutes: the same tables, fewer jobs and targets
    python -m bench --only containers,ssh

Sections: containers (bench/containers.py), ssh (bench/ssh.py), logs (bench/logs.py),
queries (bench/history_query.py), console (bench/console.py), schedules (bench/schedules.py),
archive (bench/archive_compression.py, full only).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from bench import archive_compression, console, containers, history_query, logs, schedules, ssh


def _queries(quick: bool) -> None:
    for n in (100_000,) if quick else (100_000, 1_000_000):
        history_query.main(["--executions", str(n), "--lookups", "30" if quick else "100"])


SECTIONS: dict[str, Callable[[bool], None]] = {
    "containers": lambda quick: containers.main(["--quick"] if quick else []),
    "ssh": lambda quick: ssh.main(["--quick"] if quick else []),
    "logs": lambda quick: logs.main(["--quick"] if quick else []),
    "queries": _queries,
    "console": lambda quick: console.main(
        ["--lines", "30", "--big", "100000"] if quick else ["--lines", "100"]
    ),
    "schedules": lambda quick: schedules.main(
        ["--fires", "100,1000" if quick else "100,1000,10000"]
    ),
    "archive": lambda quick: None if quick else archive_compression.main([]),
}


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, under two minutes")
    parser.add_argument("--only", metavar="LIST", help=f"comma-separated: {','.join(SECTIONS)}")
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else list(SECTIONS)
    unknown = [c for c in chosen if c not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s): {', '.join(unknown)}")
    started = time.monotonic()
    for name in chosen:
        t = time.monotonic()
        print(f"\n## {name}", flush=True)
        SECTIONS[name](args.quick)
        print(f"({name}: {time.monotonic() - t:.0f} s)", flush=True)
    print(f"\nall benchmarks: {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
