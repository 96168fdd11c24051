"""The command-line contract, driven as a user would: `cronium up` in a subprocess, then the
client commands against it (real nats-server, real Docker)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cronium_bus.identity.authority import Authority

pytestmark = pytest.mark.docker


METRICS_LINE = r"cronium metrics: serving (http://127\.0\.0\.1:\d+/metrics)$"


class Stack:
    def __init__(
        self, proc: subprocess.Popen[str], url: str, binary: str, metrics_url: str, data: Path
    ) -> None:
        self.data = data
        self.proc = proc
        self.url = url
        self.binary = binary
        self.metrics_url = metrics_url
        self.websocket = ""

    def cli(
        self,
        *args: str,
        timeout: float = 120,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.binary, *args, "--nats-url", self.url],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env={**os.environ, "CRONIUM_DATA_DIR": str(self.data), **(env or {})},
            check=False,
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [self.binary, *args, "--nats-url", self.url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "CRONIUM_DATA_DIR": str(self.data)},
        )


@pytest.fixture(scope="module")
def stack(cronium_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`cronium up` on a free port, waited for until it prints its ready line."""
    with running_stack(cronium_bin, tmp_path_factory.mktemp("up")) as up:
        yield up


@contextlib.contextmanager
def running_stack(cronium_bin: str, data: Path, **env: str) -> Iterator[Stack]:
    """`cronium up --data-dir DATA` on a free port until the block ends (then SIGTERM)."""
    data.mkdir(parents=True, exist_ok=True)
    with (
        (data / "up.log").open("w") as log,
        subprocess.Popen(
            [cronium_bin, "up", "--data-dir", str(data), "--nats-port", "0"],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={
                **os.environ,
                "CRONIUM_RUNNER__HEARTBEAT": "0.5",
                "CRONIUM_LIMITS__STOP_GRACE": "1",
                "CRONIUM_METRICS_LISTEN": "127.0.0.1:0",
                **env,
            },
        ) as proc,
    ):
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.match(r"cronium ready: (nats://127\.0\.0\.1:\d+) ", line)
        assert match, f"no ready line: {line!r}; log: {(data / 'up.log').read_text()[-2000:]}"
        creds_line = proc.stdout.readline().strip()
        assert creds_line == f"credentials: {data / 'auth' / 'admin.creds'}", creds_line
        metrics = re.match(
            r"cronium metrics: serving (http://127\.0\.0\.1:\d+/metrics)$",
            line2 := proc.stdout.readline().strip(),
        )
        assert metrics, f"no metrics line: {line2!r}"
        up = Stack(proc, match.group(1), cronium_bin, metrics.group(1), data)
        ws = re.search(r" websocket (ws://127\.0\.0\.1:\d+)$", line.strip())
        assert ws, f"no websocket on the ready line: {line!r}"
        up.websocket = ws.group(1)
        yield up
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


@pytest.mark.parametrize(
    ("runtime", "code"),
    [("python", "print(6*7)"), ("bash", "echo $((6*7))"), ("node", "console.log(6*7)")],
)
def test_run_prints_42_and_exits_0(stack: Stack, runtime: str, code: str) -> None:
    """`cronium run --runtime R -c CODE` prints the script's stdout and exits 0."""
    result = stack.cli("run", "--runtime", runtime, "-c", code)
    assert (result.returncode, result.stdout) == (0, "42\n"), result.stderr


def test_exit_code_and_stderr_pass_through(stack: Stack) -> None:
    """The script's exit code is the command's; its stderr goes to stderr."""
    result = stack.cli("run", "--runtime", "bash", "-c", "echo out; echo oops >&2; exit 3")
    assert result.returncode == 3
    assert result.stdout == "out\n"
    assert "oops" in result.stderr


def test_too_much_memory_is_rejected_with_exit_2(stack: Stack) -> None:
    """Asking for 999 GB is rejected by the dispatcher: exit 2 and a reason with a hint."""
    result = stack.cli("run", "--runtime", "python", "--memory", "999g", "-c", "print(1)")
    assert result.returncode == 2
    assert "999 GiB of memory asked, the maximum is 2 GiB" in result.stderr
    assert "hint: ask for --memory 2048m or less" in result.stderr


def test_timeout_exits_124(stack: Stack) -> None:
    result = stack.cli("run", "--runtime", "bash", "--timeout", "1s", "-c", "sleep 30")
    assert result.returncode == 124
    assert "timeout of 1s" in result.stderr


