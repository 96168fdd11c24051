"""Two users on one `cronium up`: each acts only as themselves, on their own executions.

alice and bob are real NATS identities issued by `cronium user add`; nats-server enforces what
they may publish and read. The CLI is driven as they would; a raw nats-py client does what the CLI
never would (subscribe to everything, publish on alice's subjects, touch the service's consumers).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.js.api import ConsumerConfig

from cronium_bus.codec import encode
from cronium_bus.events import CancelRequested, utcnow
from cronium_bus.ids import new_id
from tests.test_cli import Stack, stack  # noqa: F401 - the module's own `cronium up`

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def people(stack: Stack) -> dict[str, Path]:  # noqa: F811 - the imported fixture
    """alice and bob, role user; their .creds files."""
    out: dict[str, Path] = {}
    for name in ("alice", "bob"):
        added = stack.cli("user", "add", name)
        assert added.returncode == 0, added.stderr
        out[name] = Path(added.stdout.strip())
    return out


def as_(stack: Stack, creds: Path, *args: str, **kw: str) -> tuple[int, str, str]:  # noqa: F811
    done = stack.cli(*args, "--creds", str(creds), **kw)  # type: ignore[arg-type]
    return done.returncode, done.stdout, done.stderr


def test_a_user_runs_follows_and_cancels_their_own(
    stack: Stack,  # noqa: F811
    people: dict[str, Path],
) -> None:
    """alice's run, live follow, show and cancel work as before, as alice."""
    code, out, err = as_(stack, people["alice"], "run", "--runtime", "bash", "-c", "echo mine")
    assert (code, out) == (0, "mine\n"), err
    code, out, err = as_(
        stack, people["alice"], "run", "--detach", "--runtime", "bash", "-c", "sleep 30"
    )
    assert code == 0, err
    execution_id = out.strip()
    code, out, err = as_(stack, people["alice"], "show", execution_id, "--json")
    assert code == 0 and json.loads(out)["state"]["user"] == "alice", err
    code, out, err = as_(stack, people["alice"], "cancel", execution_id, "--wait")
    assert code == 0 and "cancelled" in out, err


def test_bob_cannot_see_follow_or_cancel_alices(
    stack: Stack,  # noqa: F811
    people: dict[str, Path],
) -> None:
    """bob's show, logs, follow and cancel of alice's execution exit 77 without saying whether
    it exists; it keeps running and ends as alice's script says; history shows each user only
    their own."""
    code, out, err = as_(
        stack,
        people["alice"],
        "run",
        "--detach",
        "--runtime",
        "bash",
        "-c",
        "echo secret-of-alice; sleep 3; exit 4",
    )
    assert code == 0, err
    alices = out.strip()
    for command in (["show", alices], ["logs", alices], ["logs", alices, "--follow"]):
        code, out, err = as_(stack, people["bob"], *command)
        assert code == 77, (command, err)
        assert "secret-of-alice" not in out + err
    code, _, err = as_(stack, people["bob"], "cancel", alices)
    assert code == 77, err
    code, _, err = as_(stack, people["bob"], "history", "--user", "alice")
    assert code == 77 and "only their own history" in err
    code, out, err = as_(stack, people["alice"], "show", alices, "--json")
    deadline = time.monotonic() + 60
    while json.loads(out)["state"]["status"] not in ("failed", "succeeded", "cancelled"):
        assert time.monotonic() < deadline, out
        time.sleep(0.5)
        code, out, err = as_(stack, people["alice"], "show", alices, "--json")
    state = json.loads(out)["state"]
    assert (state["status"], state["exit_code"]) == ("failed", 4)
    # history: alice finds her execution once projected; bob's history never lists it
    deadline = time.monotonic() + 60
    while True:
        code, out, err = as_(stack, people["alice"], "history", "--json", "--limit", "1000")
        assert code == 0, err
        mine = {r["execution_id"] for r in json.loads(out)}
        if alices in mine or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert alices in mine and {r["user"] for r in json.loads(out)} == {"alice"}
    code, out, err = as_(stack, people["bob"], "history", "--json", "--limit", "1000")
    assert code == 0 and alices not in out and "alice" not in out, err


