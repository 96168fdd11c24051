"""The console's file server against hostile requests: only the built files of web/dist, with
their policy headers; anything else (traversal, dotfiles, encoded separators, NUL, long or odd
names, other methods) is a 404/405 and never a file from elsewhere."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cronium_bus.web import DIST, ConsoleServer

WS = "ws://127.0.0.1:4223"


@pytest.fixture
async def server() -> AsyncIterator[ConsoleServer]:
    async with ConsoleServer("127.0.0.1", 0, WS) as running:
        yield running


async def _get(server: ConsoleServer, raw_path: str, method: str = "GET") -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session:
        url = f"http://{server.host}:{server.port}{raw_path}"
        async with session.request(method, aiohttp.client.URL(url, encoded=True)) as reply:
            return reply.status, await reply.read()


async def test_only_the_built_files_are_served(server: ConsoleServer) -> None:
    for name in ("", "index.html", "console.js", "console.css"):
        status, body = await _get(server, f"/{name}")
        assert status == 200 and body == (DIST / (name or "index.html")).read_bytes()
    secret = (DIST.parent / "package.json").read_bytes()
    for path in (
        "/../package.json",
        "/%2e%2e/package.json",
        "/..%2fpackage.json",
        "/%2e%2e%2fpackage.json",
        "/.%2e/.%2e/pyproject.toml",
        "/..",
        "/.gitignore",
        "/src/console.js",
        "/console.js%00.html",
        "/" + "a" * 4000,
        "/%ff%fe",
        "/index.html/",
    ):
        status, body = await _get(server, path)
        assert status in (400, 404), (path, status)
        assert body != secret and b"cronium-console" not in body, path
    status, _ = await _get(server, "/index.html", method="POST")
    assert status == 405


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(min_size=1, max_size=300))
async def test_any_name_is_a_built_file_or_a_refusal(server: ConsoleServer, name: str) -> None:
    from urllib.parse import quote

    status, body = await asyncio.wait_for(_get(server, "/" + quote(name, safe="")), 10)
    served = {p.name for p in DIST.iterdir() if p.is_file()}
    if status == 200:
        assert name in served and body == (DIST / name).read_bytes()
    else:
        assert status in (400, 404) and name not in served
