"""Settings: sources and their priority, size and duration parsing, redaction, bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from cronium_bus.settings import load_settings
from cronium_bus.units import format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("512m", 512 * 1024**2),
        ("2g", 2 * 1024**3),
        ("100MiB", 100 * 1024**2),
        ("1.5GB", 1610612736),
        ("64k", 65536),
        ("123", 123),
        (42, 42),
    ],
)
def test_sizes(text: str | int, value: int) -> None:
    """Sizes read like docker's --memory (binary units)."""
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "lots", "-5m", "12q", "1e9999g", "5 m b", -1, "99999999t"])
def test_bad_sizes_say_what_to_write(text: str | int) -> None:
    """A size that cannot be read raises ValueError with an example or a range."""
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("2d", 172800.0),
        ("250ms", 0.25),
        (1.5, 1.5),
    ],
)
def test_durations(text: str | float, seconds: float) -> None:
    """Durations accept seconds and unit suffixes, combined."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5x", "-3", "nan", "1h 30m", "99999d"])
def test_bad_durations(text: str) -> None:
    """A duration that cannot be read raises ValueError naming it."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_format_size() -> None:
    assert format_size(512 * 1024**2) == "512 MiB"
    assert format_size(1536) == "1.5 KiB"


def test_env_then_toml_then_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flags beat CRONIUM_* variables, which beat the TOML file, which beats the defaults."""
    toml = tmp_path / "cronium.toml"
    toml.write_text(
        'nats_url = "nats://127.0.0.1:1"\n[limits]\nmax_memory = "1g"\nmax_pids = 50\n'
        "[runner]\nslots = 7\n"
    )
    monkeypatch.setenv("CRONIUM_LIMITS__MAX_PIDS", "60")
    s = load_settings(toml)
    assert s.nats_url == "nats://127.0.0.1:1"
    assert s.limits.max_memory == 1024**3
    assert s.limits.max_pids == 60
    assert s.runner.slots == 7
    assert s.limits.default_cpus == 0.5
    monkeypatch.setenv("CRONIUM_CONFIG", str(toml))
    assert load_settings(nats_url="nats://127.0.0.1:2").nats_url == "nats://127.0.0.1:2"


def test_secrets_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Secret settings never appear in what `cronium config` prints."""
    monkeypatch.setenv("CRONIUM_SECRET_KEY", "hunter2-very-secret")
    monkeypatch.setenv("CRONIUM_CLICKHOUSE_URL", "http://u:pw@127.0.0.1:8123")
    data = load_settings().redacted()
    assert "hunter2" not in str(data) and "pw@" not in str(data)
    assert data["secret_key"] == "**********"


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("CRONIUM_RUNNER__SLOTS", "0"),
        ("CRONIUM_LIMITS__MAX_MEMORY", "plenty"),
        ("CRONIUM_LOG_LEVEL", "loud"),
        ("CRONIUM_NATS_PORT", "70000"),
        ("CRONIUM_LIMITS__BOGUS", "1"),
        ("CRONIUM_NATS_URL", ",,"),
        ("CRONIUM_NATS_URL", "127.0.0.1:4222"),
        ("CRONIUM_NATS_URL", "nats://127.0.0.1:4222,http://evil"),
        ("CRONIUM_NATS_URL", "nats://"),
    ],
)
def test_bad_values_are_refused(env: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Invalid or unknown settings raise a validation error instead of being ignored."""
    monkeypatch.setenv(env, value)
    with pytest.raises(ValidationError):
        load_settings()


def test_cluster_seeds_and_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRONIUM_NATS_URL", "nats://10.0.0.1:4222, tls://10.0.0.2:4222")
    monkeypatch.setenv("CRONIUM_NATS_USER", "cronium-producer")
    monkeypatch.setenv("CRONIUM_NATS_PASSWORD", "s3cret-pw")
    s = load_settings()
    assert s.nats_url == "nats://10.0.0.1:4222,tls://10.0.0.2:4222"
    data = s.redacted()
    assert data["nats_password"] == "**********" and "s3cret" not in str(data)
    assert data["nats_user"] == "cronium-producer"


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.toml"):
        load_settings(tmp_path / "nope.toml")
