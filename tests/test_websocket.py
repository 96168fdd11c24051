"""Browsers' way in: `cronium up`'s WebSocket listener and `cronium user token` bearer
credentials — exactly the user's permissions, WebSocket only, expiring, revoked with the user
(a real nats-server; clients connect over ws:// as a browser's nats.js would)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import pytest

from tests.test_cli import Stack, running_stack

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def stack(cronium_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(cronium_bin, tmp_path_factory.mktemp("ws")) as up:
        yield up


def _token(stack: Stack, name: str, ttl: str = "1h") -> str:
    if not (stack.data / "auth" / "users" / f"{name}.creds").exists():
        added = stack.cli("user", "add", name)
        assert added.returncode == 0, added.stderr
    done = stack.cli("user", "token", name, "--ttl", ttl)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def _connect(url: str, token: str, name: str, errors: list[str]) -> nats.NATS:
    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    return await nats.connect(
        url,
        user_jwt_cb=token.encode,
        signature_cb=lambda _nonce: b"",  # a bearer token signs nothing
        inbox_prefix=f"_INBOX_{name}".encode(),
        error_cb=on_error,
        allow_reconnect=False,
        connect_timeout=5,
    )


async def test_a_token_over_websocket_has_exactly_its_users_permissions(stack: Stack) -> None:
    token = _token(stack, "alice")
    run = await asyncio.to_thread(
        stack.cli, "run", "--user", "alice", "--runtime", "bash", "-c", "echo for alice"
    )
    assert run.returncode == 0, run.stderr
    errors: list[str] = []
    nc = await _connect(stack.websocket, token, "alice", errors)
    try:
        history = await nc.request("cronium.query.user.alice.history", b'{"limit": 5}', timeout=15)
        rows = json.loads(history.data)["result"]
        assert rows and all(r["user"] == "alice" for r in rows)
        await nc.subscribe("cronium.logs.alice.>")
        await nc.subscribe("cronium.logs.bob.>")  # refused: someone else's
        await nc.publish("cronium.exec.bob.x.requested", b"{}")  # refused
        await nc.flush()
        await asyncio.sleep(0.5)
    finally:
        await nc.close()
    refused = " ".join(errors).lower()
    assert 'subscription to "cronium.logs.bob.>"' in refused, errors
    assert 'publish to "cronium.exec.bob.x.requested"' in refused, errors
    assert "cronium.logs.alice" not in refused


async def test_a_token_is_refused_over_tcp_after_it_expires_and_once_the_user_is_removed(
    stack: Stack,
) -> None:
    token = _token(stack, "carl", ttl="3s")
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await _connect(stack.url, token, "carl", [])  # a bearer token is for WebSocket only
    nc = await _connect(stack.websocket, token, "carl", [])
    await nc.close()
    await asyncio.sleep(4)
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await _connect(stack.websocket, token, "carl", [])

    fresh = _token(stack, "dora")
    nc = await _connect(stack.websocket, fresh, "dora", [])
    await nc.close()
    removed = await asyncio.to_thread(stack.cli, "user", "rm", "dora")
    assert removed.returncode == 0, removed.stderr
    await asyncio.sleep(1)
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await _connect(stack.websocket, fresh, "dora", [])


def test_token_refusals(stack: Stack) -> None:
    for args, reason in (
        (["nobody"], "no user 'nobody'"),
        (["alice", "--ttl", "forever"], "--ttl"),
        (["alice", "--ttl", "90d"], "between 1s and 30d"),
    ):
        if args[0] == "alice":
            _token(stack, "alice")
        done = stack.cli("user", "token", *args)
        assert done.returncode == 2 and reason in done.stderr, (args, done.stderr)
    assert Path(stack.data / "auth" / "users" / "alice.creds").exists()


def test_status_names_the_websocket(stack: Stack) -> None:
    out = stack.cli("status").stdout
    assert f"websocket {stack.websocket}" in out, out
