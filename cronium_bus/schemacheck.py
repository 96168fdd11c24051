"""Checking a value against a JSON Schema someone else wrote, without letting it stall us.

A schema is code of a sort: ``pattern`` runs a regular expression (``^(a+)+$`` against 40
characters takes longer than the age of the universe), ``uniqueItems`` is quadratic, nested
``anyOf`` multiply, and ``$ref`` may name a URL. So:

- references resolve only inside the schema (an empty ``referencing.Registry``: no remote
  retrieval, an unknown ``$ref`` is an error that names it);
- the service checks in a separate process with a time limit (:class:`SchemaChecker`): past
  it the process is killed, replaced, and the check refused with the reason. A hostile schema
  costs the service at most that limit, never its event loop.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.pool
from typing import Any, Final

import jsonschema
import msgspec
from referencing import Registry

from cronium_bus.errors import CroniumError, ErrorKind

DEFAULT_TIMEOUT_S: Final = 1.0


class SchemaCheckError(CroniumError):
    """The schema could not be applied (unresolvable, or too slow to check)."""

    kind: ErrorKind = "validation"


def violation(schema: dict[str, Any], value: Any) -> str | None:
    """Why ``value`` does not satisfy ``schema`` (JSON path and message), or ``None``; raises
    :class:`SchemaCheckError` when the schema cannot be applied. Runs in this process: for
    schemas the caller trusts (its own), else use :class:`SchemaChecker`."""
    try:
        validator = jsonschema.Draft202012Validator(schema, registry=Registry())
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    except Exception as exc:
        raise SchemaCheckError(
            f"input_schema cannot be applied: {type(exc).__name__}: {exc}"[:400],
            hint="use a self-contained schema: $ref only into the schema itself",
        ) from exc
    if error is None:
        return None
    return f"{error.json_path}: {error.message[:300]}"


def _check_in_worker(schema_json: bytes, value_json: bytes) -> tuple[str | None, str | None]:
    """In the worker: ``(violation, None)`` or ``(None, why it cannot be applied)``."""
    try:
        return violation(msgspec.json.decode(schema_json), msgspec.json.decode(value_json)), None
    except SchemaCheckError as exc:
        return None, exc.message


class SchemaCheckerUnavailable(CroniumError):
    """The worker could not be started: retry later (not the request's fault)."""

    kind: ErrorKind = "infrastructure"


class SchemaChecker:
    """Checks in one worker process, at most ``timeout`` seconds each (then the worker is
    killed and replaced). A new worker is warmed up with a trivial check first, within
    ``startup`` seconds (spawning it and importing jsonschema takes a few hundred milliseconds,
    more on a loaded machine), so a real check always gets a running worker and the strict
    limit. Call :meth:`close` when done."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT_S, startup: float = 60.0) -> None:
        self.timeout = timeout
        self.startup = startup
        self._pool: multiprocessing.pool.Pool | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Start the worker now instead of at the first check."""
        async with self._lock:
            await self._warm()

    async def _warm(self) -> multiprocessing.pool.Pool:
        if self._pool is not None:
            return self._pool
        pool = await asyncio.to_thread(multiprocessing.get_context("spawn").Pool, 1)
        pending = pool.apply_async(_check_in_worker, (b'{"type":"null"}', b"null"))
        try:
            await asyncio.to_thread(pending.get, self.startup)
        except multiprocessing.TimeoutError as exc:
            await asyncio.to_thread(_stop, pool)
            raise SchemaCheckerUnavailable(
                f"the schema checker did not start within {self.startup:g} s",
                hint="the machine is overloaded; the request is retried",
            ) from exc
        self._pool = pool
        return pool

    async def violation(self, schema: dict[str, Any], value: Any) -> str | None:
        """As :func:`violation`, in the worker, within the time limit."""
        schema_json, value_json = msgspec.json.encode(schema), msgspec.json.encode(value)
        async with self._lock:  # one check at a time: the worker is one process
            pool = await self._warm()
            pending = pool.apply_async(_check_in_worker, (schema_json, value_json))
            try:
                found, broken = await asyncio.to_thread(pending.get, self.timeout)
            except multiprocessing.TimeoutError as exc:
                self._pool = None
                await asyncio.to_thread(_stop, pool)
                raise SchemaCheckError(
                    f"input_schema took longer than {self.timeout:g} s to check, and was given up",
                    hint="simplify the schema (e.g. a pattern that backtracks) or the input",
                ) from exc
        if broken is not None:
            raise SchemaCheckError(broken, hint="use a self-contained schema")
        return found

    def close(self) -> None:
        """Stop the worker."""
        pool, self._pool = self._pool, None
        if pool is not None:
            _stop(pool)


def _stop(pool: multiprocessing.pool.Pool) -> None:
    pool.terminate()
    pool.join()