def test_a_user_cannot_act_as_someone_else(
    stack: Stack,  # noqa: F811
    people: dict[str, Path],
) -> None:
    """`--user alice` as bob is refused (77); variables a script of alice's set are not bob's."""
    code, _, err = as_(
        stack, people["bob"], "run", "--user", "alice", "--runtime", "bash", "-c", "true"
    )
    assert code == 77 and "may not act as alice" in err
    set_var = "cronium_set_variable shared-key from-alice && echo set"
    code, out, err = as_(stack, people["alice"], "run", "--runtime", "bash", "-c", set_var)
    assert (code, out) == (0, "set\n"), err
    get_var = 'echo "got=$(cronium_get_variable shared-key)"'
    code, out, err = as_(stack, people["bob"], "run", "--runtime", "bash", "-c", get_var)
    assert code == 0 and "from-alice" not in out, (out, err)


def test_a_servers_key_is_never_a_scripts_secret(
    stack: Stack,  # noqa: F811
    people: dict[str, Path],
) -> None:
    """A request naming `ssh-key.<server>` is rejected (exit 2) naming it."""
    code, _, err = as_(
        stack,
        people["bob"],
        "run",
        "--secret",
        "ssh-key.web1",
        "--runtime",
        "bash",
        "-c",
        "true",
    )
    assert code == 2 and "ssh-key.web1" in err and "private key" in err


def _cancel_claiming_alice(execution_id: str) -> CancelRequested:
    """A cancel bob writes, whose body says it is alice's."""
    return CancelRequested(
        event_id=new_id("ev"),
        time=utcnow(),
        execution_id=execution_id,
        correlation_id=execution_id,
        producer="bob",
        user="alice",
    )


async def _client(stack: Stack, creds: Path, name: str, errors: list[str]) -> nats.NATS:  # noqa: F811
    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    return await nats.connect(
        stack.url,
        user_credentials=str(creds),
        inbox_prefix=f"_INBOX_{name}",
        allow_reconnect=False,
        error_cb=on_error,
    )


