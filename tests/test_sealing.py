"""The sealing service against a real nats-server: who may store what, and hostile requests."""

from __future__ import annotations

import asyncio
import base64
import json

import msgspec
import nats
import nats.errors
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from consumers.secrets.service import SecretsService
from cronium_bus.bus import Bus
from cronium_bus.errors import CroniumError
from cronium_bus.secrets import box_from, get_secret, grants_of, names_for
from tests.conftest import Embedded


def _set(name: str, value: bytes, **extra: object) -> bytes:
    body = {"name": name, "value_b64": base64.b64encode(value).decode(), **extra}
    return json.dumps(body).encode()


async def test_a_user_stores_only_their_own(bus: Bus) -> None:
    """A user's secret lands under their name; shared secrets and servers' keys are an admin's."""
    service = SecretsService(bus)
    key = await service.handle("cronium.ctl.secrets.user.alice.set", _set("API", b"value-1"))
    assert key == "u.alice.API"
    assert await get_secret(bus.js, box_from(bus.settings), "u.alice.API") == b"value-1"
    for body in (_set("X", b"v", shared=True), _set("ssh-key.web1", b"k")):
        with pytest.raises(CroniumError) as refused:
            await service.handle("cronium.ctl.secrets.user.alice.set", body)
        assert refused.value.kind == "permission"
    shared = await service.handle(
        "cronium.ctl.secrets.admin.admin.set", _set("TEAM", b"team", shared=True, grant=["bob"])
    )
    assert shared == "shared.TEAM" and await grants_of(bus.js, "TEAM") == ["bob"]
    assert await names_for(bus.js, "bob") == ["TEAM (shared)"]
    assert await names_for(bus.js, "alice") == ["API"]
    assert await service.handle("cronium.ctl.secrets.user.alice.rm", b'{"name": "API"}')
    assert await names_for(bus.js, "alice") == []


@pytest.mark.parametrize(
    ("subject", "body", "reason"),
    [
        ("cronium.ctl.secrets.root.alice.set", _set("A", b"v"), "is not cronium.ctl"),
        ("cronium.ctl.secrets.user.a=b.set", _set("A", b"v"), "is not cronium.ctl"),
        ("cronium.ctl.secrets.user.alice", _set("A", b"v"), "is not cronium.ctl"),
        ("cronium.ctl.secrets.user.alice.steal", b"{}", "unknown action"),
        ("cronium.ctl.secrets.user.alice.set", b"not json", "malformed set"),
        ("cronium.ctl.secrets.user.alice.set", b'{"name": "A"}', "malformed set"),
        ("cronium.ctl.secrets.user.alice.set", _set("A", b"v", owner="bob"), "malformed set"),
        ("cronium.ctl.secrets.user.alice.set", b'{"name":"A","value_b64":"%%%"}', "not base64"),
        ("cronium.ctl.secrets.user.alice.set", _set("a/b", b"v"), "not a valid secret name"),
        ("cronium.ctl.secrets.user.alice.set", _set("A", b""), "shorter than 3"),
        ("cronium.ctl.secrets.user.alice.set", _set("A", b"ab"), "shorter than 3"),
        ("cronium.ctl.secrets.user.alice.set", _set("A", b"long-line\nab"), "a line of the"),
        ("cronium.ctl.secrets.user.alice.set", _set("a..b", b"value"), "not a valid"),
        ("cronium.ctl.secrets.user.alice.set", _set("a.", b"value"), "not a valid"),
        ("cronium.ctl.secrets.user.alice.set", _set("A", b"x" * 40_000), "bytes"),
        ("cronium.ctl.secrets.user.alice.set", b"[" * 5000 + b"]" * 5000, "malformed set"),
        ("cronium.ctl.secrets.user.alice.list", b'{"all": true}', "malformed list"),
    ],
)
async def test_hostile_requests_are_refused_with_a_reason(
    bus: Bus, subject: str, body: bytes, reason: str
) -> None:
    """Malformed subjects, bodies, names, sizes and nesting are refused, naming the problem."""
    with pytest.raises(CroniumError, match=reason):
        await SecretsService(bus).handle(subject, body)


@hsettings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    tokens=st.lists(st.text(min_size=0, max_size=12), min_size=0, max_size=8),
    body=st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
            max_leaves=20,
        ).map(lambda v: json.dumps(v).encode()),
    ),
)
async def test_any_request_is_answered_never_raised_past_the_service(
    bus: Bus, tokens: list[str], body: bytes
) -> None:
    """Whatever subject and body arrive, handle() stores something or raises a CroniumError."""
    subject = ".".join(["cronium", "ctl", "secrets", *tokens])
    try:
        await SecretsService(bus).handle(subject, body)
    except CroniumError as exc:
        outcome = exc.message
    else:
        outcome = "answered"
    assert outcome


async def test_over_nats_a_refusal_is_a_reply(bus: Bus, sealer: Embedded) -> None:
    """A refused request gets an answer with kind, reason and hint; the service keeps serving;
    a user's request whose reply subject is not their own inbox gets no answer at all (a reply
    subject is not checked by the server: it could name a bucket's subject)."""
    assert bus.settings.creds is not None
    alice = await nats.connect(
        bus.settings.nats_url, user_credentials=str(bus.settings.creds), inbox_prefix="_INBOX_alice"
    )
    try:
        bad = await alice.request("cronium.ctl.secrets.user.alice.set", b"{", timeout=10)
        reply = msgspec.json.decode(bad.data)
        assert reply["ok"] is False and reply["kind"] == "validation"
        assert "malformed" in reply["error"]
        good = await alice.request(
            "cronium.ctl.secrets.user.alice.set", _set("OK", b"fine"), timeout=10
        )
        assert msgspec.json.decode(good.data) == {"ok": True, "result": "u.alice.OK"}
        with pytest.raises(nats.errors.TimeoutError):
            await bus.nc.request("cronium.ctl.secrets.user.alice.list", b"{}", timeout=2)
        target = "$KV.cronium_secrets.u.alice.OK"
        await alice.publish("cronium.ctl.secrets.user.alice.list", b"{}", reply=target)
        await alice.flush()
        await asyncio.sleep(0.5)
        assert await get_secret(bus.js, box_from(bus.settings), "u.alice.OK") == b"fine"
    finally:
        await alice.close()
