"""Live lines in the browser: how long a printed line takes to reach the web console's page.

A script prints a line with its own clock every 100 ms; headless Debian chromium (Playwright)
shows the execution in the console, signed in with a `cronium user token` link, and a
MutationObserver stamps each line as it enters the page. The baseline, in the same run: a plain
NATS subscriber on the same WebSocket with the same token (what the bus itself takes). Printed:
p50 / p99 of arrival − print for both, and their ratio.

Large logs (--big N, 1,000,000 by default): the same page opens an execution of N stored lines
and, separately, follows one printing N lines at ≈50,000 a second. Printed: seconds until the
page holds the last line, its longest main-thread task (PerformanceObserver 'longtask') and
longest gap between two frames (requestAnimationFrame) — how long the page froze at most —
against the terminal client in the same run (`cronium logs ID` and `cronium logs --follow`,
output to /dev/null) reading the same log from the same query service.

Run: .venv/bin/python -m bench.console [--lines N] [--big N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import nats

from bench.common import cronium_bin, median, pct, stack, table
from cronium_bus.ids import new_id

SCRIPT = (
    "import time, sys\n"
    "time.sleep(2)\n"
    "for i in range({lines}):\n"
    "    print(f'{{time.time() * 1000:.1f}} line {{i}}', flush=True)\n"
    "    time.sleep(0.1)\n"
)
OBSERVER = """
window.__arrivals = [];
new MutationObserver((records) => {
  const now = Date.now();
  for (const r of records) for (const n of r.addedNodes) {
    if (n.classList && n.classList.contains('line')) window.__arrivals.push([n.textContent, now]);
  }
}).observe(document, {subtree: true, childList: true});
"""


def _cli(data: Path, url: str, *args: str) -> str:
    done = subprocess.run(
        [cronium_bin(), *args, "--nats-url", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={"PATH": "/usr/bin:/bin", "CRONIUM_DATA_DIR": str(data)},
    )
    return done.stdout.strip()


async def _subscriber(ws: str, token: str, execution_id: str, out: list[float], n: int) -> None:
    nc = await nats.connect(
        ws,
        user_jwt_cb=token.encode,
        signature_cb=lambda _nonce: b"",
        inbox_prefix=b"_INBOX_alice",
    )
    sub = await nc.subscribe(f"cronium.logs.alice.{execution_id}")
    deadline = time.monotonic() + 60 + n * 0.2
    while len(out) < n and time.monotonic() < deadline:
        try:
            msg = await sub.next_msg(timeout=5)
        except nats.errors.TimeoutError:
            continue
        now = time.time() * 1000
        for line in json.loads(msg.data)["lines"]:
            out.append(now - float(line.split(" ", 1)[0]))
    await nc.close()


def run(lines: int) -> str:
    from playwright.sync_api import sync_playwright

    with stack(env={"CRONIUM_RUNNER__WARM_RUNTIMES": '["python"]'}) as st:
        data = st.data_dir
        _cli(data, st.url, "user", "add", "alice")
        token = _cli(data, st.url, "user", "token", "alice", "--ttl", "30m")
        execution_id = new_id("ex")
        link = _cli(data, st.url, "user", "token", "alice", "--url", "--execution", execution_id)
        ws = re.search(r"ws=([^&]+)", link)
        assert ws is not None
        ws_url = ws.group(1).replace("%3A", ":").replace("%2F", "/")
        bus_latency: list[float] = []
        thread = threading.Thread(
            target=lambda: asyncio.run(_subscriber(ws_url, token, execution_id, bus_latency, lines))
        )
        thread.start()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
            page = browser.new_page()
            page.add_init_script(OBSERVER)
            page.goto(link)
            page.wait_for_selector("#exec-view:not([hidden])", timeout=30_000)
            creds = data / "auth" / "users" / "alice.creds"
            _cli(
                data, st.url, "run", "--detach", "--id", execution_id, "--creds", str(creds),
                "--runtime", "python", "-c", SCRIPT.format(lines=lines),
            )  # fmt: skip
            deadline = time.monotonic() + 60 + lines * 0.2
            arrivals: list[list[object]] = []
            while time.monotonic() < deadline:
                arrivals = page.evaluate("window.__arrivals")
                if len({a[0] for a in arrivals}) >= lines:
                    break
                time.sleep(0.5)
            browser.close()
        thread.join(timeout=60)
    seen: dict[str, float] = {}
    for text, at in arrivals:
        seen.setdefault(str(text), float(str(at)))  # its first appearance on the page
    page_latency = [at - float(text.split(" ", 1)[0]) for text, at in seen.items()]
    rows = [
        ["page (console, chromium)", len(page_latency), median(page_latency),
         pct(page_latency, 99)],
        ["NATS subscriber (same WebSocket)", len(bus_latency), median(bus_latency),
         pct(bus_latency, 99)],
    ]  # fmt: skip
    ratio = median(page_latency) / max(median(bus_latency), 0.001)
    return (
        table(
            f"printed line → seen, {lines} lines at 10/s (ms)",
            ["where", "lines", "p50", "p99"],
            rows,
        )
        + f"\npage / subscriber p50: {ratio:.2f}x"
    )


FRAMES = """
window.__tasks = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__tasks.push(e.duration);
}).observe({type: 'longtask', buffered: true});
window.__gap = 0;
let last = 0;
(function tick(t) {
  if (last) window.__gap = Math.max(window.__gap, t - last);
  last = t;
  requestAnimationFrame(tick);
})(0);
"""
FOLLOWED = (
    "import sys, time\n"
    "for b in range({batches}):\n"
    "    sys.stdout.write(''.join(f'{{b * 1000 + i + 1}}\\n' for i in range(1000)))\n"
    "    sys.stdout.flush()\n"
    "    time.sleep(0.02)\n"
)


def _status(data: Path, url: str, execution_id: str) -> str:
    shown = json.loads(_cli(data, url, "show", execution_id, "--json"))
    return str(shown["state"]["status"])


def _count(page: Any) -> int:
    text = str(page.evaluate("document.getElementById('line-count').textContent || ''"))
    digits = text.split(" ", 1)[0].replace(",", "")
    return int(digits) if digits.isdigit() else 0


def _until_count(page: Any, lines: int, began: float, limit_s: float) -> float:
    """Seconds from ``began`` until the page holds ``lines`` lines (NaN past the limit)."""
    while time.monotonic() - began < limit_s:
        if _count(page) >= lines:
            return time.monotonic() - began
        time.sleep(0.1)
    return float("nan")


def _page_stats(page: Any) -> tuple[float, float]:
    """The page's longest task and longest frame gap (ms) since it loaded."""
    tasks = [float(t) for t in page.evaluate("window.__tasks")]
    return (max(tasks) if tasks else 0.0), float(page.evaluate("window.__gap"))


