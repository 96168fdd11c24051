"""Settings, read once in the entry point and passed down as objects.

Sources, highest priority first: explicit overrides (CLI flags), environment variables with the
prefix ``CRONIUM_`` (nested fields with ``__``, e.g. ``CRONIUM_LIMITS__MAX_MEMORY=1g``), a TOML file
(``--config FILE`` or ``CRONIUM_CONFIG``), then the defaults below.
"""

from __future__ import annotations

import getpass
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from cronium_bus.units import parse_duration, parse_listen, parse_size

Bytes = Annotated[int, BeforeValidator(parse_size), Field(ge=0)]
Seconds = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cronium"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LimitSettings(_Section):
    """Defaults and maxima of container jobs (DESIGN.md: tighten, never loosen)."""

    default_cpus: float = Field(0.5, gt=0)
    max_cpus: float = Field(2.0, gt=0)
    default_memory: Bytes = 512 * 1024**2
    max_memory: Bytes = 2 * 1024**3
    default_pids: int = Field(100, gt=0)
    max_pids: int = Field(1000, gt=0)
    default_timeout: Seconds = 3600.0
    min_timeout: Seconds = 1.0
    max_timeout: Seconds = 86400.0
    stop_grace: Seconds = 5.0
    tmp_size: Bytes = 100 * 1024**2
    workspace_size: Bytes = 500 * 1024**2
    output_cap: Bytes = 16 * 1024**2
    max_request: Bytes = 1024**2
    max_code: Bytes = 256 * 1024
    max_input: Bytes = 256 * 1024
    """Largest input carried inline in the request; larger goes to the payload store."""
    max_input_object: Bytes = 64 * 1024**2
    """Largest input at all (kept in the Object Store bucket ``cronium_payloads``)."""
    max_output_object: Bytes = 16 * 1024**2
    """Largest ``output(data)``; over 256 KiB it is kept in the payload store."""
    max_targets: int = Field(100, ge=1)
    allow_network: bool = False
    schema_check_timeout: Seconds = Field(1.0, gt=0, le=60)
    """Longest a request's input_schema may take to check its input (in a worker process)."""
    max_workflow_nodes: int = Field(100, ge=1, le=1000)
    max_workflow_data: Bytes = 64 * 1024**2
    """Largest sum of a workflow's node inputs (its data passed between nodes)."""
    max_schedules_per_user: int = Field(1000, ge=1, le=1_000_000)
    """Most schedules one user may have at once (a new one past it is refused)."""


class StreamSettings(_Section):
    """Retention of the JetStream streams (changing one updates the stream at start)."""

    replicas: int = Field(1, ge=1, le=5)
    exec_max_age: Seconds = 30 * 86400.0
    exec_max_bytes: Bytes = 8 * 1024**3
    logs_max_age: Seconds = 86400.0
    logs_max_bytes: Bytes = 4 * 1024**3
    duplicate_window: Seconds = 120.0
    max_msg_size: Bytes = 16 * 1024**2
    payloads_max_bytes: Bytes = 4 * 1024**3


class RunnerSettings(_Section):
    """How a runner takes and runs work."""

    slots: int = Field(4, ge=1, le=256)
    ack_wait: Seconds = 30.0
    max_deliver: int = Field(5, ge=1)
    heartbeat: Seconds = 2.0
    log_flush: Seconds = 0.1
    log_chunk_lines: int = Field(500, ge=1)
    log_chunk_bytes: Bytes = 64 * 1024
    max_line_bytes: Bytes = 16 * 1024
    images: dict[str, str] = Field(
        default_factory=lambda: {
            "bash": "cronium/runtime-bash:2",
            "python": "cronium/runtime-python:2",
            "node": "cronium/runtime-node:2",
        }
    )
    runtime_dir: Path | None = None
    warm_pool: int = Field(2, ge=0, le=64)
    warm_runtimes: tuple[Literal["bash", "python", "node"], ...] = ("bash", "python", "node")
    max_running_per_user: int = Field(0, ge=0, le=10_000)
    max_running_per_event: int = Field(0, ge=0, le=10_000)
    limit_wait: Seconds = 0.5


class SshSettings(_Section):
    """The SSH runner: pool, circuit breaker, fan-out (DESIGN.md numbers)."""

    max_connections: int = Field(default=5, ge=1, le=100)
    sessions_per_connection: int = Field(default=8, ge=1, le=64)
    idle_timeout: Seconds = 300.0
    connect_timeout: Seconds = 10.0
    keepalive: Seconds = 30.0
    breaker_failures: int = Field(default=5, ge=1)
    breaker_open_for: Seconds = 60.0
    breaker_trials: int = Field(default=3, ge=1)
    breaker_successes: int = Field(default=2, ge=1)
    fanout_concurrency: int = Field(default=50, ge=1, le=1000)


