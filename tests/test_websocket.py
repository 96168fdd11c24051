"""Browsers' way in: `cronium up`'s WebSocket listener and `cronium user token` bearer
credentials — exactly the user's permissions, WebSocket only, expiring, revoked with the user
(a real nats-server; clients connect over ws:// as a browser's nats.js would)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import nats
import pytest

from tests.test_cli import Stack, running_stack

pytestmark = [
    pytest.mark.docker,
    pytest.mark.timeout(180),
    # nats-py 2.16's WebSocket transport passes aiohttp a deprecated float timeout
    pytest.mark.filterwarnings("ignore:parameter 'timeout' of type 'float':DeprecationWarning"),
]


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


async def _answer_ws(url: str, token: str) -> str:
    """What nats-server answers a CONNECT with ``token`` over WebSocket (PONG, or -ERR)."""
    connect = json.dumps({"jwt": token, "sig": "", "protocol": 1, "verbose": False})
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url, timeout=aiohttp.ClientWSTimeout(10)) as ws,
    ):
        text = ""
        await ws.send_bytes(f"CONNECT {connect}\r\nPING\r\n".encode())
        while "PONG" not in text and "-ERR" not in text:
            msg = await asyncio.wait_for(ws.receive(), 10)
            if msg.type != aiohttp.WSMsgType.BINARY:
                break
            text += msg.data.decode()
        return text


async def _answer_tcp(url: str, token: str) -> str:
    """The same over a plain TCP connection."""
    host, port = url.removeprefix("nats://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        await reader.readline()  # INFO
        connect = json.dumps({"jwt": token, "sig": "", "protocol": 1, "verbose": False})
        writer.write(f"CONNECT {connect}\r\nPING\r\n".encode())
        await writer.drain()
        return (await asyncio.wait_for(reader.readline(), 10)).decode()
    finally:
        writer.close()


async def test_a_token_is_refused_over_tcp_after_it_expires_and_once_the_user_is_removed(
    stack: Stack,
) -> None:
    token = _token(stack, "carl", ttl="3s")
    assert "Authorization Violation" in await _answer_tcp(stack.url, token)  # WebSocket only
    assert "PONG" in await _answer_ws(stack.websocket, token)
    await asyncio.sleep(4)
    assert "Authorization Violation" in await _answer_ws(stack.websocket, token)  # expired

    fresh = _token(stack, "dora")
    assert "PONG" in await _answer_ws(stack.websocket, fresh)
    removed = await asyncio.to_thread(stack.cli, "user", "rm", "dora")
    assert removed.returncode == 0, removed.stderr
    await asyncio.sleep(1)
    assert "Authorization Violation" in await _answer_ws(stack.websocket, fresh)  # revoked


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
