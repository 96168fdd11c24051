"""The runtime API of one attempt: HTTP over a Unix socket in its runtime directory.

The socket lives in the directory bind-mounted read-only at ``/cronium``, so the script reaches it
with no network; every request carries the attempt's random token. Each call is validated (JSON,
size caps, names) and audited as a ``helper.called`` event; output, condition and variables also
become their own events.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import msgspec
import structlog
from aiohttp import web

from consumers.helpers.variables import MAX_VALUE_BYTES, VariableStore
from cronium_bus.bus import Bus
from cronium_bus.codec import MAX_JSON_DEPTH, check_depth
from cronium_bus.errors import EventDecodeError
from cronium_bus.events import (
    ConditionSet,
    HelperCalled,
    OutputSet,
    Queued,
    VariableSet,
    follow_up,
)
from cronium_bus.ids import NAME_HINT, NAME_PATTERN
from cronium_bus.payloads import PayloadError, PayloadStoreError, get_payload, put_payload

log = structlog.get_logger(__name__)


class _Counted(asyncio.Protocol):
    """A connection's own protocol, telling when the connection is gone."""

    def __init__(self, inner: asyncio.Protocol, released: Callable[[], None]) -> None:
        self._inner = inner
        self._released = released

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._released()
        self._inner.connection_lost(exc)