class WarehouseSettings(_Section):
    """The ClickHouse projections (archive retention applies at the next start of the projector)."""

    log_retention: Seconds = Field(90 * 86400.0, ge=3600.0)
    batch: int = Field(500, ge=1, le=50_000)
    linger: Seconds = 1.0


def _login_name() -> str:
    """The login name as a subject token (``john.doe`` becomes ``john_doe``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", getpass.getuser())[:64] or "user"


class Settings(BaseSettings):
    """Everything configurable. ``cronium config`` prints the effective values."""

    model_config = SettingsConfigDict(
        env_prefix="CRONIUM_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    nats_url: str = "nats://127.0.0.1:4222"
    """One server, or several separated by commas (seeds of a cluster)."""
    creds: Path | None = None
    """A NATS ``.creds`` file (``CRONIUM_CREDS``); unset: the admin credential of ``data_dir``."""
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    nats_port: int = Field(4222, ge=0, le=65535)
    websocket_port: int = Field(4223, ge=0, le=65535)
    """The embedded server's WebSocket listener for browsers (127.0.0.1; 0 = any free port)."""
    console_port: int = Field(4280, ge=0, le=65535)
    """Where ``cronium up`` serves the web console's files (127.0.0.1; 0 = any free port)."""
    data_dir: Path = Field(default_factory=_default_data_dir)
    user: str = Field(default_factory=_login_name, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    """Whom the stack's own identities act for in requests (a ``user`` credential always acts as
    itself): the owner token of the execution's subjects."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    secret_key: SecretStr | None = None
    clickhouse_url: SecretStr | None = None
    connect_timeout: Seconds = 5.0
    metrics_listen: str | None = None
    """HOST:PORT where `cronium up` serves Prometheus metrics (GET /metrics); off when unset."""
    limits: LimitSettings = LimitSettings()
    streams: StreamSettings = StreamSettings()
    runner: RunnerSettings = RunnerSettings()
    ssh: SshSettings = SshSettings()
    warehouse: WarehouseSettings = WarehouseSettings()

    @field_validator("nats_url")
    @classmethod
    def _nats_urls(cls, value: str) -> str:
        """One or more ``nats://``/``tls://``/``ws://``/``wss://`` URLs, comma-separated."""
        urls = [u.strip() for u in value.split(",")]
        for url in urls:
            scheme, sep, rest = url.partition("://")
            if scheme not in {"nats", "tls", "ws", "wss"} or not sep or not rest.strip("/"):
                raise ValueError(
                    f"{url!r} is not a NATS URL: write nats://HOST:PORT (several separated by "
                    "commas); credentials go in nats_user / nats_password"
                )
        return ",".join(urls)

    @field_validator("metrics_listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        """``HOST:PORT`` to bind."""
        if value is not None:
            parse_listen(value)
        return value

    @field_validator("creds", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """``CRONIUM_CREDS=`` (empty) means unset, as for every other variable."""
        return None if value == "" else value

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        """Relative data dirs are taken from the current directory (Docker needs absolute)."""
        return value.expanduser().resolve()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags, then environment, then the TOML file (if any)."""
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    def credentials(self) -> Path | None:
        """The ``.creds`` file to connect with: ``creds``, else ``DATA_DIR/auth/admin.creds``
        when it exists and no user/password is set (the quickstart's single machine)."""
        if self.creds is not None:
            return self.creds
        default = self.data_dir / "auth" / "admin.creds"
        if self.nats_user is None and default.is_file():
            return default
        return None

    @property
    def runtime_dir(self) -> Path:
        """Where per-execution runtime directories are created."""
        return self.runner.runtime_dir or self.data_dir / "run"

    def redacted(self) -> dict[str, Any]:
        """The effective settings as plain data, secrets replaced by ``"**********"``."""
        data: dict[str, Any] = self.model_dump(mode="json")
        for key in ("secret_key", "clickhouse_url", "nats_password"):
            if data.get(key) is not None:
                data[key] = "**********"
        return data


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read the settings once. ``config_file`` (or ``CRONIUM_CONFIG``) names a TOML file."""
    path = config_file or (Path(p) if (p := os.environ.get("CRONIUM_CONFIG")) else None)
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    cls: type[Settings] = Settings
    if path is not None:
        cls = type(
            "Settings", (Settings,), {"model_config": {**Settings.model_config, "toml_file": path}}
        )
    return cls(**{k: v for k, v in overrides.items() if v is not None})
