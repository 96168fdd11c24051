"""Servers have owners: the sealing service stores them per owner and refuses the rest.

Against a real nats-server; the end-to-end run on a real sshd as two users is in test_tenancy.
"""

from __future__ import annotations

import base64
import json

import asyncssh
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from consumers.secrets.service import SecretsService
from cronium_bus.bus import Bus
from cronium_bus.errors import CroniumError
from cronium_bus.secrets import box_from, get_secret
from cronium_bus.servers import list_servers, resolve_server

KEY = asyncssh.generate_private_key("ssh-ed25519").export_private_key()
HOST_KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()


def _add(name: str, **extra: object) -> bytes:
    body: dict[str, object] = {
        "name": name,
        "user": "deploy",
        "host": "127.0.0.1",
        "port": 2222,
        "known_hosts": f"[127.0.0.1]:2222 {HOST_KEY}\n",
        "key_b64": base64.b64encode(KEY).decode(),
        **extra,
    }
    return json.dumps(body).encode()


async def test_a_users_server_is_theirs_and_a_shared_one_serves_its_grants(bus: Bus) -> None:
    """alice's web1 resolves for alice only; its key is sealed under her record; an admin's
    shared server serves the users it grants; removing another's server is refused."""
    service = SecretsService(bus)
    added = await service.handle("cronium.ctl.servers.user.alice.add", _add("web1"))
    assert added == {"name": "web1", "address": "deploy@127.0.0.1:2222", "shared": False}
    mine = await resolve_server(bus.js, "alice", "web1")
    assert mine is not None and mine.owner == "alice"
    assert mine.key_secret == "ssh-key.u.alice.web1"
    assert await get_secret(bus.js, box_from(bus.settings), mine.key_secret) == KEY
    assert await resolve_server(bus.js, "bob", "web1") is None
    assert await service.handle("cronium.ctl.servers.user.bob.list", b"{}") == []
    with pytest.raises(CroniumError, match="not one of yours") as refused:
        await service.handle("cronium.ctl.servers.user.bob.rm", b'{"name": "web1"}')
    assert refused.value.kind == "permission"
    with pytest.raises(CroniumError, match="only an admin") as refused:
        await service.handle("cronium.ctl.servers.user.bob.add", _add("team", shared=True))
    assert refused.value.kind == "permission"

    await service.handle(
        "cronium.ctl.servers.admin.root.add", _add("team", shared=True, grant=["bob"])
    )
    team = await resolve_server(bus.js, "bob", "team")
    assert team is not None and team.owner == "" and team.key_secret == "ssh-key.shared.team"
    assert await resolve_server(bus.js, "alice", "team") is None
    rows = await service.handle("cronium.ctl.servers.user.bob.list", b"{}")
    assert [(r["name"], r["owner"]) for r in rows] == [("team", "(shared)")]
    everyone = {(s.name, s.owner) for s in await list_servers(bus.js)}
    assert {("web1", "alice"), ("team", "")} <= everyone

    # bob's own server of the same name comes first for bob, and only for bob
    await service.handle("cronium.ctl.servers.user.bob.add", _add("web1", port=2200))
    bobs = await resolve_server(bus.js, "bob", "web1")
    assert bobs is not None and (bobs.owner, bobs.port) == ("bob", 2200)
    mine = await resolve_server(bus.js, "alice", "web1")
    assert mine is not None and mine.port == 2222

    assert await service.handle("cronium.ctl.servers.user.alice.rm", b'{"name": "web1"}')
    assert await resolve_server(bus.js, "alice", "web1") is None
    assert await resolve_server(bus.js, "bob", "web1") is not None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (_add("w", key_b64=base64.b64encode(b"not a key").decode()), "not an unencrypted private"),
        (_add("w", key_b64="%%%"), "not base64"),
        (_add("w", host="evil host"), "not a host"),
        (_add("w", host=""), "not a host"),
        (_add("w", port=0), "port 1-65535"),
        (_add("w", user="a b"), "user must be"),
        (_add("w", known_hosts=""), "known_hosts must be"),
        (_add("w", known_hosts="x" * 70_000), "known_hosts must be"),
        (_add("w", grant=["bob"]), "--grant needs --shared"),
        (_add("w/x"), "not a valid server name"),
        (_add("w", owner="bob"), "malformed add"),
        (b"[" * 5000 + b"]" * 5000, "malformed add"),
        (b"{", "malformed add"),
    ],
)
async def test_hostile_server_requests_are_refused_with_a_reason(
    bus: Bus, body: bytes, reason: str
) -> None:
    """Malformed records, keys, hosts, sizes and nesting are refused, naming the problem, and
    store nothing."""
    with pytest.raises(CroniumError, match=reason):
        await SecretsService(bus).handle("cronium.ctl.servers.user.mallory.add", body)
    assert await list_servers(bus.js, "mallory") == []


@hsettings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    action=st.sampled_from(["add", "rm", "list", "x"]),
    body=st.one_of(
        st.binary(max_size=300),
        st.fixed_dictionaries(
            {},
            optional={
                "name": st.text(max_size=70),
                "user": st.text(max_size=10),
                "host": st.text(max_size=30),
                "port": st.integers(),
                "known_hosts": st.text(max_size=40),
                "key_b64": st.text(max_size=40),
                "shared": st.booleans(),
                "grant": st.lists(st.text(max_size=8), max_size=3),
            },
        ).map(lambda v: json.dumps(v).encode()),
    ),
)
async def test_any_server_request_is_answered_and_never_lands_for_someone_else(
    bus: Bus, action: str, body: bytes
) -> None:
    """Whatever arrives from mallory, handle() answers or raises a CroniumError, and nothing
    appears under another owner's name or as a shared server."""
    before = {(s.owner, s.name) for s in await list_servers(bus.js)}
    try:
        await SecretsService(bus).handle(f"cronium.ctl.servers.user.mallory.{action}", body)
    except CroniumError as exc:
        refusal = exc.message
    else:
        refusal = "answered"
    assert refusal
    after = {(s.owner, s.name) for s in await list_servers(bus.js)}
    assert {owner for owner, _ in after - before} <= {"mallory"}
    assert {(o, n) for o, n in before - after if o != "mallory"} == set()