class _Busy(asyncio.Protocol):
    """A connection over the cap: told so, then closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        body = b'{"error": "too many open connections to the runtime API"}'
        transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        transport.close()


MAX_BODY: Final = 512 * 1024
MAX_OUTPUT_BYTES: Final = 256 * 1024
MAX_CALLS: Final = 10_000
_NAME = re.compile(NAME_PATTERN)
MAX_CONNECTIONS: Final = 16
"""Connections one attempt may hold open to its runtime API at once (more are refused)."""
IDLE_TIMEOUT_S: Final = 5.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HelperError(Exception):
    """A refused helper call: HTTP status, reason and hint for the script."""

    def __init__(self, status: int, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.hint = hint


class HelperApi:
    """Serves one attempt's helper calls while it runs."""

    def __init__(self, bus: Bus, queued: Queued, secrets_by_name: dict[str, str]) -> None:
        self.bus = bus
        self.queued = queued
        self.secrets = secrets_by_name
        self._input_json: bytes | None = None
        self.token = secrets.token_urlsafe(32)
        self.variables = VariableStore(bus.js)
        self.calls = 0
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None

    def event_metadata(self) -> dict[str, Any]:
        """What ``event()`` returns to the script."""
        q, r = self.queued, self.queued.request
        return {
            "execution_id": q.execution_id,
            "attempt": q.attempt,
            "correlation_id": q.correlation_id,
            "user": q.user,
            "runtime": r.runtime,
            "runner": r.runner,
            "priority": r.priority,
            "event_ref": r.event_ref,
            "timeout_s": r.timeout_s,
            "requested_at": q.time.isoformat(),
        }

    async def start(self, socket_path: Path) -> None:
        """Listen on ``socket_path``; the caller narrows who may connect (``hostfs``)."""
        # output may be large (it goes to the payload store); every other call stays small
        max_body = max(MAX_BODY, self.bus.settings.limits.max_output_object + MAX_BODY)
        app = web.Application(client_max_size=max_body, middlewares=[self._middleware])
        app.add_routes(
            [
                web.get("/v1/input", self._input),
                web.get("/v1/event", self._event),
                web.post("/v1/output", self._output),
                web.post("/v1/condition", self._condition),
                web.get("/v1/variables/{key}", self._get_variable),
                web.put("/v1/variables/{key}", self._set_variable),
                web.get("/v1/secrets/{name}", self._secret),
            ]
        )
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, keepalive_timeout=IDLE_TIMEOUT_S
        )
        await self._runner.setup()
        server = self._runner.server
        assert server is not None

        held = 0  # counted here, as each connection is made: the server's own list lags behind

        def connection() -> asyncio.BaseProtocol:
            # one script's flood of connections costs the runner at most MAX_CONNECTIONS
            # descriptors; the rest are answered 503 and closed at once
            nonlocal held
            if held >= MAX_CONNECTIONS:
                return _Busy()
            held += 1

            def released() -> None:
                nonlocal held
                held -= 1

            return _Counted(server(), released)

        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(connection, str(socket_path))
        socket_path.chmod(0o600)  # noqa: ASYNC240 - one local syscall

    async def stop(self) -> None:
        """Stop serving; idempotent."""
        unix, self._server = self._server, None
        if unix is not None:
            unix.close()  # no new connections
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()  # closes the connections it serves
        if unix is not None:
            await unix.wait_closed()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        helper = request.path.removeprefix("/v1/").split("/", 1)[0]
        key = request.match_info.get("key") or request.match_info.get("name")
        self.calls += 1
        try:
            self._admit(request, key)
            response = await handler(request)
        except HelperError as exc:
            await self._audit(helper, key, ok=False, detail=exc.message)
            return web.json_response({"error": exc.message, "hint": exc.hint}, status=exc.status)
        except web.HTTPException as exc:
            await self._audit(helper, key, ok=False, detail=exc.reason)
            return web.json_response({"error": exc.reason}, status=exc.status)
        except Exception as exc:  # a bug: still answered, still audited, the API stays up
            log.exception("helper call failed", helper=helper)
            await self._audit(helper, key, ok=False, detail=f"internal error: {type(exc).__name__}")
            return web.json_response({"error": "internal error"}, status=500)
        await self._audit(helper, key, ok=True)
        return response

    def _admit(self, request: web.Request, key: str | None) -> None:
        """Refuse floods, wrong tokens and unsafe names."""
        if self.calls > MAX_CALLS:
            raise HelperError(429, f"more than {MAX_CALLS} helper calls in one execution")
        auth = request.headers.get("Authorization", "")
        if not hmac.compare_digest(auth.encode(), f"Bearer {self.token}".encode()):
            raise HelperError(401, "missing or wrong token")
        if key is not None and not _NAME.fullmatch(key):
            raise HelperError(400, f"{key[:64]!r} is not a valid name", NAME_HINT)

    async def _audit(self, helper: str, key: str | None, *, ok: bool, detail: str = "") -> None:
        if self.calls > MAX_CALLS + 1:
            return  # stop auditing a flood; the first refusal was recorded
        await self.bus.publish(
            HelperCalled(
                **follow_up(self.queued, self.bus.producer),
                helper=helper[:64],
                key=key,
                ok=ok,
                detail=detail[:500],
            )
        )

    async def _json_value(
        self, request: web.Request, limit: int, raise_hint: str = ""
    ) -> tuple[Any, bytes]:
        if (request.content_length or 0) > limit + 1024:  # refused before it is read
            raise HelperError(
                413,
                f"the body is {request.content_length:,} bytes; the limit is {limit:,}",
                f"store less, or split it {raise_hint}".strip(),
            )
        raw = await request.read()
        try:
            check_depth(raw, MAX_JSON_DEPTH + 1)  # the value, inside {"value": ...}
            body = msgspec.json.decode(raw)
        except EventDecodeError as exc:
            raise HelperError(400, f"the body {exc.message}", exc.hint) from exc
        except (msgspec.DecodeError, RecursionError) as exc:
            raise HelperError(400, f"the body is not JSON: {exc}", 'send {"value": ...}') from exc
        if not isinstance(body, dict) or "value" not in body:
            raise HelperError(400, 'the body must be an object with "value"', 'send {"value": ...}')
        encoded = msgspec.json.encode(body["value"])
        if len(encoded) > limit:
            raise HelperError(
                413,
                f"the value is {len(encoded):,} bytes; the limit is {limit:,}",
                f"store less, or split it {raise_hint}".strip(),
            )
        return body["value"], encoded

    async def input_json(self) -> bytes:
        """The input as JSON: inline, or read (once) from the payload store."""
        if self._input_json is None:
            request = self.queued.request
            if request.input_ref is None:
                self._input_json = msgspec.json.encode(request.input)
            else:
                limit = self.bus.settings.limits.max_input_object
                self._input_json = await get_payload(self.bus.js, request.input_ref, limit)
        return self._input_json

    async def _input(self, _request: web.Request) -> web.Response:
        try:
            raw = await self.input_json()
        except PayloadError as exc:
            raise HelperError(503, exc.message, exc.hint) from exc
        return web.Response(body=b'{"value":' + raw + b"}", content_type="application/json")

    async def _event(self, _request: web.Request) -> web.Response:
        return web.json_response({"value": self.event_metadata()})

    async def _output(self, request: web.Request) -> web.Response:
        limit = self.bus.settings.limits.max_output_object
        value, encoded = await self._json_value(request, limit, "or raise limits.max_output_object")
        envelope = follow_up(self.queued, self.bus.producer)
        if len(encoded) <= MAX_OUTPUT_BYTES:
            await self.bus.publish(OutputSet(**envelope, output=value))
        else:
            q = self.queued
            try:
                ref = await put_payload(
                    self.bus.js, f"output/{q.execution_id}-{q.attempt}", encoded
                )
            except PayloadStoreError as exc:
                raise HelperError(507, exc.message, exc.hint) from exc
            await self.bus.publish(OutputSet(**envelope, output_ref=ref))
        return web.json_response({"value": None})

    async def _condition(self, request: web.Request) -> web.Response:
        value, _ = await self._json_value(request, 16)
        if not isinstance(value, bool):
            raise HelperError(400, "the condition must be true or false")
        await self.bus.publish(
            ConditionSet(**follow_up(self.queued, self.bus.producer), condition=value)
        )
        return web.json_response({"value": None})

    async def _get_variable(self, request: web.Request) -> web.Response:
        value = await self.variables.get(self.queued.user, request.match_info["key"])
        return web.json_response({"value": value})

    async def _set_variable(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        _, encoded = await self._json_value(request, MAX_VALUE_BYTES)
        await self.variables.put(self.queued.user, key, encoded)
        await self.bus.publish(
            VariableSet(
                **follow_up(self.queued, self.bus.producer), key=key, size_bytes=len(encoded)
            )
        )
        return web.json_response({"value": None})

    async def _secret(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.secrets:
            raise HelperError(
                403,
                f"secret {name} was not requested by this execution",
                "name it in the request's secrets (cronium run --secret NAME)",
            )
        return web.json_response({"value": self.secrets[name]})
