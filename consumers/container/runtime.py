"""The container boundary: a ``ContainerRuntime`` Protocol and its Docker implementation.

Methods are blocking (docker-py is synchronous); the runner calls them from its own thread pool.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import docker
import docker.errors
import docker.types
import requests.exceptions
import structlog
from docker.models.containers import _create_container_args  # type: ignore[attr-defined]
from docker.utils.socket import STDERR, frames_iter

from cronium_bus.errors import CroniumError, ErrorKind
from cronium_bus.events import LogStream

log = structlog.get_logger(__name__)

LABEL_EXECUTION: Final = "org.cronium.execution"
LABEL_ATTEMPT: Final = "org.cronium.attempt"
LABEL_RUNNER: Final = "org.cronium.runner"
LABEL_INSTALLATION: Final = "org.cronium.installation"  # whose: runners reap only their own
LABEL_POOL: Final = "org.cronium.pool"  # a warm container (idle, or claimed by one execution)
SANDBOX_UID: Final = 1000
SANDBOX_NOFILE: Final = 1024
"""Open files per process in a sandbox (nofile, soft and hard)."""
_CGROUP: Final = Path("/sys/fs/cgroup")
_IMAGE_ID_TTL_S: Final = 10.0
HOSTS_FILE: Final = "hosts"
"""In the runtime dir, bind-mounted at ``/etc/hosts`` of a sandbox without network."""
HOSTS: Final = "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n"


class ImageUnavailableError(CroniumError):
    """The runtime image is not present on the engine."""

    kind: ErrorKind = "image_unavailable"


class ContainerEngineError(CroniumError):
    """The engine failed (not reachable, refused a call)."""

    kind: ErrorKind = "infrastructure"


class ContainerGoneError(ContainerEngineError):
    """The container no longer exists (removed by someone else, or by the engine)."""


@dataclass(frozen=True, kw_only=True)
class ContainerSpec:
    """Everything needed to create one sandbox."""

    image: str
    command: list[str]
    labels: dict[str, str]
    runtime_dir: Path
    cpus: float
    memory_bytes: int
    pids: int
    tmp_size: int
    workspace_size: int
    network: bool = False
    env: dict[str, str] = field(default_factory=dict)
    interactive: bool = False
    """Keep stdin open (once): a warm container waits on it for its go line."""


@dataclass(frozen=True)
class Attached:
    """An attach connection made before start: output frames, stdin (once), and a close for a
    connection whose output is never read (a warm container removed unused)."""

    frames: Iterator[tuple[LogStream, bytes]]
    send_once: Callable[[bytes], None]
    close: Callable[[], None]


@dataclass(frozen=True)
class ExitState:
    """How a container ended."""

    exit_code: int
    oom_killed: bool


@dataclass(frozen=True)
class Leftover:
    """A container of ours found on the engine."""

    container_id: str
    labels: dict[str, str]
    running: bool


class ContainerRuntime(Protocol):
    """What the runner needs from a container engine."""

    def image_id(self, image: str) -> str: ...
    def create(self, spec: ContainerSpec) -> str: ...
    def attach(self, container_id: str) -> Iterator[tuple[LogStream, bytes]]:
        """Connect to the container's output now (before start); read it from the iterator."""
        ...

    def attach_interactive(self, container_id: str) -> Attached:
        """Like :meth:`attach`, plus stdin (written once, then closed)."""
        ...

    def update_memory(self, container_id: str, memory_bytes: int) -> None: ...
    def ensure_exists(self, container_id: str) -> None: ...
    def start(self, container_id: str) -> None: ...
    def wait(self, container_id: str) -> ExitState: ...
    def stop(self, container_id: str, grace: float) -> None: ...
    def kill(self, container_id: str) -> None: ...
    def remove(self, container_id: str) -> None: ...
    def usage(self, container_id: str) -> tuple[int | None, float | None]: ...
    def tmpfs_bytes(self, container_id: str) -> int | None: ...
    def leftovers(self, installation: str) -> list[Leftover]: ...
    def ping(self) -> bool: ...
    def close(self) -> None: ...