def test_file_stdin_input_and_json(stack: Stack, tmp_path: Path) -> None:
    """A FILE picks the runtime by extension; --json prints a summary; '-' reads stdin."""
    script = tmp_path / "job.py"
    script.write_text("import sys\nprint('from file')\nsys.exit(0)\n")
    result = stack.cli("run", str(script), "--json")
    summary = json.loads(result.stdout)
    assert summary["status"] == "succeeded" and summary["exit_code"] == 0
    assert "from file" in result.stderr
    piped = stack.cli("run", "--runtime", "node", "-", input="console.log('piped')")
    assert (piped.returncode, piped.stdout) == (0, "piped\n")


def test_logs_follow_sees_a_line_while_the_script_runs(stack: Stack) -> None:
    """A line printed before a sleep reaches `cronium logs --follow` before the script ends."""
    code = "import time\nprint('first', flush=True)\ntime.sleep(4)\nprint('second')"
    detached = stack.cli("run", "--runtime", "python", "--detach", "-c", code)
    assert detached.returncode == 0
    execution_id = detached.stdout.strip()
    with stack.popen("logs", execution_id, "--follow") as follower:
        assert follower.stdout is not None
        assert follower.stdout.readline() == "first\n"
        seen_first = time.monotonic()
        rest, _ = follower.communicate(timeout=60)
        ended = time.monotonic()
    assert follower.returncode == 0
    assert rest == "second\n"
    assert ended - seen_first > 2.0, "the first line must arrive while the script still runs"
    again = stack.cli("logs", execution_id)
    assert again.stdout == "first\nsecond\n"


def test_show_prints_the_timeline(stack: Stack) -> None:
    detached = stack.cli("run", "--runtime", "bash", "--detach", "-c", "echo hi")
    execution_id = detached.stdout.strip()
    stack.cli("logs", execution_id, "--follow")
    shown = stack.cli("show", execution_id)
    assert shown.returncode == 0
    for event in (
        "execution.requested",
        "execution.queued",
        "execution.started",
        "execution.succeeded",
    ):
        assert event in shown.stdout
    data = json.loads(stack.cli("show", execution_id, "--json").stdout)
    assert data["state"]["status"] == "succeeded"
    missing = stack.cli("show", "ex_does_not_exist")
    assert missing.returncode == 1 and "no execution" in missing.stderr


def test_cancel_a_running_execution(stack: Stack) -> None:
    """`cronium cancel ID` ends a running script; its `cronium run` exits 130."""
    with stack.popen(
        "run", "--runtime", "bash", "--id", "ex_cancel_me", "-c", "echo up; sleep 60"
    ) as runner:
        assert runner.stdout is not None
        assert runner.stdout.readline() == "up\n"
        t0 = time.monotonic()
        cancelled = stack.cli("cancel", "ex_cancel_me", "--wait")
        assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
        assert time.monotonic() - t0 < 5
        assert runner.wait(30) == 130


def test_up_makes_its_data_dir_and_key_private(stack: Stack) -> None:
    """`cronium up` makes its data dir 0700 and, on first start, a 0600 key file in it."""
    assert stack.data.stat().st_mode & 0o777 == 0o700
    key = stack.data / "secret.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert len(key.read_text().strip()) == 64


def test_secret_set_then_used_and_masked(stack: Stack, tmp_path: Path) -> None:
    """Right after `cronium up`, with no key set by hand (nor held by the client), `cronium
    secret set` reads the value from stdin; a run naming it sees it, masked."""
    assert "CRONIUM_SECRET_KEY" not in os.environ
    stored = stack.cli("secret", "set", "DEPLOY_TOKEN", input="tok-123-abc\n")
    assert stored.returncode == 0, stored.stderr
    assert "DEPLOY_TOKEN" in stack.cli("secret", "list").stdout
    result = stack.cli(
        "run",
        "--runtime",
        "bash",
        "--secret",
        "DEPLOY_TOKEN",
        "-c",
        'echo "token=$(cronium_secret DEPLOY_TOKEN)"',
    )
    assert (result.returncode, result.stdout) == (0, "token=********\n"), result.stderr
    # the client needs no key at all: the sealing service has it
    keyless = {
        "CRONIUM_DATA_DIR": str(tmp_path / "no-key-here"),
        "CRONIUM_CREDS": str(stack.data / "auth" / "admin.creds"),
    }
    assert stack.cli("secret", "set", "X", input="value", env=keyless).returncode == 0
    bad = stack.cli("secret", "set", "bad/name", input="value")
    assert bad.returncode == 2 and "not a valid secret name" in bad.stderr


