"""Secrets: encrypted at rest, delivered through the runtime API only, masked in every log."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import docker
import docker.errors
import pytest

from cronium_bus.bus import Bus
from cronium_bus.cli.watch import Watch
from cronium_bus.secrets import (
    SecretBox,
    SecretError,
    box_from,
    ensure_key_file,
    get_secret,
    owned_key,
    put_secret,
    set_grants,
    shared_key,
    usable_key,
)
from cronium_bus.settings import Settings, load_settings
from cronium_bus.subjects import SECRETS_BUCKET
from tests.conftest import Embedded
from tests.helpers import requested, run_code, wait_final
from tests.test_container_runner import lines_of

SECRET = "s3cr3t-Value-42!"


def test_box_round_trip_and_binding() -> None:
    """A sealed value opens only with the same key and under the same name."""
    box = SecretBox("k" * 32)
    sealed = box.seal("DB_PASSWORD", b"pw")
    assert b"pw" not in sealed
    assert box.open("DB_PASSWORD", sealed) == b"pw"
    with pytest.raises(SecretError, match="cannot be decrypted"):
        box.open("OTHER", sealed)
    with pytest.raises(SecretError, match="cannot be decrypted"):
        SecretBox("j" * 32).open("DB_PASSWORD", sealed)
    with pytest.raises(SecretError, match="too short"):
        SecretBox("short")


async def test_stored_encrypted_and_names_checked(bus: Bus, settings: Settings) -> None:
    """What NATS stores is ciphertext; bad names, empty and huge values are refused."""
    box = box_from(settings)
    await put_secret(bus.js, box, "API_TOKEN", SECRET.encode())
    raw = await (await bus.js.key_value(SECRETS_BUCKET)).get("API_TOKEN")
    assert raw.value is not None and SECRET.encode() not in raw.value
    assert await get_secret(bus.js, box, "API_TOKEN") == SECRET.encode()
    for name, value, message in [
        ("a/b", b"x", "not a valid"),
        ("X", b"", "shorter than 3"),
        ("X", b" ab ", "shorter than 3"),
        (".x", b"xyz", "not a valid"),
        ("Y", b"x" * 40000, "limit"),
    ]:
        with pytest.raises(SecretError, match=message):
            await put_secret(bus.js, box, name, value)
    with pytest.raises(SecretError, match="does not exist"):
        await get_secret(bus.js, box, "MISSING")


@pytest.mark.docker
async def test_secret_is_masked_in_live_log_and_archive(
    bus: Bus, settings: Settings, runner: Embedded
) -> None:
    """A printed secret is masked, even when printed in two pieces across reads; it is not in
    the environment or in docker inspect."""
    await put_secret(bus.js, box_from(settings), owned_key("tester", "API_TOKEN"), SECRET.encode())
    code = """
import os, sys, time
s = cronium.secret("API_TOKEN")
print("token is", s, flush=True)
sys.stdout.write(s[:5]); sys.stdout.flush(); time.sleep(0.3)
sys.stdout.write(s[5:] + "\\n"); sys.stdout.flush()
print("in env:", any(s in v for v in os.environ.values()))
print("on disk:", any(s in open(os.path.join("/cronium", f), errors="ignore").read()
                      for f in os.listdir("/cronium") if f != "api.sock"))
time.sleep(1)
"""
    event = requested(code, secrets=("API_TOKEN",))
    import io

    live_out = io.StringIO()
    watch = Watch(bus, event.execution_id, out=live_out, err=io.StringIO())
    await watch.start()
    await bus.publish(event)
    client = docker.from_env()
    inspected = ""
    for _ in range(200):  # once the script has the secret, inspect every Cronium container
        if "token is" in live_out.getvalue():
            found = client.api.containers(filters={"label": "org.cronium.execution"})
            for c in found:
                with contextlib.suppress(docker.errors.NotFound):  # removed meanwhile
                    inspected += str(client.api.inspect_container(c["Id"]))
            break
        await asyncio.sleep(0.05)
    state = await watch.wait_final()
    await watch.close()
    client.close()
    assert state.status == "succeeded"
    assert inspected and SECRET not in inspected
    live = live_out.getvalue()
    stored = "\n".join((await lines_of(bus, event.execution_id))["stdout"])
    for text in (live, stored):
        assert SECRET not in text
        assert "token is ********" in text
        assert "********" in text.splitlines()[1]
        assert "in env: False" in text and "on disk: False" in text


@pytest.mark.docker
async def test_secret_of_another_execution_is_not_readable(
    bus: Bus, settings: Settings, runner: Embedded
) -> None:
    """An execution that did not name a secret cannot read it."""
    key = owned_key("tester", "OTHER_TEAM")
    await put_secret(bus.js, box_from(settings), key, b"their-secret-value")
    state = await run_code(
        bus,
        'try:\n    print(cronium.secret("OTHER_TEAM"))\n'
        'except Exception as e:\n    print("refused:", e)',
    )
    assert state.status == "succeeded"
    out = (await lines_of(bus, state.execution_id))["stdout"]
    assert out[0].startswith("refused: secret OTHER_TEAM was not requested")


@pytest.mark.docker
async def test_a_secret_not_yours_is_rejected_naming_it(bus: Bus, runner: Embedded) -> None:
    """A request naming a secret its owner may not use — missing, another user's, or shared
    without a grant — is rejected before anything runs, naming it, not saying which case."""
    box = box_from(bus.settings)
    await put_secret(bus.js, box, owned_key("alice", "ALICES"), b"alice-only")
    await put_secret(bus.js, box, shared_key("TEAM"), b"for-the-team")
    await set_grants(bus.js, "TEAM", ["bob"])
    for name in ("NOPE", "ALICES", "TEAM"):
        event = requested("print(1)", secrets=(name,), user="mallory")
        await bus.publish(event)
        state = await wait_final(bus, event.execution_id)
        assert state.status == "rejected"
        assert state.error is not None and state.error.kind == "permission"
        assert state.error.message == f"secret {name!r} is not one of yours or shared with you"
        assert f"cronium secret set {name}" in state.error.hint
    granted = requested("print(cronium.secret('TEAM'))", secrets=("TEAM",), user="bob")
    await bus.publish(granted)
    assert (await wait_final(bus, granted.execution_id)).status == "succeeded"
    assert await usable_key(bus.js, "alice", "ALICES") == owned_key("alice", "ALICES")
    assert await usable_key(bus.js, "bob", "ALICES") is None
    await set_grants(bus.js, "TEAM", ["*"])
    assert await usable_key(bus.js, "mallory", "TEAM") == shared_key("TEAM")


def test_key_file_is_made_once_private_and_used(tmp_path: Path) -> None:
    """`cronium up`'s key file: 64 hex characters, 0600, never replaced, made private again if it
    was copied in readable; with no secret_key set the box uses it."""
    key = ensure_key_file(tmp_path)
    first = key.read_text()
    assert key.stat().st_mode & 0o777 == 0o600 and len(first.strip()) == 64
    int(first, 16)
    assert ensure_key_file(tmp_path).read_text() == first
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]  # no temporary left behind
    key.chmod(0o644)
    ensure_key_file(tmp_path)
    assert key.stat().st_mode & 0o777 == 0o600
    settings = load_settings(nats_url="nats://127.0.0.1:1", data_dir=tmp_path)
    sealed = box_from(settings).seal("N", b"v")
    assert SecretBox(first.strip()).open("N", sealed) == b"v"
    missing = load_settings(nats_url="nats://127.0.0.1:1", data_dir=tmp_path / "none")
    with pytest.raises(SecretError, match="cronium up"):
        box_from(missing)
