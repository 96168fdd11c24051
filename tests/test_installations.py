"""Two Cronium installations on one Docker engine: neither touches the other's containers,
and a warm container someone removed is replaced by a cold start, not a failure."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import docker
import pytest

from tests.helpers import installation_at
from tests.test_cli import Stack, running_stack

pytestmark = pytest.mark.docker

INSTALLATION = "org.cronium.installation"


def installation_of(stack: Stack) -> str:
    """The installation id a stack made for itself (read as its admin)."""
    made = asyncio.run(installation_at(stack.url, stack.data / "auth" / "admin.creds"))
    assert made is not None
    return made


def labelled(client: docker.DockerClient, installation: str, **more: str) -> list[str]:
    filters = [f"{INSTALLATION}={installation}", *(f"{k}={v}" for k, v in more.items())]
    return [c.id for c in client.containers.list(all=True, filters={"label": filters})]


def test_two_stacks_on_one_engine_leave_each_other_alone(cronium_bin: str, tmp_path: Path) -> None:
    """Stack A runs a 6 s job; stack B starts (and reaps its leftovers) meanwhile and runs its
    own: A's job ends as its script says. Every container carries its installation's id. Then
    A's idle warm containers are removed behind its back: A's next job starts cold and runs."""
    client = docker.from_env()
    short = {  # runtime dirs hold the API socket: keep their paths short
        name: {"CRONIUM_RUNNER__RUNTIME_DIR": tempfile.mkdtemp(prefix=f"cr{name}-", dir="/tmp")}
        for name in ("a", "b")
    }
    try:
        with running_stack(cronium_bin, tmp_path / "a", **short["a"]) as a:
            mine = installation_of(a)
            long = a.popen("run", "--runtime", "bash", "-c", "echo begin; sleep 6; echo end")
            assert long.stdout is not None and long.stderr is not None
            first = long.stdout.readline()
            assert first == "begin\n", long.stderr.read()  # running in A's container now
            with running_stack(cronium_bin, tmp_path / "b", **short["b"]) as b:
                theirs = installation_of(b)
                assert theirs != mine
                ran = b.cli("run", "--runtime", "bash", "-c", "echo b-ran")
                assert (ran.returncode, ran.stdout) == (0, "b-ran\n"), ran.stderr
                rest, _ = long.communicate(timeout=60)
                assert (long.returncode, rest) == (0, "end\n")
                for cid in labelled(client, mine):
                    assert cid not in labelled(client, theirs)

            deadline = time.monotonic() + 30
            while not labelled(client, mine, **{"org.cronium.pool": "1"}):
                assert time.monotonic() < deadline, "A's warm pool never filled"
                time.sleep(0.2)
            for cid in labelled(client, mine, **{"org.cronium.pool": "1"}):
                client.containers.get(cid).remove(force=True)
            for runtime, code in (("python", "print(6*7)"), ("bash", "echo $((6*7))")):
                done = a.cli("run", "--runtime", runtime, "-c", code)
                assert (done.returncode, done.stdout) == (0, "42\n"), done.stderr
    finally:
        client.close()
        for env in short.values():
            shutil.rmtree(env["CRONIUM_RUNNER__RUNTIME_DIR"], ignore_errors=True)