def test_history_and_audit_verify(stack: Stack) -> None:
    """Executions reach the warehouse: `cronium history` lists them, `audit verify` passes."""
    ran = stack.cli("run", "--runtime", "bash", "--id", "ex_history_probe", "-c", "exit 4")
    assert ran.returncode == 4
    deadline = time.monotonic() + 30
    rows: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        listed = stack.cli("history", "--json", "--status", "failed", "--since", "1h")
        assert listed.returncode == 0, listed.stderr
        rows = [r for r in json.loads(listed.stdout) if r["execution_id"] == "ex_history_probe"]
        if rows:
            break
        time.sleep(0.5)
    assert rows and rows[0]["exit_code"] == 4 and rows[0]["error_kind"] == "nonzero_exit"
    verified = stack.cli("audit", "verify")
    assert verified.returncode == 0 and "intact" in verified.stdout
    exported = stack.cli("audit", "export", "--since", "1h", "--format", "csv")
    assert exported.returncode == 0 and "ex_history_probe" in exported.stdout
    assert stack.cli("history", "--since", "yesterday-ish").returncode == 2

    # replay rebuilds the projections (progress on stderr) and the same rows come back
    replayed = stack.cli("replay")
    assert replayed.returncode == 0, replayed.stderr
    assert "swapped in" in replayed.stdout and "replay: swap" in replayed.stderr
    again = stack.cli("history", "--json", "--status", "failed", "--since", "1h")
    assert [r for r in json.loads(again.stdout) if r["execution_id"] == "ex_history_probe"] == rows
    assert stack.cli("audit", "verify").returncode == 0

    stats = stack.cli("stats", "--json", "--since", "1h")
    assert stats.returncode == 0, stats.stderr
    hours = json.loads(stats.stdout)["runs_per_hour"]
    assert any(h["status"] == "failed" and int(h["runs"]) >= 1 for h in hours)
    assert "run time per event" in stack.cli("stats").stdout


def test_run_with_a_large_input_file_goes_through_the_payload_store(
    stack: Stack, tmp_path: Path
) -> None:
    """`--input @FILE` over the inline limit is uploaded and referenced (and an output that
    large comes back whole in `--json`); over the object limit it is refused before anything
    is published."""
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"rows": [{"id": i, "pad": "x" * 40} for i in range(50_000)]}))
    assert big.stat().st_size > 2 * 1024**2
    code = "jq '.rows | length' /cronium/input.json; cronium_input | jq '.rows[-1].id'"
    result = stack.cli("run", "--runtime", "bash", "--input", f"@{big}", "-c", code)
    assert (result.returncode, result.stdout) == (0, "50000\n49999\n"), result.stderr
    echo = "import cronium\ncronium.output(cronium.input())"
    both = stack.cli("run", "--json", "--runtime", "python", "--input", f"@{big}", "-c", echo)
    assert both.returncode == 0, both.stderr
    summary = json.loads(both.stdout)
    assert summary["output"] == json.loads(big.read_text())  # both ways by reference
    shown = stack.cli("show", summary["execution_id"], "--json")
    state = json.loads(shown.stdout)["state"]
    assert state["output"] == summary["output"] and state["output_ref"]["size"] > 256 * 1024
    small = {"CRONIUM_LIMITS__MAX_INPUT_OBJECT": "1m"}
    refused = stack.cli("run", "--runtime", "bash", "--input", f"@{big}", "-c", "1", env=small)
    assert refused.returncode == 2
    assert "over the limit of 1 MiB" in refused.stderr and "max_input_object" in refused.stderr


def test_run_with_retries_waits_for_the_last_attempt(stack: Stack) -> None:
    """`cronium run --retries 2` shows every attempt and exits with the last one's code."""
    result = stack.cli(
        "run", "--runtime", "bash", "--retries", "2", "--retry-on", "nonzero_exit",
        "--retry-delay", "0.2s", "-c", "echo trying; exit 5",
    )  # fmt: skip
    assert result.returncode == 5, result.stderr
    assert result.stdout.count("trying") == 3
    check = stack.cli("check", "--json", "--no-containers")
    assert check.returncode == 0 and json.loads(check.stdout)["ok"], check.stdout
    missing = stack.cli("dlq", "retry", "999999")
    assert missing.returncode == 1 and "no dead letter 999999" in missing.stderr
    dropped = stack.cli("dlq", "drop", "999999")
    assert dropped.returncode == 1 and "cronium dlq list" in dropped.stderr
    assert stack.cli("dlq", "list").returncode == 0