async def test_a_raw_client_of_bobs_gets_nothing_of_alices(
    stack: Stack,  # noqa: F811
    people: dict[str, Path],
) -> None:
    """bob's own nats-py client: a subscription to `cronium.>` or to alice's subjects is refused
    and receives nothing while alice runs; publishing on alice's subjects, creating a consumer
    on them, or pulling from, rewriting or deleting the dispatcher's durable consumer is
    refused; none of it changes what alice's run does."""
    errors: list[str] = []
    nc = await _client(stack, people["bob"], "bob", errors)
    got: list[str] = []

    async def collect(msg: nats.aio.msg.Msg) -> None:
        got.append(msg.subject)

    try:
        await nc.subscribe("cronium.>", cb=collect)
        await nc.subscribe("cronium.exec.alice.>", cb=collect)
        await nc.subscribe("_INBOX_alice.>", cb=collect)
        fake = _cancel_claiming_alice("ex_whatever")
        await nc.publish("cronium.exec.alice.ex_whatever.cancel_requested", encode(fake))
        js = nc.jetstream(timeout=2)
        for attempt in (
            js.add_consumer(
                "CRONIUM_EXEC",
                ConsumerConfig(name="peek", filter_subject="cronium.exec.alice.>"),
            ),
            js.add_consumer(
                "CRONIUM_EXEC",
                ConsumerConfig(name="dispatcher", filter_subject="cronium.exec.bob.>"),
            ),
            js.delete_consumer("CRONIUM_EXEC", "dispatcher"),
            nc.request("$JS.API.CONSUMER.MSG.NEXT.CRONIUM_EXEC.dispatcher", b"1", timeout=2),
            js.delete_stream("CRONIUM_EXEC"),
            # a push consumer on his own subjects delivering into a bucket or onto alice's
            # subjects (nats-server does not check a deliver subject): no consumer API at all
            js.add_consumer(
                "CRONIUM_EXEC",
                ConsumerConfig(
                    name="hop",
                    filter_subject="cronium.exec.bob.>",
                    deliver_subject="cronium.exec.alice.ex_hop.requested",
                ),
            ),
            # the payload store (everyone's large inputs and outputs)
            nc.request("$JS.API.STREAM.MSG.GET.OBJ_cronium_payloads", b'{"seq": 1}', timeout=2),
            nc.request("$O.cronium_payloads.C.x", b"", timeout=2, headers={"Nats-Rollup": "all"}),
        ):
            with pytest.raises((nats.errors.Error, TimeoutError)):
                await attempt
        await nc.flush()
        code, out, err = await asyncio.to_thread(
            as_, stack, people["alice"], "run", "--runtime", "bash", "-c", "echo alice-ran"
        )
        assert (code, out) == (0, "alice-ran\n"), err
        await asyncio.sleep(0.5)
        assert got == []
        refused = " ".join(errors)
        assert 'subscription to "cronium.>"' in refused
        assert 'subscription to "cronium.exec.alice.>"' in refused
        assert 'publish to "cronium.exec.alice.ex_whatever.cancel_requested"' in refused
        assert "$js.api.consumer.create.cronium_exec.peek" in refused
        assert "$js.api.consumer.delete.cronium_exec.dispatcher" in refused
        assert "$js.api.consumer.msg.next.cronium_exec.dispatcher" in refused
        assert "$js.api.consumer.create.cronium_exec.hop" in refused
        assert "$js.api.stream.msg.get.obj_cronium_payloads" in refused
        # a request to the sealing service with alice's bucket key as its reply subject
        await nc.publish(
            "cronium.ctl.secrets.user.bob.list", b"{}", reply="$KV.cronium_secrets.u.alice.API"
        )
        await nc.flush()
    finally:
        await nc.close()
    assert stack.cli("status").returncode == 0  # the dispatcher's consumer is still there


def test_anothers_event_on_your_own_subject_changes_nothing(
    stack: Stack,  # noqa: F811
    people: dict[str, Path],
) -> None:
    """What bob may publish (his own request subjects) cannot carry events about alice's run:
    a body naming alice on bob's subject is not authentic and is rejected as bob's."""
    code, out, err = as_(stack, people["alice"], "run", "--runtime", "bash", "-c", "exit 3")
    assert code == 3, err
    _ = out

    async def forge() -> None:
        errors: list[str] = []
        nc = await _client(stack, people["bob"], "bob", errors)
        try:
            fake = _cancel_claiming_alice("ex_forged_by_bob")
            js = nc.jetstream(timeout=5)
            await js.publish("cronium.exec.bob.ex_forged_by_bob.cancel_requested", encode(fake))
        finally:
            await nc.close()

    asyncio.run(forge())
    code, out, err = as_(stack, people["alice"], "show", "ex_forged_by_bob")
    assert code == 77, err
    assert stack.cli("show", "ex_forged_by_bob").returncode == 1  # not authentic: no execution