def _timed_cli(data: Path, url: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [cronium_bin(), *args, "--nats-url", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin", "CRONIUM_DATA_DIR": str(data)},
    )


def run_big(lines: int) -> str:
    from playwright.sync_api import sync_playwright

    limit_s = 60 + lines / 5000
    rows: list[list[object]] = []
    with stack(env={"CRONIUM_RUNNER__WARM_RUNTIMES": '["bash","python"]'}) as st:
        data, url = st.data_dir, st.url
        _cli(data, url, "user", "add", "alice")
        creds = str(data / "auth" / "users" / "alice.creds")
        stored = _cli(data, url, "run", "--detach", "--creds", creds, "--runtime", "bash",
                      "-c", f"seq 1 {lines}")  # fmt: skip
        deadline = time.monotonic() + limit_s
        while _status(data, url, stored) != "succeeded" and time.monotonic() < deadline:
            time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
            # 1. a stored log: open, reach the last line, scroll back to the first
            page = browser.new_page()
            page.add_init_script(FRAMES)
            began = time.monotonic()
            page.goto(_cli(data, url, "user", "token", "alice", "--url", "--execution", stored))
            opened = _until_count(page, lines, began, limit_s)
            task, gap = _page_stats(page)
            t = time.monotonic()
            page.locator("#log").evaluate("el => { el.scrollTop = 0; }")
            page.wait_for_selector('#log .line[data-n="1"]', timeout=30_000)
            to_top = (time.monotonic() - t) * 1000
            page.close()
            t = time.monotonic()
            baseline = _timed_cli(data, url, "logs", stored, "--creds", creds)
            baseline.wait(timeout=limit_s)
            cli_s = time.monotonic() - t
            rows.append([f"open {lines:,} stored lines", opened, task, gap, cli_s,
                         opened / cli_s])  # fmt: skip
            # 2. a running one: follow it from its first line to its last
            page = browser.new_page()
            page.add_init_script(FRAMES)
            followed = new_id("ex")
            page.goto(_cli(data, url, "user", "token", "alice", "--url", "--execution", followed))
            page.wait_for_selector("#exec-view:not([hidden])", timeout=30_000)
            script = FOLLOWED.format(batches=max(1, lines // 1000))
            began = time.monotonic()
            follower = _timed_cli(data, url, "logs", followed, "--follow", "--creds", creds)
            _cli(data, url, "run", "--detach", "--id", followed, "--creds", creds,
                 "--runtime", "python", "-c", script)  # fmt: skip
            reached = _until_count(page, (lines // 1000) * 1000, began, limit_s)
            task2, gap2 = _page_stats(page)
            follower.wait(timeout=limit_s)
            cli_follow_s = time.monotonic() - began
            rows.append([f"follow {lines:,} lines printed at ~50k/s", reached, task2, gap2,
                         cli_follow_s, reached / cli_follow_s])  # fmt: skip
            browser.close()
    header = ["case", "page: last line (s)", "longest task (ms)", "longest frame gap (ms)",
              "cronium logs (s)", "page / cli"]  # fmt: skip
    title = "large logs in the console (chromium, headless) vs the terminal client"
    return (
        table(title, header, rows)
        + f"\nscroll from the last line back to the first: {to_top:.0f} ms"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__)
    parser.add_argument("--lines", type=int, default=100, help="live lines timed (default 100)")
    parser.add_argument(
        "--big", type=int, default=1_000_000, help="lines of the large log (0: skip; 1,000,000)"
    )
    args = parser.parse_args(argv)
    print(run(args.lines), flush=True)
    if args.big:
        print(run_big(args.big), flush=True)


if __name__ == "__main__":
    main()