def sandbox_options(spec: ContainerSpec) -> dict[str, Any]:
    """docker-py ``create`` options for the DESIGN.md isolation defaults (pure, testable).

    Without network the container is created with networking *disabled*, not merely in
    network mode ``none``: the runtime still gives it a fresh network namespace holding only
    ``lo``, but the engine skips its network sandbox and the prestart hook that sets it up (an
    exec of a dockerd copy per container) — about 40% of the engine's CPU per trivial job here
    (``bench.containers``). The engine then writes no ``/etc/hosts``, so the runtime dir's
    ``hosts`` (``localhost``) is mounted there.
    """
    volumes = {str(spec.runtime_dir): {"bind": "/cronium", "mode": "ro"}}
    if not spec.network:
        volumes[str(spec.runtime_dir / HOSTS_FILE)] = {"bind": "/etc/hosts", "mode": "ro"}
    return {
        "image": spec.image,
        "command": spec.command,
        "labels": spec.labels,
        "user": f"{SANDBOX_UID}:{SANDBOX_UID}",
        "working_dir": "/workspace",
        "environment": dict(spec.env),
        "network_mode": "bridge" if spec.network else "none",
        "network_disabled": not spec.network,
        "read_only": True,
        "tmpfs": {  # inside the sandbox, not the host's /tmp
            "/tmp": f"rw,nosuid,nodev,size={spec.tmp_size},mode=1777",  # noqa: S108
            "/workspace": f"rw,nosuid,nodev,size={spec.workspace_size},uid={SANDBOX_UID},"
            f"gid={SANDBOX_UID},mode=0700",
        },
        "volumes": volumes,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "pids_limit": spec.pids,
        # descriptors of the sandbox's own processes: a script cannot open without end
        "ulimits": [docker.types.Ulimit(name="nofile", soft=SANDBOX_NOFILE, hard=SANDBOX_NOFILE)],
        "mem_limit": spec.memory_bytes,
        "memswap_limit": spec.memory_bytes,  # no swap on top of the limit
        "nano_cpus": int(spec.cpus * 1e9),
        "log_config": {"type": "none"},  # output is streamed by attach, never kept by the engine
        "hostname": "sandbox",
        "ipc_mode": "private",
        "stdin_open": spec.interactive,
        "detach": not spec.interactive,  # docker-py sets StdinOnce only for attached stdin
    }


