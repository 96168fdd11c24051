"""Shared fixtures: a real nats-server per module, real Docker, consumers embedded in-process."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cronium_bus.bus import Bus
from cronium_bus.embedded import NatsServer
from cronium_bus.identity.authority import Authority
from cronium_bus.lifecycle import Stopper
from cronium_bus.provision import provision
from cronium_bus.settings import Settings, load_settings
from tests.helpers import installation_at, sealer_ready


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A real nats-server with JetStream on a free 127.0.0.1 port, for one test module, with the
    JWT auth of ``cronium up``: only credentials of its authority connect."""
    root = tmp_path_factory.mktemp("nats")
    authority = Authority.load_or_create(root / "auth")
    authority.write_stack_creds()
    server = NatsServer(root, port=0, authority=authority)
    server.start()
    yield server
    remove_containers_of(server)
    server.stop()


def remove_containers_of(server: NatsServer) -> None:
    """Remove what runners of this test installation left (a runner reaps only its own
    installation's containers, and the installation ends with the module's server)."""
    import docker
    import docker.errors

    made = asyncio.run(installation_at(server.url, service_creds(server)))
    if made is None:
        return
    with contextlib.suppress(docker.errors.DockerException):
        client = docker.from_env()
        try:
            label = f"org.cronium.installation={made}"
            for container in client.containers.list(all=True, filters={"label": label}):
                with contextlib.suppress(docker.errors.DockerException):
                    container.remove(force=True)
        finally:
            client.close()


def service_creds(server: NatsServer) -> Path:
    """The service identity's credentials for a test server."""
    assert server.authority is not None
    return server.authority.directory / "service.creds"


@pytest.fixture
def settings(nats_server: NatsServer, tmp_path: Path) -> Iterator[Settings]:
    """Settings for one test: the module's server, a temp data dir, test-sized limits."""
    runtime_dir = Path(tempfile.mkdtemp(prefix="crt-", dir="/tmp"))  # short: holds a socket
    yield load_settings(
        nats_url=nats_server.url,
        creds=service_creds(nats_server),
        data_dir=tmp_path / "data",
        user="tester",
        secret_key="test-secret-key-0123456789abcdef",
        runner={"slots": 4, "heartbeat": 0.5, "ack_wait": 5.0, "runtime_dir": runtime_dir},
        limits={"stop_grace": 1.0, "output_cap": 1024 * 1024},
    )
    shutil.rmtree(runtime_dir, ignore_errors=True)


@pytest.fixture
async def bus(settings: Settings) -> AsyncIterator[Bus]:
    """A connected bus with streams and buckets provisioned."""
    async with Bus(settings, name="test") as b:
        await provision(b.js, settings)
        yield b


class Embedded:
    """Consumers running as tasks in the test's event loop (no signal handlers)."""

    def __init__(self) -> None:
        self.stopper = Stopper()
        self.tasks: list[asyncio.Task[None]] = []

    async def stop(self) -> None:
        self.stopper.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 30)


@pytest.fixture
async def dispatcher(bus: Bus) -> AsyncIterator[Embedded]:
    """The dispatcher consuming requests."""
    from consumers.dispatcher.service import Dispatcher

    emb = Embedded()
    emb.tasks.append(asyncio.create_task(Dispatcher(bus).run(emb.stopper)))
    yield emb
    await emb.stop()


@pytest.fixture
async def runner(bus: Bus, dispatcher: Embedded) -> AsyncIterator[Embedded]:
    """The dispatcher and a container runner (real Docker)."""
    from consumers.container.service import ContainerRunner

    emb = Embedded()
    emb.tasks.append(asyncio.create_task(ContainerRunner(bus).run(emb.stopper)))
    yield emb
    await emb.stop()


@pytest.fixture
async def sealer(bus: Bus) -> AsyncIterator[Embedded]:
    """The sealing service (``cronium secret set`` and ``servers add`` go through it)."""
    from consumers.secrets.service import SecretsService

    emb = Embedded()
    emb.tasks.append(asyncio.create_task(SecretsService(bus).run(emb.stopper)))
    await sealer_ready(bus)
    yield emb
    await emb.stop()


@pytest.fixture(scope="session")
def cronium_bin() -> str:
    """The installed ``cronium`` console script."""
    found = shutil.which("cronium") or str(
        Path(__file__).resolve().parent.parent / ".venv/bin/cronium"
    )
    assert Path(found).exists(), "cronium is not installed: run `make setup`"
    return found