def test_status_lists_healthy_consumers(stack: Stack) -> None:
    result = stack.cli("status", "--json")
    assert result.returncode == 0
    data = json.loads(result.stdout)
    kinds = {c["kind"] for c in data["consumers"] if c["healthy"]}
    assert {"dispatcher", "container", "ssh", "projector"} <= kinds
    assert set(data["lanes"]) == {"container", "ssh"}
    assert set(data["lanes"]["container"]) == {"critical", "high", "normal", "low"}
    assert all(n >= 0 for lane in data["lanes"].values() for n in lane.values())
    assert set(data["projector_backlog"]) == {"projector-exec", "projector-logs"}
    assert isinstance(data["dead_letters"], int)
    text = stack.cli("status").stdout
    assert "dispatcher" in text and "lane      container" in text and "dead letters" in text
    assert "events not yet in the warehouse" in text


def test_a_killed_consumer_is_restarted(stack: Stack) -> None:
    """SIGKILL of the container consumer: `cronium up` restarts it and it serves again."""
    before = json.loads(stack.cli("status", "--json").stdout)["consumers"]
    pid = next(c["pid"] for c in before if c["kind"] == "container" and c["healthy"])
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = json.loads(stack.cli("status", "--json").stdout)["consumers"]
        if any(c["kind"] == "container" and c["healthy"] and c["pid"] != pid for c in now):
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the container consumer was not restarted")
    result = stack.cli("run", "--runtime", "python", "-c", "print('again')")
    assert (result.returncode, result.stdout) == (0, "again\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run"], "nothing to run"),
        (["run", "-c", "print(1)"], "--runtime"),
        (["run", "--runtime", "python", "--memory", "lots", "-c", "1"], "cannot read size"),
        (["run", "--runtime", "python", "--timeout", "soon", "-c", "1"], "cannot read duration"),
        (["run", "--runtime", "python", "--input", "{bad", "-c", "1"], "not valid JSON"),
        (["run", "--runtime", "python", "--input", "@/nonexistent", "-c", "1"], "cannot read"),
        (["run", "--runtime", "python", "--cpus", "-1", "-c", "1"], "--cpus"),
        (["run", "--runtime", "python", "--id", "a.b", "-c", "1"], "not a valid id"),
        (["run", "--runtime", "ruby", "-c", "1"], "invalid choice"),
        (["run", "/nonexistent.py"], "cannot read"),
        (["logs", "bad.id"], "not an execution id"),
        (["stats", "--since", "last tuesday"], "cannot read --since"),
        (["run", "--runtime", "bash", "--retries", "500", "-c", "1"], "--retries"),
        (["run", "--runtime", "bash", "--retry-on", "oops", "-c", "1"], "invalid choice"),
        (["run", "--runtime", "bash", "--delay", "later", "-c", "1"], "cannot read duration"),
        (["check", "--grace", "-1"], "--grace"),
        (["dlq", "retry", "abc"], "invalid int value"),
        (["dlq", "drop"], "the following arguments are required: ID"),
        (["replay", "--force", "extra"], "unrecognized arguments"),
        (["metrics", "--listen", "nowhere"], "is not HOST:PORT"),
        (["metrics", "--listen", "127.0.0.1:99999"], "is not a port"),
        (["metrics", "--listen", "127.0.0.1:0"], "--listen needs --serve"),
    ],
)
def test_bad_flags_exit_2_with_a_message(stack: Stack, args: list[str], message: str) -> None:
    result = stack.cli(*args)
    assert result.returncode == 2, result
    assert message in result.stderr


def test_oversized_script_is_refused_before_publishing(stack: Stack) -> None:
    """A 2 MiB script read from stdin is refused by the CLI with the sizes, exit 2."""
    result = stack.cli("run", "--runtime", "python", "-", input="#" * (2 * 1024 * 1024))
    assert result.returncode == 2
    assert "over the limit" in result.stderr