class DockerRuntime:
    """:class:`ContainerRuntime` on a Docker engine through docker-py."""

    def __init__(self, pool_size: int = 16) -> None:
        self._image_ids: dict[str, tuple[str, float]] = {}
        try:
            self.client = docker.from_env(max_pool_size=pool_size)
            if self.client.api.base_url.startswith("http+docker://"):  # a local unix socket:
                # no proxy or netrc applies, so skip requests' environment lookups per call
                self.client.api.trust_env = False
            self.client.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise ContainerEngineError(
                f"cannot reach the Docker engine: {exc}",
                hint="start it (`make setup` does) or set DOCKER_HOST",
            ) from exc

    def image_id(self, image: str) -> str:
        """The image's id, cached for a few seconds (asked once per attempt)."""
        now = time.monotonic()
        cached = self._image_ids.get(image)
        if cached is not None and now - cached[1] < _IMAGE_ID_TTL_S:
            return cached[0]
        try:
            found = self.client.images.get(image)
        except docker.errors.ImageNotFound as exc:
            raise ImageUnavailableError(
                f"image {image} is not on this Docker engine",
                hint="build the runtime images with `make images`",
            ) from exc
        self._image_ids[image] = (str(found.id), now)
        return str(found.id)

    def create(self, spec: ContainerSpec) -> str:
        # docker-py's high-level create inspects the new container to return an object; the id
        # is all we need, so the low-level call saves the engine one inspect per container
        hosts = spec.runtime_dir / HOSTS_FILE
        if not spec.network and not hosts.exists():  # a missing source would become a directory
            hosts.write_text(HOSTS)
            hosts.chmod(0o644)
        args = _create_container_args(
            {**sandbox_options(spec), "version": self.client.api.api_version}
        )
        try:
            created = self.client.api.create_container(**args)
        except docker.errors.ImageNotFound as exc:
            raise ImageUnavailableError(
                f"image {spec.image} is not on this Docker engine",
                hint="build the runtime images with `make images`",
            ) from exc
        return str(created["Id"])

    def attach(self, container_id: str) -> Iterator[tuple[LogStream, bytes]]:
        return self._attach(container_id, stdin=False).frames

    def attach_interactive(self, container_id: str) -> Attached:
        return self._attach(container_id, stdin=True)

    def ensure_exists(self, container_id: str) -> None:
        """Raise :class:`ContainerGoneError` unless the container is there (an inspect: a
        tenth of what a ``docker update`` costs)."""
        try:
            self.client.api.inspect_container(container_id)
        except docker.errors.NotFound as exc:
            raise ContainerGoneError(f"container {container_id[:12]} is gone") from exc

    def update_memory(self, container_id: str, memory_bytes: int) -> None:
        try:
            self.client.api.update_container(
                container_id, mem_limit=memory_bytes, memswap_limit=memory_bytes
            )
        except docker.errors.NotFound as exc:
            raise ContainerGoneError(f"container {container_id[:12]} is gone") from exc

    def _attach(self, container_id: str, *, stdin: bool) -> Attached:
        # The HTTP attach is made here, before start, so no early output can be missed;
        # only the reading is deferred to the returned iterator, which closes the socket.
        sock = self.client.api.attach_socket(
            container_id,
            params={"stdin": int(stdin), "stdout": 1, "stderr": 1, "stream": 1, "logs": 0},
        )

        def send_once(data: bytes) -> None:
            raw = getattr(sock, "_sock", sock)
            raw.sendall(data)
            raw.shutdown(socket.SHUT_WR)  # the container's stdin sees EOF (StdinOnce)

        def close() -> None:
            inner = getattr(sock, "_sock", None)  # SocketIO over a unix socket
            sock.close()
            if inner is not None:
                inner.close()

        def read() -> Iterator[tuple[LogStream, bytes]]:
            try:
                for stream_id, data in frames_iter(sock, tty=False):  # type: ignore[no-untyped-call]
                    if data:
                        yield ("stderr" if stream_id == STDERR else "stdout"), data
            finally:
                close()

        return Attached(frames=read(), send_once=send_once, close=close)

    # by id through the low-level API: no extra inspect per call (each costs the engine CPU)

    def start(self, container_id: str) -> None:
        self.client.api.start(container_id)

    def wait(self, container_id: str) -> ExitState:
        result = self.client.api.wait(container_id)
        code = int(result.get("StatusCode", -1))
        if code != 128 + 9:  # only a SIGKILL can be the OOM killer: inspect just then
            return ExitState(exit_code=code, oom_killed=False)
        state = self.client.api.inspect_container(container_id).get("State", {})
        return ExitState(exit_code=code, oom_killed=bool(state.get("OOMKilled", False)))

    def stop(self, container_id: str, grace: float) -> None:
        try:
            self.client.api.stop(container_id, timeout=max(0, round(grace)))
        except docker.errors.NotFound:
            return

    def kill(self, container_id: str) -> None:
        try:
            self.client.api.kill(container_id)
        except docker.errors.APIError as exc:  # not running any more, or gone
            log.debug("kill skipped", container_id=container_id[:12], reason=str(exc))

    def remove(self, container_id: str) -> None:
        try:
            self.client.api.remove_container(container_id, force=True, v=True)
        except docker.errors.NotFound:
            return
        except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
            raise ContainerEngineError(
                f"container {container_id[:12]} not removed: {exc}",
                hint="the runners' reaping removes it later",
            ) from exc

    def usage(self, container_id: str) -> tuple[int | None, float | None]:
        """Peak memory (bytes) and CPU time (ms) from cgroup v1, while the container exists."""
        peak = _read_int(_CGROUP / "memory" / "docker" / container_id / "memory.max_usage_in_bytes")
        cpu_ns = _read_int(_CGROUP / "cpuacct" / "docker" / container_id / "cpuacct.usage")
        return peak, (cpu_ns / 1e6 if cpu_ns is not None else None)

    def tmpfs_bytes(self, container_id: str) -> int | None:
        """Bytes of tmpfs (``/tmp``, ``/workspace``) the container holds now: cgroup v1's
        ``shmem``, which the kernel charges to the memory limit."""
        return _read_stat(_CGROUP / "memory" / "docker" / container_id / "memory.stat", "shmem")

    def leftovers(self, installation: str) -> list[Leftover]:
        # one list call: an inspect per container would race with removals in flight; only
        # this installation's (another stack may share the engine)
        found = self.client.api.containers(
            all=True, filters={"label": [LABEL_EXECUTION, f"{LABEL_INSTALLATION}={installation}"]}
        )
        return [
            Leftover(
                container_id=str(c["Id"]),
                labels=dict(c.get("Labels") or {}),
                running=c.get("State") in {"running", "restarting", "paused", "created"},
            )
            for c in found
        ]

    def ping(self) -> bool:
        """Whether the engine answers now."""
        try:
            return bool(self.client.ping())
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return False

    def close(self) -> None:
        """Close the engine connection pool."""
        self.client.close()


def _read_stat(path: Path, key: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        return None
    return None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
