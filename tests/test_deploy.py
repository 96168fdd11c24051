"""The NATS configurations in deploy/ run as written, with the auth include that
`cronium user nats-config` writes: a 3-node cluster that keeps executing work after losing a
node, and identities checked by the server — a producer that can run scripts but cannot forge
lifecycle events, read secrets or touch streams, and users confined to their own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import nats
import nats.errors
import nats.js.errors
import pytest
from nats.js.api import ConsumerConfig

from consumers.container.service import ContainerRunner
from consumers.dispatcher.service import Dispatcher
from cronium_bus.bus import Bus
from cronium_bus.embedded import free_port, nats_server_binary, port_open
from cronium_bus.history import execution_state
from cronium_bus.provision import provision
from cronium_bus.settings import Settings, load_settings
from cronium_bus.subjects import PAYLOADS_STREAM
from projections.service import ProjectorService
from tests.conftest import Embedded
from tests.helpers import requested, run_code

pytestmark = pytest.mark.docker

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "nats"
ROUTE = {"NATS_ROUTE_PASSWORD": "route-pw"}


def cronium(binary: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        check=False,
    )


def self_signed(workdir: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (the WebSocket listener's TLS)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = workdir / "ws-cert.pem", workdir / "ws-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def auth_config(binary: str, workdir: Path) -> Path:
    """deploy/nats's configs copied into ``workdir`` beside the auth.conf that
    `cronium user nats-config` writes, and a TLS certificate for their WebSocket listener; the
    stack's data dir (its keys and credentials)."""
    for conf in ("single.conf", "cluster.conf"):
        shutil.copy(DEPLOY / conf, workdir / conf)
    self_signed(workdir)
    data = workdir / "data"
    done = cronium(
        binary, "user", "nats-config", "--data-dir", str(data), "--out", str(workdir / "auth.conf")
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(workdir / "auth.conf")
    assert "service credentials" in done.stderr
    return data


def distinct_free_ports(n: int) -> list[int]:
    """``n`` different free ports: all bound at once, then released (two separate picks can
    return the same port, which a cluster's client and route listeners then fight over)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


class Node:
    """nats-server started from a deploy/ config with its environment (stopped by pid)."""

    def __init__(self, config: str, env: dict[str, str], workdir: Path) -> None:
        self.port = int(env["NATS_PORT"])
        name = env.get("NATS_NODE_NAME", "single")
        self.log = workdir / f"{name}.log"
        resolver = {"NATS_RESOLVER_DIR": str(workdir / f"jwt-{name}")}
        self.ws_port = int(env.get("NATS_WS_PORT") or free_port())
        resolver |= {
            "NATS_WS_PORT": str(self.ws_port),
            "NATS_WS_CERT": str(workdir / "ws-cert.pem"),
            "NATS_WS_KEY": str(workdir / "ws-key.pem"),
        }
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(nats_server_binary()), "-c", str(workdir / config)],
                env={"PATH": os.environ["PATH"], **ROUTE, **resolver, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=workdir,  # includes resolve against the config's own folder
            )
        deadline = time.monotonic() + 15
        while not port_open("127.0.0.1", self.port):
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            assert time.monotonic() < deadline, "nats-server did not listen in time"
            time.sleep(0.05)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def client_settings(url: str, creds: Path, tmp: Path, **extra: object) -> Settings:
    runtime_dir = Path(tempfile.mkdtemp(prefix="crd-", dir="/tmp"))
    return load_settings(
        nats_url=url,
        creds=creds,
        data_dir=tmp / "data",
        user="tester",
        runner={"slots": 2, "heartbeat": 0.5, "ack_wait": 5.0, "runtime_dir": runtime_dir},
        limits={"stop_grace": 1.0},
        **extra,
    )


async def provisioned(settings: Settings, timeout: float = 30.0) -> None:
    """Provision once the cluster has elected its JetStream leader (bounded)."""
    deadline = time.monotonic() + timeout
    async with Bus(settings, name="provision") as bus:
        while True:
            try:
                await provision(bus.js, settings)
                return
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)


async def leaders_back(bus: Bus, streams: list[str], timeout: float = 30.0) -> None:
    """Wait (bounded) until every stream answers again: after a node is lost, streams it led
    elect a new leader among the two left (a few seconds)."""
    deadline = time.monotonic() + timeout
    for name in streams:
        while True:
            try:
                info = await bus.js.stream_info(name)
                if info.cluster is not None and info.cluster.leader:
                    break
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
                pass
            assert time.monotonic() < deadline, f"{name} has no leader after {timeout:g}s"
            await asyncio.sleep(0.5)


@asynccontextmanager
async def consumers(settings: Settings, *, queries: bool = False) -> AsyncIterator[Bus]:
    """A dispatcher and a container runner on ``settings`` (and the projector, which answers
    people's queries, with ``queries``); the bus they share."""
    async with Bus(settings, name="deploy-test") as bus:
        emb = Embedded()
        emb.tasks.append(asyncio.create_task(Dispatcher(bus).run(emb.stopper)))
        emb.tasks.append(asyncio.create_task(ContainerRunner(bus).run(emb.stopper)))
        if queries:
            emb.tasks.append(asyncio.create_task(ProjectorService(bus).run(emb.stopper)))
        try:
            yield bus
        finally:
            await emb.stop()


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cronium-deploy-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_missing_variable_stops_the_server_with_its_name(workdir: Path, cronium_bin: str) -> None:
    """Without NATS_RESOLVER_DIR the server does not start, and says which variable is missing;
    without auth.conf it does not start either (no anonymous fallback)."""
    bare = subprocess.run(
        [str(nats_server_binary()), "-c", str(DEPLOY / "single.conf"), "-t"],
        env={"PATH": os.environ["PATH"], "NATS_HOST": "127.0.0.1", "NATS_PORT": "0",
             "NATS_STORE_DIR": str(workdir), "NATS_WS_PORT": "0", "NATS_WS_CERT": "c",
             "NATS_WS_KEY": "k"},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert bare.returncode != 0 and "auth.conf" in bare.stderr + bare.stdout
    auth_config(cronium_bin, workdir)
    env = {"PATH": os.environ["PATH"], "NATS_HOST": "127.0.0.1", "NATS_PORT": "0"}
    env["NATS_STORE_DIR"] = str(workdir)
    env |= {"NATS_WS_PORT": "0", "NATS_WS_CERT": str(workdir / "ws-cert.pem")}
    env["NATS_WS_KEY"] = str(workdir / "ws-key.pem")
    result = subprocess.run(
        [str(nats_server_binary()), "-c", str(workdir / "single.conf"), "-t"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "NATS_RESOLVER_DIR" in result.stderr + result.stdout


async def test_a_three_node_cluster_keeps_running_work_after_losing_a_node(
    workdir: Path, cronium_bin: str
) -> None:
    """Streams with 3 replicas on deploy/nats/cluster.conf: a job runs; one node is
    SIGKILLed; the clients fail over and the next job runs too, its events replicated."""
    data = auth_config(cronium_bin, workdir)
    free = distinct_free_ports(6)
    ports = [(free[2 * i], free[2 * i + 1]) for i in range(3)]
    routes = {
        f"NATS_ROUTE_{i + 1}": f"nats-route://route:route-pw@127.0.0.1:{cluster}"
        for i, (_, cluster) in enumerate(ports)
    }
    nodes = [
        Node(
            "cluster.conf",
            {
                "NATS_NODE_NAME": f"n{i + 1}",
                "NATS_HOST": "127.0.0.1",
                "NATS_PORT": str(client),
                "NATS_CLUSTER_PORT": str(cluster),
                "NATS_STORE_DIR": str(workdir / f"n{i + 1}"),
                **routes,
            },
            workdir,
        )
        for i, (client, cluster) in enumerate(ports)
    ]
    try:
        url = ",".join(f"nats://127.0.0.1:{client}" for client, _ in ports)
        settings = client_settings(
            url, data / "auth" / "service.creds", workdir, streams={"replicas": 3}
        )
        await provisioned(settings)
        async with consumers(settings) as bus:
            info = await bus.js.stream_info("CRONIUM_EXEC")
            assert info.config.num_replicas == 3
            first = await run_code(bus, "print('one')")
            assert first.status == "succeeded"
            connected = bus.nc.connected_url
            assert connected is not None
            victim = next(n for n in nodes if n.port == connected.port)
            victim.stop(signal.SIGKILL)
            await leaders_back(bus, ["CRONIUM_EXEC", "CRONIUM_JOBS", "CRONIUM_LOGS"])
            second = await run_code(bus, "print('two')", timeout_s=60.0)
            assert second.status == "succeeded"
            assert bus.nc.connected_url is not None and bus.nc.connected_url.port != victim.port
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
async def single(workdir: Path, cronium_bin: str) -> AsyncIterator[tuple[str, Path]]:
    """deploy/nats/single.conf on a free port, provisioned by the service; its URL and the
    installation's data dir."""
    data = auth_config(cronium_bin, workdir)
    port = free_port()
    env = {"NATS_HOST": "127.0.0.1", "NATS_PORT": str(port), "NATS_STORE_DIR": str(workdir)}
    node = Node("single.conf", env, workdir)
    try:
        url = f"nats://127.0.0.1:{port}"
        await provisioned(client_settings(url, data / "auth" / "service.creds", workdir))
        yield url, data
    finally:
        node.stop()


async def test_the_producer_runs_scripts_but_cannot_forge_or_reach_further(
    single: tuple[str, Path], workdir: Path, cronium_bin: str
) -> None:
    """As a `--role producer` identity (the Cronium app), `cronium run` works end to end for
    its users (live output, --json summary), and an input over the inline limit is refused at
    once (exit 77: no payload store for people, one rollup would purge it all);
    credentials of another installation are refused at once (exit 77); anonymous connections
    are refused; publishing a lifecycle event, opening the secrets bucket, purging the payload
    store, making a consumer or deleting a stream is refused by the server; a `user` sees
    nothing of anyone else's."""
    url, data = single
    service = client_settings(url, data / "auth" / "service.creds", workdir)
    app = cronium(cronium_bin, "user", "add", "app", "--role", "producer", "--data-dir", str(data))
    assert app.returncode == 0, app.stderr
    app_creds = app.stdout.strip()
    big = workdir / "big.json"
    big.write_text(json.dumps({"rows": list(range(100_000))}))  # over the inline limit
    env = {"CRONIUM_NATS_URL": url, "CRONIUM_CREDS": app_creds, "CRONIUM_DATA_DIR": str(workdir)}
    small = workdir / "small.json"
    small.write_text(json.dumps({"rows": list(range(1000))}))
    code = "import cronium\nprint('hi', sum(cronium.input()['rows']))"
    async with consumers(service, queries=True) as bus:
        result = await asyncio.to_thread(
            cronium, cronium_bin, "run", "--json", "--user", "carol", "--runtime", "python",
            "--input", f"@{small}", "-c", code, **env,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["status"] == "succeeded"
        assert "hi 499500" in result.stderr  # the script's lines; the summary is on stdout
        large = await asyncio.to_thread(
            cronium, cronium_bin, "run", "--runtime", "python", "--input", f"@{big}",
            "-c", code, **env,
        )  # fmt: skip
        assert large.returncode == 77, large.stderr
        ran = await execution_state(bus.js, summary["execution_id"], max_bytes=1 << 20)
        assert ran is not None and ran.user == "carol"

        other = workdir / "other"
        other.mkdir()
        foreign = auth_config(cronium_bin, other) / "auth" / "admin.creds"
        wrong = await asyncio.to_thread(
            cronium, cronium_bin, "status", **{**env, "CRONIUM_CREDS": str(foreign)}
        )
        assert wrong.returncode == 77, wrong.stderr
        anonymous = await asyncio.to_thread(
            cronium,
            cronium_bin,
            "status",
            **{**env, "CRONIUM_CREDS": "", "CRONIUM_DATA_DIR": str(other / "none")},
        )
        assert anonymous.returncode == 77 and "refused the credentials" in anonymous.stderr

        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc).lower())

        nc = await nats.connect(
            url, user_credentials=app_creds, inbox_prefix="_INBOX_app", error_cb=on_error
        )
        try:
            js = nc.jetstream(timeout=2.0)
            forged = requested("print(1)")
            with pytest.raises((nats.errors.Error, TimeoutError)):
                await js.publish(
                    f"cronium.exec.{forged.user}.{forged.execution_id}.succeeded", b"{}"
                )
            assert await execution_state(bus.js, forged.execution_id, max_bytes=1 << 20) is None
            for attempt in (
                js.key_value("cronium_secrets"),
                js.purge_stream(PAYLOADS_STREAM, subject="$O.cronium_payloads.C.>"),
                js.publish("$O.cronium_payloads.M.eA", b"{}", headers={"Nats-Rollup": "all"}),
                js.delete_stream("CRONIUM_EXEC"),
                js.add_consumer("CRONIUM_EXEC", ConsumerConfig(name="peek")),
            ):
                with pytest.raises((nats.errors.Error, nats.js.errors.Error, TimeoutError)):
                    await attempt
        finally:
            await nc.close()
        assert (await bus.js.stream_info("CRONIUM_EXEC")).config.name == "CRONIUM_EXEC"

        bob = cronium(cronium_bin, "user", "add", "bob", "--data-dir", str(data))
        assert bob.returncode == 0, bob.stderr
        shown = await asyncio.to_thread(
            cronium, cronium_bin, "show", summary["execution_id"],
            **{**env, "CRONIUM_CREDS": bob.stdout.strip()},
        )  # fmt: skip
        assert shown.returncode == 77, shown.stderr
        mine = await asyncio.to_thread(
            cronium, cronium_bin, "run", "--runtime", "bash", "-c", "echo bob-ran",
            **{**env, "CRONIUM_CREDS": bob.stdout.strip()},
        )  # fmt: skip
        assert (mine.returncode, mine.stdout) == (0, "bob-ran\n"), mine.stderr


async def _frames(ws: aiohttp.ClientWebSocketResponse, until: str) -> str:
    """What the server sent, up to and including a frame with ``until`` (bounded: 10 s)."""
    text = ""
    while until not in text:
        msg = await asyncio.wait_for(ws.receive(), 10)
        assert msg.type == aiohttp.WSMsgType.BINARY, msg
        text += msg.data.decode()
    return text


async def test_browsers_connect_over_websocket_with_tls_and_a_bearer_token(
    workdir: Path, cronium_bin: str
) -> None:
    """single.conf's WebSocket listener speaks TLS only; a `cronium user token` of alice signs
    in over wss:// with alice's permissions."""
    import ssl

    data = auth_config(cronium_bin, workdir)
    port = free_port()
    node = Node(
        "single.conf",
        {"NATS_HOST": "127.0.0.1", "NATS_PORT": str(port), "NATS_STORE_DIR": str(workdir)},
        workdir,
    )
    try:
        added = cronium(cronium_bin, "user", "add", "alice", "--data-dir", str(data))
        assert added.returncode == 0, added.stderr
        done = cronium(cronium_bin, "user", "token", "alice", "--data-dir", str(data))
        assert done.returncode == 0, done.stderr
        token = done.stdout.strip()
        tls = ssl.create_default_context(cafile=str(workdir / "ws-cert.pem"))
        # the NATS protocol over wss:// as a browser speaks it (nats-py 2.16 upgrades a wss
        # connection to TLS a second time when the server says tls_required, and hangs)
        async with aiohttp.ClientSession() as http:
            url = f"wss://127.0.0.1:{node.ws_port}"
            async with http.ws_connect(url, ssl=tls, timeout=aiohttp.ClientWSTimeout(10)) as ws:
                info = await _frames(ws, "INFO")
                assert '"tls_required":true' in info.replace(" ", "")
                connect = {"jwt": token, "sig": "", "protocol": 1, "verbose": False}
                await ws.send_bytes(f"CONNECT {json.dumps(connect)}\r\nPING\r\n".encode())
                assert "PONG" in await _frames(ws, "PONG")
                await ws.send_bytes(b"SUB cronium.exec.alice.> 1\r\nPING\r\n")
                assert "-ERR" not in await _frames(ws, "PONG")
                await ws.send_bytes(b"SUB cronium.exec.bob.> 2\r\nPING\r\n")
                refused = await _frames(ws, "PONG")
                assert 'Permissions Violation for Subscription to "cronium.exec.bob.>"' in refused
            with pytest.raises(aiohttp.ClientError):  # no plain WebSocket at all
                await http.ws_connect(
                    f"ws://127.0.0.1:{node.ws_port}", timeout=aiohttp.ClientWSTimeout(5)
                )
    finally:
        node.stop()


def test_the_clickhouse_ddl_file_is_current_and_creates_the_warehouse(tmp_path: Path) -> None:
    """deploy/clickhouse/schema.sql is what projections/ddl.py renders (run
    `make schemas` after changing the DDL), and run statement by statement on a fresh engine
    it creates every table and view."""
    from projections import ddl
    from projections.warehouse import ChdbWarehouse

    assert ddl.main(["--check"]) == 0, "deploy/clickhouse/schema.sql is stale: `make schemas`"
    warehouse = ChdbWarehouse(tmp_path / "warehouse")
    try:
        for statement in ddl.SQL_FILE.read_text().split(";\n"):
            body = "\n".join(ln for ln in statement.splitlines() if not ln.startswith("--"))
            if body.strip():
                warehouse.command(body)
        rows = warehouse.query("SELECT name FROM system.tables WHERE database = 'cronium'")
        assert {r["name"] for r in rows} == {*ddl.TABLES, "runs_per_hour", "durations_by_event"}
    finally:
        warehouse.close()