def test_secrets_belong_to_their_owner_or_are_shared_by_grant(
    stack: Stack,  # noqa: F811
    people: dict[str, Path],
) -> None:
    """alice's secret serves alice's runs only: bob's request naming it is rejected (exit 2)
    naming it; an admin's shared secret serves the users it is granted to; a user cannot create
    shared secrets or servers' keys (77); nobody needs the key to set a secret."""
    code, _, err = as_(stack, people["alice"], "secret", "set", "API", input="alice-value\n")
    assert code == 0, err
    code, out, err = as_(
        stack,
        people["alice"],
        "run",
        "--secret",
        "API",
        "--runtime",
        "bash",
        "-c",
        'test "$(cronium_secret API)" = alice-value && echo ok',
    )
    assert (code, out) == (0, "ok\n"), err
    code, out, err = as_(
        stack,
        people["bob"],
        "run",
        "--secret",
        "API",
        "--runtime",
        "bash",
        "-c",
        "cronium_secret API",
    )
    assert code == 2 and "secret 'API' is not one of yours or shared with you" in err
    assert "alice-value" not in out + err
    shared = stack.cli("secret", "set", "TEAM", "--shared", "--grant", "bob", input="team\n")
    assert shared.returncode == 0, shared.stderr
    code, out, err = as_(
        stack,
        people["bob"],
        "run",
        "--secret",
        "TEAM",
        "--runtime",
        "bash",
        "-c",
        'test "$(cronium_secret TEAM)" = team && echo shared-ok',
    )
    assert (code, out) == (0, "shared-ok\n"), err
    code, out, _ = as_(stack, people["bob"], "secret", "list")
    assert "TEAM (shared)" in out and "API" not in out
    code, out, err = as_(
        stack, people["alice"], "run", "--secret", "TEAM", "--runtime", "bash", "-c", "true"
    )
    assert code == 2 and "TEAM" in err
    for refused in (
        ["secret", "set", "MINE", "--shared"],
        ["secret", "set", "ssh-key.web9"],
    ):
        code, _, err = as_(stack, people["bob"], *refused, input="x\n")
        assert code == 77, (refused, err)


def test_servers_belong_to_whoever_adds_them(
    stack: Stack,  # noqa: F811
    people: dict[str, Path],
    tmp_path: Path,
) -> None:
    """alice adds a server as herself and runs on it; bob's run naming it is rejected (exit 2)
    naming it, his list does not show it and he cannot remove it (77); an admin's shared server
    serves only the users it grants."""
    import asyncssh

    from tests.sshd import Sshd

    client = asyncssh.generate_private_key("ssh-ed25519")
    key_file = tmp_path / "id_ed25519"
    key_file.write_bytes(client.export_private_key())
    daemon = Sshd(tmp_path / "sshd", client.export_public_key())
    daemon.start()
    try:
        url = f"ssh://root@127.0.0.1:{daemon.port}"
        add = ["servers", "add", "web1", url, "--key", str(key_file)]
        code, out, err = as_(stack, people["alice"], *add, "--host-key", daemon.host_key_line)
        assert code == 0 and "added (yours)" in out, err

        def on(person: str, target: str, code: str) -> tuple[int, str, str]:
            return as_(stack, people[person], "run", "--target", target, "--runtime", "bash",
                       "-c", code)  # fmt: skip

        code, out, err = on("alice", "web1", "whoami")
        assert (code, out) == (0, "[web1] root\n"), err
        code, out, err = on("bob", "web1", "whoami")
        assert code == 2 and "server 'web1' is not one of yours or shared with you" in err
        code, out, err = as_(stack, people["bob"], "servers", "list", "--json")
        assert (code, json.loads(out)) == (0, []), err
        code, _, err = as_(stack, people["bob"], "servers", "remove", "web1")
        assert code == 77, err
        code, _, err = as_(
            stack, people["bob"], *add, "--host-key", daemon.host_key_line, "--shared"
        )
        assert code == 77 and "only an admin" in err

        shared = stack.cli(
            "servers", "add", "team", url, "--key", str(key_file),
            "--host-key", daemon.host_key_line, "--shared", "--grant", "bob",
        )  # fmt: skip
        assert shared.returncode == 0, shared.stderr
        code, out, err = on("bob", "team", "echo ok")
        assert (code, out) == (0, "[team] ok\n"), err
        code, _, err = on("alice", "team", "true")
        assert code == 2 and "'team'" in err
        code, out, err = as_(stack, people["alice"], "servers", "list", "--json")
        assert [row["name"] for row in json.loads(out)] == ["web1"], err
        code, _, err = as_(stack, people["alice"], "servers", "remove", "web1")
        assert code == 0, err
    finally:
        daemon.stop()


