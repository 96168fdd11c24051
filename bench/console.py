"""Live lines in the browser: how long a printed line takes to reach the web console's page.

A script prints a line with its own clock every 100 ms; headless Debian chromium (Playwright)
shows the execution in the console, signed in with a `cronium user token` link, and a
MutationObserver stamps each line as it enters the page. The baseline, in the same run: a plain
NATS subscriber on the same WebSocket with the same token (what the bus itself takes). Printed:
p50 / p99 of arrival − print for both, and their ratio.

Run: .venv/bin/python -m bench.console [--lines N]
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__)
    parser.add_argument("--lines", type=int, default=100)
    args = parser.parse_args(argv)
    print(run(args.lines), flush=True)


if __name__ == "__main__":
    main()
