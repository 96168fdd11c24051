"""The warehouse boundary: one Protocol, two backends with the same DDL and queries.

- :class:`ChdbWarehouse`: ClickHouse's engine in-process (chdb) with a data dir — the embedded
  default. A chdb data dir can be opened by one process at a time, so in the embedded stack only
  the projector process owns it and others query through NATS request-reply.
- :class:`ServerWarehouse`: a ClickHouse server through clickhouse-connect
  (``CRONIUM_CLICKHOUSE_URL``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import msgspec


class Warehouse(Protocol):
    """What projections and queries need from ClickHouse."""

    def command(self, sql: str, params: dict[str, Any] | None = None) -> None: ...
    def insert(self, table: str, rows: list[dict[str, Any]]) -> None: ...
    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...
    def close(self) -> None: ...


def _literal(value: Any) -> str:
    """A query parameter as chdb expects it: arrays as ClickHouse literals, the rest as text."""
    if isinstance(value, list | tuple):
        parts = ("'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'" for v in value)
        return "[" + ",".join(parts) + "]"
    return str(value)


def _json_rows(rows: list[dict[str, Any]]) -> bytes:
    """Rows as JSONEachRow, the one insert format of both backends."""
    return b"\n".join(msgspec.json.encode(r) for r in rows)


# JSON output settings both backends use, so rows are the same whichever answers
_JSON_SETTINGS: dict[str, Any] = {"output_format_json_quote_64bit_integers": 0}


def _parse_rows(text: bytes) -> list[dict[str, Any]]:
    """JSONEachRow output, the one result format of both backends."""
    return [json.loads(line) for line in text.splitlines() if line]


def _params(params: dict[str, Any] | None) -> dict[str, str]:
    return {k: _literal(v) for k, v in (params or {}).items()}


class ChdbWarehouse:
    """ClickHouse in-process (chdb), persistent in ``path``."""

    def __init__(self, path: Path) -> None:
        from chdb import session

        path.mkdir(parents=True, exist_ok=True)
        self._session = session.Session(str(path))  # type: ignore[no-untyped-call]
        for name, value in _JSON_SETTINGS.items():
            self._session.query(f"SET {name} = {value}", "Null")  # type: ignore[no-untyped-call]

    def command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self._session.query(sql, "Null", params=_params(params))  # type: ignore[no-untyped-call]

    def insert(self, table: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        body = _json_rows(rows).decode()
        self._session.query(  # type: ignore[no-untyped-call]
            f"INSERT INTO {table} FORMAT JSONEachRow {body}", "Null"
        )

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        result = self._session.query(  # type: ignore[no-untyped-call]
            sql, "JSONEachRow", params=_params(params)
        )
        return _parse_rows(result.bytes())

    def close(self) -> None:
        self._session.close()  # type: ignore[no-untyped-call]


class ServerWarehouse:
    """A ClickHouse server through clickhouse-connect, with the same JSONEachRow encoding both
    ways as chdb (so rows look the same whichever backend answers)."""

    def __init__(self, url: str) -> None:
        import clickhouse_connect

        self._client = clickhouse_connect.get_client(dsn=url)

    def command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self._client.command(sql, parameters=params or {})

    def insert(self, table: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        self._client.raw_insert(table, insert_block=_json_rows(rows), fmt="JSONEachRow")

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return _parse_rows(
            self._client.raw_query(
                sql, parameters=params or {}, settings=_JSON_SETTINGS, fmt="JSONEachRow"
            )
        )

    def close(self) -> None:
        self._client.close()
