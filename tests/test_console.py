"""The web console in a real browser: Debian's chromium, headless, driven by Playwright,
against a real `cronium up`. As alice, a running execution's first line appears before it
ends and the timeline turns to succeeded; cancel works; as bob, alice's execution is neither
listed nor opened by URL. Screenshots of each view are kept in test-artifacts/."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.test_cli import Stack, running_stack

pytestmark = [pytest.mark.docker, pytest.mark.timeout(240)]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="module")
def stack(cronium_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        cronium_bin, tmp_path_factory.mktemp("console"), CRONIUM_RUNNER__WARM_RUNTIMES='["bash"]'
    ) as up:
        yield up


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.exists(), "Debian's chromium is missing: make setup installs it"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield b
        b.close()


def _creds(stack: Stack, name: str) -> Path:
    path = stack.data / "auth" / "users" / f"{name}.creds"
    if not path.exists():
        done = stack.cli("user", "add", name)
        assert done.returncode == 0, done.stderr
    return path


def _link(stack: Stack, name: str, execution: str | None = None) -> str:
    _creds(stack, name)
    extra = ["--execution", execution] if execution else []
    done = stack.cli("user", "token", name, "--url", "--ttl", "10m", *extra)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _detach(stack: Stack, name: str, code: str) -> str:
    done = stack.cli(
        "run", "--detach", "--runtime", "bash", "-c", code, "--creds", str(_creds(stack, name))
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _status(stack: Stack, execution_id: str) -> str:
    done = stack.cli("show", execution_id, "--json")
    return str(json.loads(done.stdout)["state"]["status"]) if done.returncode == 0 else "?"


def _shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"console-{name}.png"), full_page=True)


def test_the_console_is_served_with_a_strict_policy_and_no_credential(stack: Stack) -> None:
    console = _link(stack, "alice").split("#", 1)[0]
    with urllib.request.urlopen(console, timeout=10) as page:
        policy = page.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in policy and stack.websocket in policy
        assert page.headers["Referrer-Policy"] == "no-referrer"
        assert b"console.js" in page.read()


def test_alice_follows_her_run_live_to_its_end(stack: Stack, browser: Browser) -> None:
    execution_id = _detach(stack, "alice", "echo first line; sleep 6; echo last line")
    page = browser.new_page()
    page.goto(_link(stack, "alice", execution_id))
    expect(page.locator("#log")).to_contain_text("first line", timeout=30_000)
    assert _status(stack, execution_id) in ("queued", "started")  # it still runs
    assert "last line" not in page.locator("#log").inner_text()
    assert "token=" not in page.url  # the credential left the address bar at once
    _shot(page, "live")
    expect(page.locator("#outcome")).to_have_text("succeeded", timeout=30_000)
    expect(page.locator("#log")).to_contain_text("last line")
    expect(page.locator("#timeline")).to_contain_text("execution.started")
    _shot(page, "succeeded")
    page.locator("#back").click()
    expect(page.locator("#runs")).to_contain_text(execution_id, timeout=30_000)
    # the charts: her runs per hour and run time per event, from her own stats query
    expect(page.locator("#runs-chart rect").first).to_be_visible(timeout=30_000)
    expect(page.locator("#durations")).to_contain_text("(ad hoc) [bash]")
    # the list is live: a run started now appears at the top and turns to succeeded
    newer = _detach(stack, "alice", "sleep 2; echo later")
    row = page.locator(f'#runs tr[data-id="{newer}"]')
    expect(row).to_be_visible(timeout=30_000)
    expect(page.locator("#runs tr").first).to_have_attribute("data-id", newer)
    expect(row).to_contain_text("succeeded", timeout=60_000)
    _shot(page, "list")
    page.close()


def _all_lines(page: Page) -> dict[int, str]:
    """Every line of the virtualized log, by its number, read screen after screen."""
    log = page.locator("#log")
    height = int(log.evaluate("el => el.scrollHeight"))
    step = max(1, int(log.evaluate("el => el.clientHeight")) // 2)
    seen: dict[int, str] = {}
    for top in range(0, height + step, step):  # bounded: the log's height in half screens
        log.evaluate(f"el => {{ el.scrollTop = {top}; }}")
        page.evaluate("() => new Promise((r) => requestAnimationFrame(() => r(0)))")
        for n, text in page.locator("#log .line").evaluate_all(
            "els => els.map((e) => [Number(e.dataset.n), e.textContent])"
        ):
            seen[int(n)] = str(text)
    return seen


def test_a_page_opened_mid_run_shows_every_line_once_in_order(
    stack: Stack, browser: Browser
) -> None:
    """The page opens while lines are still being printed: what was stored before and what
    comes live meet with none lost, none twice, in the order printed."""
    lines = 600
    execution_id = _detach(
        stack, "alice", f"for i in $(seq 1 {lines}); do echo $i; sleep 0.01; done"
    )
    deadline = time.monotonic() + 60
    while _status(stack, execution_id) != "started" and time.monotonic() < deadline:
        time.sleep(0.2)
    page = browser.new_page()
    page.goto(_link(stack, "alice", execution_id))
    expect(page.locator("#log .line").first).to_be_visible(timeout=30_000)
    assert _status(stack, execution_id) == "started"  # opened while it still printed
    expect(page.locator("#outcome")).to_have_text("succeeded", timeout=60_000)
    expect(page.locator("#line-count")).to_have_text(f"{lines} lines", timeout=10_000)
    assert _all_lines(page) == {n: str(n) for n in range(1, lines + 1)}
    _shot(page, "mid-run")
    page.close()


def test_alice_cancels_from_the_console(stack: Stack, browser: Browser) -> None:
    execution_id = _detach(stack, "alice", "echo waiting; sleep 60")
    page = browser.new_page()
    page.goto(_link(stack, "alice", execution_id))
    expect(page.locator("#log")).to_contain_text("waiting", timeout=30_000)
    page.locator("#cancel").click()
    expect(page.locator("#outcome")).to_have_text("cancelled", timeout=30_000)
    assert _status(stack, execution_id) == "cancelled"
    _shot(page, "cancelled")
    page.close()


def test_bob_sees_none_of_alices(stack: Stack, browser: Browser) -> None:
    hers = _detach(stack, "alice", "echo alice secret")
    deadline = time.monotonic() + 60
    while _status(stack, hers) != "succeeded" and time.monotonic() < deadline:
        time.sleep(0.5)
    page = browser.new_page()
    page.goto(_link(stack, "bob", hers))  # her id, in his link
    expect(page.locator("#outcome")).to_have_text("not found", timeout=30_000)
    assert "alice secret" not in page.locator("body").inner_text()
    _shot(page, "bob-by-url")
    page.close()
    page = browser.new_page()
    page.goto(_link(stack, "bob"))
    expect(page.locator("#status")).to_contain_text("signed in as bob", timeout=30_000)
    page.wait_for_timeout(1000)
    assert hers not in page.locator("body").inner_text()
    _shot(page, "bob-list")
    page.close()


def _on_screen(page: Page, n: int) -> bool:
    """Whether line ``n`` is inside the log's visible box (not merely in the page)."""
    return bool(
        page.evaluate(
            """(n) => {
              const line = document.querySelector(`#log .line[data-n="${n}"]`);
              if (!line) return false;
              const box = document.getElementById('log').getBoundingClientRect();
              const r = line.getBoundingClientRect();
              return r.top >= box.top - 1 && r.bottom <= box.bottom + 1;
            }""",
            n,
        )
    )