async def test_an_admin_publishes_requests_but_never_what_runners_say(
    stack: Stack,  # noqa: F811
    tmp_path: Path,
) -> None:
    """An `--role admin` identity may request and cancel for anyone, but a terminal event, a
    `started` or a log chunk is refused by nats-server: only the service says what happened;
    nor may it purge, delete from or delete the event streams, or write or purge a bucket itself."""
    out = tmp_path / "carol.creds"
    added = await asyncio.to_thread(
        stack.cli, "user", "add", "carol", "--role", "admin", "--out", str(out)
    )
    assert added.returncode == 0, added.stderr
    errors: list[str] = []
    nc = await _client(stack, out, "carol", errors)
    try:
        for kind in ("succeeded", "started", "failed"):
            await nc.publish(f"cronium.exec.alice.ex_any.{kind}", b"{}")
        await nc.publish("cronium.logs.alice.ex_any", b"{}")
        await nc.publish("cronium.exec.alice.ex_any.cancel_requested", b"{}")
        js = nc.jetstream(timeout=2)
        for rewrite in (
            js.purge_stream("CRONIUM_EXEC"),
            js.delete_msg("CRONIUM_EXEC", 1),
            js.delete_stream("CRONIUM_LOGS"),
            nc.request("$KV.cronium_servers.u.alice.web1", b"{}", timeout=2),
            js.purge_stream("KV_cronium_secrets"),  # every secret, gone in one call
            js.delete_msg("KV_cronium_variables", 1),
        ):
            with pytest.raises((nats.errors.Error, nats.js.errors.Error, TimeoutError)):
                await rewrite
        await nc.flush()
        await asyncio.sleep(0.3)
    finally:
        await nc.close()
    refused = " ".join(errors)
    for kind in ("succeeded", "started", "failed"):
        assert f'publish to "cronium.exec.alice.ex_any.{kind}"' in refused
    assert 'publish to "cronium.logs.alice.ex_any"' in refused
    assert "$js.api.stream.purge.cronium_exec" in refused
    assert "$js.api.stream.msg.delete.cronium_exec" in refused
    assert "$kv.cronium_servers.u.alice.web1" in refused
    assert "$js.api.stream.purge.kv_cronium_secrets" in refused
    assert "$js.api.stream.msg.delete.kv_cronium_variables" in refused
    assert "cancel_requested" not in refused


def test_message_ids_taken_by_another_user_lose_nothing(
    stack: Stack,  # noqa: F811
    people: dict[str, Path],
) -> None:
    """bob, guessing ids alice will use, publishes first on his own subject under the message
    ids of her run's events (queued, started, terminal) and of a second run's request: her run
    still ends as her script says, and her request under a taken id is refused (exit 2) rather
    than followed forever."""
    ids = {"run": new_id("ex"), "squat": new_id("ex")}

    async def squat() -> None:
        nc = await _client(stack, people["bob"], "bob", [])
        try:
            js = nc.jetstream(timeout=5)
            for msg_id in (
                f"{ids['run']}:1:queued",
                f"{ids['run']}:1:started",
                f"{ids['run']}:1:terminal",
                ids["squat"],
            ):
                await js.publish(
                    f"cronium.exec.bob.{new_id('ex')}.requested",
                    b"junk",
                    headers={"Nats-Msg-Id": msg_id},
                )
        finally:
            await nc.close()

    asyncio.run(squat())
    code, out, err = as_(
        stack, people["alice"], "run", "--id", ids["run"], "--runtime", "bash", "-c",
        "echo still-mine; exit 3",
    )  # fmt: skip
    assert (code, out) == (3, "still-mine\n"), err
    code, out, err = as_(stack, people["alice"], "show", ids["run"], "--json")
    assert code == 0 and json.loads(out)["state"]["exit_code"] == 3, err
    code, out, err = as_(
        stack, people["alice"], "run", "--id", ids["squat"], "--runtime", "bash", "-c", "true"
    )
    assert code == 2 and "already taken" in err, (out, err)
