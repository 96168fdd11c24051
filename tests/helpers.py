"""Small helpers for tests: publishing requests and waiting for outcomes over the real bus."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import nats.errors

from cronium_bus.bus import Bus
from cronium_bus.events import Limits, Request, Requested, new_request
from cronium_bus.health import read_beats
from cronium_bus.history import execution_state
from cronium_bus.ids import new_id
from cronium_bus.settings import Settings
from cronium_bus.state import ExecutionState


def requested(code: str, runtime: str = "python", **fields: Any) -> Requested:
    """A request event for ``code``; ``fields`` go into the Request."""
    limits = fields.pop("limits", Limits())
    user = fields.pop("user", "tester")
    request = Request(runtime=runtime, code=code, limits=limits, **fields)  # type: ignore[arg-type]
    return new_request(new_id("ex"), request, producer="tests", user=user)


async def sealer_ready(bus: Bus) -> None:
    """Wait until the sealing service answers (bounded: 10 s)."""
    for _ in range(100):
        try:
            await bus.nc.request("cronium.ctl.secrets.admin.probe.list", b"{}", timeout=1)
            return
        except nats.errors.NoRespondersError:
            await asyncio.sleep(0.1)
    raise AssertionError("the sealing service did not answer within 10 s")


async def wait_final(bus: Bus, execution_id: str, timeout: float = 60.0) -> ExecutionState:
    """Poll the streams until the execution is final (bounded by ``timeout``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        state = await execution_state(bus.js, execution_id, max_bytes=32 * 1024 * 1024)
        if state is not None and state.final:
            return state
        if loop.time() > deadline:
            raise AssertionError(f"{execution_id} not final after {timeout}s: {state}")
        await asyncio.sleep(0.05)


async def run_code(bus: Bus, code: str, runtime: str = "python", **fields: Any) -> ExecutionState:
    """Publish a request and wait for its final state."""
    event = requested(code, runtime, **fields)
    await bus.publish(event)
    return await wait_final(
        bus, event.execution_id, timeout=(fields.get("timeout_s") or 30.0) + 30.0
    )


class RunnerProcess:
    """``cronium consume NAME`` (container by default) as its own process, sharing the test's
    NATS and dirs."""

    def __init__(
        self,
        cronium_bin: str,
        settings: Settings,
        slots: int,
        consumer: str = "container",
        **env_extra: str,
    ) -> None:
        self.consumer = consumer
        env = {
            **os.environ,
            "CRONIUM_NATS_URL": settings.nats_url,
            "CRONIUM_CREDS": str(settings.creds),
            "CRONIUM_DATA_DIR": str(settings.data_dir),
            "CRONIUM_RUNNER__RUNTIME_DIR": str(settings.runtime_dir),
            "CRONIUM_RUNNER__SLOTS": str(slots),
            "CRONIUM_RUNNER__HEARTBEAT": "0.5",
            "CRONIUM_RUNNER__ACK_WAIT": "4",
            "CRONIUM_LIMITS__STOP_GRACE": "1",
            "CRONIUM_LOG_FORMAT": "json",
            **env_extra,
        }
        self.proc = subprocess.Popen(
            [cronium_bin, "consume", consumer],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def ready(self, bus: Bus, timeout: float = 60.0) -> str:
        """Wait (bounded) until this process's heartbeat is in the bucket, which it writes once
        it claims jobs; its runner id."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"runner process exited with {self.proc.returncode}")
            for beat in await read_beats(bus.js):
                if beat.pid == self.proc.pid and beat.kind == self.consumer:
                    return beat.instance
            await asyncio.sleep(0.1)
        raise AssertionError(f"runner process {self.proc.pid} not claiming after {timeout}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def installation_at(url: str, creds: Path) -> str | None:
    """The installation id of the stack at ``url`` (``None`` before any runner made one)."""
    import nats

    nc = await nats.connect(url, user_credentials=str(creds))
    try:
        kv = await nc.jetstream().key_value("cronium_meta")
        entry = await kv.get("installation")
        return entry.value.decode() if entry.value else None
    except Exception:  # noqa: BLE001 - no bucket or no key yet: no installation id
        return None
    finally:
        await nc.close()