def test_a_million_line_execution_opens_and_reaches_its_last_line(
    stack: Stack, browser: Browser
) -> None:
    """1,000,000 lines: the page loads them page after page into the virtualized view (its
    scroll bar scaled), follows to the last one — on screen, not only in the page — answers a
    click and scrolls back to the first. Left for another execution mid-load, the old load
    draws nothing over the new one. (The times are printed; bench/ measures speed.)"""
    execution_id = _detach(stack, "alice", "seq 1 1000000")
    small = _detach(stack, "alice", "echo small one; echo small two")
    deadline = time.monotonic() + 120
    while _status(stack, execution_id) != "succeeded" and time.monotonic() < deadline:
        time.sleep(0.5)
    page = browser.new_page()
    page.goto(_link(stack, "alice", execution_id))
    expect(page.locator("#status")).to_contain_text("loading the log", timeout=60_000)
    page.evaluate(f"() => {{ location.hash = 'execution={small}'; }}")
    expect(page.locator("#line-count")).to_have_text("2 lines", timeout=30_000)
    page.wait_for_timeout(3000)  # the million's load, had it gone on, would have drawn by now
    expect(page.locator("#line-count")).to_have_text("2 lines")
    assert "small two" in page.locator("#log").inner_text()
    page.evaluate(f"() => {{ location.hash = 'execution={execution_id}'; }}")
    began = time.monotonic()
    expect(page.locator("#line-count")).to_have_text("1,000,000 lines", timeout=120_000)
    loaded = time.monotonic() - began
    expect(page.locator("#log")).to_contain_text("1000000")
    assert _on_screen(page, 1_000_000)  # the end is on screen
    responsive = time.monotonic()
    page.locator("#show-stdout").click()
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => r(0)))")
    answered = time.monotonic() - responsive
    assert _on_screen(page, 1_000_000)
    page.locator("#log").evaluate("el => { el.scrollTop = 0; }")
    expect(page.locator("#log .line").first).to_have_text("1")  # and back to the top
    assert _on_screen(page, 1)
    _shot(page, "million")
    print(f"1,000,000 lines loaded in {loaded:.1f} s; a click answered in {answered:.2f} s")
    page.close()