@pytest.mark.parametrize("command", ["status", "metrics"])
def test_unreachable_stack_exits_69_with_a_hint(cronium_bin: str, command: str) -> None:
    result = subprocess.run(
        [cronium_bin, command, "--nats-url", "nats://127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "CRONIUM_CONNECT_TIMEOUT": "1"},
    )
    assert result.returncode == 69
    assert "cannot reach NATS" in result.stderr and "cronium up" in result.stderr


def _metrics_of(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_of_the_running_stack(stack: Stack) -> None:
    """`cronium up` with metrics_listen serves GET /metrics: a job that ran is counted once the
    projector has it, the lane consumers and every process of the stack are there;
    `cronium metrics` prints the same figures once."""
    ran = stack.cli("run", "--runtime", "bash", "-c", "echo counted")
    assert ran.returncode == 0, ran.stderr
    deadline = time.monotonic() + 60
    while True:
        with urllib.request.urlopen(stack.metrics_url, timeout=30) as response:
            found = _metrics_of(response.read().decode())
        succeeded = found.get(("cronium_attempts", frozenset({("status", "succeeded")})), 0)
        if succeeded >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert succeeded >= 1
    assert found[("cronium_up", frozenset())] == 1
    kinds = {dict(k)["kind"] for (name, k) in found if name == "cronium_process_healthy"}
    assert kinds == {
        "dispatcher",
        "container",
        "ssh",
        "projector",
        "secrets",
        "workflow",
        "scheduler",
    }
    lanes = {dict(k)["consumer"] for (name, k) in found if name == "cronium_consumer_pending"}
    assert {"container-normal", "container-critical", "projector-exec"} <= lanes

    def of(name: str, kind: str) -> list[tuple[dict[str, str], float]]:
        return [
            (dict(k), v) for (n, k), v in found.items() if n == name and dict(k)["kind"] == kind
        ]

    assert [v for _, v in of("cronium_docker_up", "container")] == [1]
    assert {labels["runtime"] for labels, _ in of("cronium_warm_pool_idle", "container")} == {
        "bash",
        "python",
        "node",
    }
    assert [v for _, v in of("cronium_runner_slots", "container")] == [4]
    assert [v for _, v in of("cronium_ssh_connections", "ssh")] == [0]
    bash = frozenset({("runtime", "bash")})
    assert found[("cronium_run_time_seconds_count", bash)] >= 1
    assert (
        found[("cronium_run_time_seconds_bucket", bash | {("le", "+Inf")})]
        == (found[("cronium_run_time_seconds_count", bash)])
    )

    once = stack.cli("metrics")
    assert once.returncode == 0, once.stderr
    printed = _metrics_of(once.stdout)
    assert printed[("cronium_attempts", frozenset({("status", "succeeded")}))] >= succeeded


def test_metrics_serve_answers_until_sigterm_and_refuses_a_taken_port(stack: Stack) -> None:
    with stack.popen("metrics", "--serve", "--listen", "127.0.0.1:0", "--no-warehouse") as served:
        try:
            assert served.stdout is not None
            line = served.stdout.readline().strip()
            match = re.match(METRICS_LINE, line)
            assert match, line
            with urllib.request.urlopen(match.group(1), timeout=30) as response:
                found = _metrics_of(response.read().decode())
            assert found[("cronium_up", frozenset())] == 1
            assert ("cronium_warehouse_up", frozenset()) not in found
        finally:
            served.send_signal(signal.SIGTERM)
            assert served.wait(30) == 0
    nats_port = stack.url.rsplit(":", 1)[1]
    taken = stack.cli("metrics", "--serve", "--listen", f"127.0.0.1:{nats_port}")
    assert taken.returncode == 1
    assert "cannot listen on 127.0.0.1:" in taken.stderr and "--listen" in taken.stderr


def test_up_refuses_to_start_when_its_metrics_address_is_taken(
    stack: Stack, cronium_bin: str, tmp_path: Path
) -> None:
    """`cronium up` with metrics_listen on a taken port stops at once with exit 1 and says
    which setting to change; it leaves no process behind (its own nats-server is stopped)."""
    nats_port = stack.url.rsplit(":", 1)[1]
    result = subprocess.run(
        [cronium_bin, "up", "--data-dir", str(tmp_path), "--nats-port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "CRONIUM_METRICS_LISTEN": f"127.0.0.1:{nats_port}"},
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert f"cannot serve metrics on 127.0.0.1:{nats_port}" in result.stderr
    assert "metrics_listen" in result.stderr
    assert "cronium ready" not in result.stdout
    left = [p for p in Path("/proc").glob("[0-9]*/cmdline") if str(tmp_path) in _read_or_empty(p)]
    assert left == [], "a process of the refused stack is still running"


def _read_or_empty(path: Path) -> str:
    try:
        return path.read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # the process ended while listing
        return ""


def test_anonymous_and_forged_connections_are_refused(stack: Stack, tmp_path: Path) -> None:
    """`cronium up`'s NATS has no anonymous access, not even on loopback: a client with no
    credentials, or with credentials this installation did not issue, is refused (exit 77)."""
    anonymous = stack.cli("status", env={"CRONIUM_DATA_DIR": str(tmp_path)})
    assert anonymous.returncode == 77, anonymous.stderr
    assert "refused the credentials" in anonymous.stderr and "--creds" in anonymous.stderr
    foreign = Authority.load_or_create(tmp_path / "other-auth")
    stranger = tmp_path / "stranger.creds"
    stranger.write_text(foreign.issue("mallory", "admin"))
    forged = stack.cli("status", "--creds", str(stranger))
    assert forged.returncode == 77 and "mallory" in forged.stderr, forged.stderr
    missing = stack.cli("status", "--creds", str(tmp_path / "nope.creds"))
    assert missing.returncode == 69 and "does not exist" in missing.stderr
    assert stack.cli("status").returncode == 0  # the admin credential of the data dir


def test_users_get_credentials_by_role_and_lose_them_on_rm(stack: Stack, tmp_path: Path) -> None:
    """`cronium user add` writes a 0600 .creds a plain NATS client accepts; a user runs, an
    auditor may not (exit 77 naming the subject); `user rm` refuses the credentials from then on."""
    added = stack.cli("user", "add", "alice")
    assert added.returncode == 0, added.stderr
    alice = Path(added.stdout.strip())
    assert alice.stat().st_mode & 0o777 == 0o600 and "BEGIN NATS USER JWT" in alice.read_text()
    carol_file = tmp_path / "carol.creds"
    carol = stack.cli("user", "add", "carol", "--role", "auditor", "--out", str(carol_file))
    assert carol.returncode == 0 and carol.stdout.strip() == str(carol_file), carol.stderr
    again = stack.cli("user", "add", "alice")
    assert again.returncode == 2 and "exists" in again.stderr
    for bad in ("Alice", "a.b", "a b", "x" * 65, "service", "*"):
        refused = stack.cli("user", "add", bad)
        assert refused.returncode == 2, (bad, refused.stderr)
    listed = [json.loads(line) for line in stack.cli("user", "list", "--json").stdout.splitlines()]
    assert {(u["name"], u["role"], u["state"]) for u in listed} >= {
        ("alice", "user", "active"),
        ("carol", "auditor", "active"),
    }
    ran = stack.cli("run", "--creds", str(alice), "--runtime", "bash", "-c", "echo as-alice")
    assert (ran.returncode, ran.stdout) == (0, "as-alice\n"), ran.stderr
    denied = stack.cli("run", "--creds", str(carol_file), "--runtime", "bash", "-c", "echo no")
    assert denied.returncode == 77, denied.stderr
    assert "not permitted to publish to cronium.exec." in denied.stderr
    status = stack.cli("status", "--creds", str(carol_file))  # the jobs stream is the service's
    assert status.returncode == 77 and "refused by the server" in status.stderr
    removed = stack.cli("user", "rm", "alice")
    assert removed.returncode == 0, removed.stderr
    after = stack.cli("run", "--creds", str(alice), "--runtime", "bash", "-c", "echo again")
    assert after.returncode == 77 and "refused the credentials of alice" in after.stderr
    assert stack.cli("user", "rm", "alice").returncode == 2


def test_help_explains_commands_and_exit_codes(cronium_bin: str) -> None:
    top = subprocess.run([cronium_bin, "--help"], capture_output=True, text=True, check=True)
    for command in (
        "up",
        "consume",
        "run",
        "logs",
        "show",
        "status",
        "cancel",
        "config",
        "metrics",
        "user",
    ):
        assert command in top.stdout
    run = subprocess.run([cronium_bin, "run", "--help"], capture_output=True, text=True, check=True)
    assert "124" in run.stdout and "137" in run.stdout and "--timeout" in run.stdout
    assert "77" in run.stdout and "--creds" in run.stdout


def test_config_redacts_secrets(cronium_bin: str) -> None:
    result = subprocess.run(
        [cronium_bin, "config"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "CRONIUM_SECRET_KEY": "s3cr3t-value"},
    )
    data = json.loads(result.stdout)
    assert data["secret_key"] == "**********"
    assert "s3cr3t" not in result.stdout
    bad = subprocess.run(
        [cronium_bin, "config"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "CRONIUM_RUNNER__SLOTS": "zero"},
    )
    assert bad.returncode == 2 and "invalid settings" in bad.stderr
