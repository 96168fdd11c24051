"""Pieces every benchmark shares: a real stack, percentiles, tables."""

from __future__ import annotations

import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cronium_bus.events import Request, Requested, new_request


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of values (nearest rank); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table (also valid Markdown)."""
    cells = [[str(h) for h in header]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    out = [f"\n{title}", ""]
    for n, r in enumerate(cells):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def requested(execution_id: str, request: Request) -> Requested:
    """The ``execution.requested`` event a benchmark publishes for ``request``."""
    return new_request(execution_id, request, producer="bench", user="bench")


def cronium_bin() -> str:
    """The ``cronium`` console script of this environment."""
    found = Path(sys.executable).parent / "cronium"
    return str(found) if found.exists() else (shutil.which("cronium") or "cronium")


@dataclass
class Stack:
    """A ``cronium up`` of its own (temp data dir, free port)."""

    url: str
    data_dir: Path
    proc: subprocess.Popen[str]


@contextmanager
def stack(env: dict[str, str] | None = None, consumers: str | None = None) -> Iterator[Stack]:
    """Start ``cronium up`` and wait for its ready line; stop it (SIGTERM, by pid) after."""
    data = Path(tempfile.mkdtemp(prefix="cronium-bench-"))
    argv = [cronium_bin(), "up", "--data-dir", str(data), "--nats-port", "0"]
    if consumers:
        argv += ["--consumers", consumers]
    log = (data / "up.log").open("w")
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={
            **os.environ,
            "CRONIUM_LOG_LEVEL": "warning",
            "CRONIUM_RUNNER__RUNTIME_DIR": str(Path(tempfile.mkdtemp(prefix="crb-", dir="/tmp"))),
            **(env or {}),
        },
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.match(r"cronium ready: (nats://127\.0\.0\.1:\d+) ", line)
        if not match:
            raise RuntimeError(f"cronium up did not start: {(data / 'up.log').read_text()[-2000:]}")
        # the bench's own clients act as the stack's admin (load_settings reads CRONIUM_CREDS)
        before = os.environ.get("CRONIUM_CREDS")
        os.environ["CRONIUM_CREDS"] = str(data / "auth" / "admin.creds")
        try:
            yield Stack(url=match.group(1), data_dir=data, proc=proc)
        finally:
            if before is None:
                os.environ.pop("CRONIUM_CREDS", None)
            else:
                os.environ["CRONIUM_CREDS"] = before
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(data, ignore_errors=True)
