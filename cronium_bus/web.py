"""The web console's files, served on loopback (``cronium up``, ``cronium web``).

Only static files: the console talks NATS over WebSocket straight to nats-server, as the
signed-in user (``web/src/console.js``; built into ``web/dist`` with esbuild, committed, so
nothing is fetched at run time). The sign-in link's credential travels in the URL fragment,
which browsers never send, so it appears in no request and no log here. Responses forbid
framing and referrers, and allow scripts and connections only from where the console and the
WebSocket live.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Final

from aiohttp import web

DIST: Final = Path(__file__).resolve().parent.parent / "web" / "dist"
_TYPES: Final = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


class ConsoleServer:
    """Serves ``web/dist`` on ``host:port`` (port 0: any free one)."""

    def __init__(self, host: str, port: int, websocket: str | None) -> None:
        self.host = host
        self.port = port
        self.websocket = websocket
        self._runner: web.AppRunner | None = None
        self._files: dict[str, Path] = {}

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    async def __aenter__(self) -> ConsoleServer:
        if not (DIST / "index.html").is_file():
            raise OSError(f"the console is not built: {DIST} has no index.html (make web)")
        # what is served is fixed here: the built files by name, nothing a request path can reach
        self._files = {
            p.name: p for p in DIST.iterdir() if p.is_file() and not p.name.startswith(".")
        }
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.port = int(sock.getsockname()[1])
        app = web.Application()
        app.add_routes([web.get("/", self._file), web.get("/{name}", self._file)])
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _file(self, request: web.Request) -> web.StreamResponse:
        path = self._files.get(request.match_info.get("name", "index.html"))
        if path is None:
            raise web.HTTPNotFound()
        ws = self.websocket or ""
        return web.FileResponse(
            path,
            headers={
                "Content-Type": _TYPES.get(path.suffix, "application/octet-stream"),
                "Content-Security-Policy": (
                    f"default-src 'self'; connect-src 'self' {ws}; frame-ancestors 'none'"
                ),
                "Referrer-Policy": "no-referrer",
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "no-store",
            },
        )
