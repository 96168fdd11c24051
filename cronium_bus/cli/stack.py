"""``cronium up`` (the embedded stack) and ``cronium consume NAME`` (one consumer alone)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final, TypeAlias

import structlog
from pydantic import ValidationError

from cronium_bus.bus import Bus
from cronium_bus.cli import exitcodes
from cronium_bus.cli.common import add_client_options, fail, settings_from
from cronium_bus.embedded import NatsServer, Supervisor, child_env
from cronium_bus.errors import BusUnavailableError, CroniumError
from cronium_bus.health import read_beats
from cronium_bus.identity.authority import Authority
from cronium_bus.identity.roles import SERVICE
from cronium_bus.lifecycle import Stopper, run_service
from cronium_bus.logging import configure_logging
from cronium_bus.metrics import MetricsServer
from cronium_bus.provision import provision
from cronium_bus.secrets import ensure_key_file
from cronium_bus.settings import Settings
from cronium_bus.subjects import META_BUCKET
from cronium_bus.units import parse_listen
from cronium_bus.web import ConsoleServer

log = structlog.get_logger(__name__)
_Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
_READY_TIMEOUT_S: Final = 60.0


def _dispatcher(bus: Bus) -> Callable[[Stopper], Awaitable[None]]:
    from consumers.dispatcher.service import Dispatcher

    return Dispatcher(bus).run


def _container(bus: Bus) -> Callable[[Stopper], Awaitable[None]]:
    from consumers.container.service import ContainerRunner

    return ContainerRunner(bus).run


def _ssh(bus: Bus) -> Callable[[Stopper], Awaitable[None]]:
    from consumers.ssh.service import SshRunner

    return SshRunner(bus).run


def _secrets(bus: Bus) -> Callable[[Stopper], Awaitable[None]]:
    from consumers.secrets.service import SecretsService

    return SecretsService(bus).run


def _projector(bus: Bus) -> Callable[[Stopper], Awaitable[None]]:
    from projections.service import ProjectorService

    return ProjectorService(bus).run


def _workflow(bus: Bus) -> Callable[[Stopper], Awaitable[None]]:
    from consumers.workflow.service import WorkflowService

    return WorkflowService(bus).run


def _scheduler(bus: Bus) -> Callable[[Stopper], Awaitable[None]]:
    from consumers.scheduler.service import Scheduler

    return Scheduler(bus).run


CONSUMERS: Final[dict[str, Callable[[Bus], Callable[[Stopper], Awaitable[None]]]]] = {
    "dispatcher": _dispatcher,
    "container": _container,
    "ssh": _ssh,
    "projector": _projector,
    "secrets": _secrets,
    "workflow": _workflow,
    "scheduler": _scheduler,
}


def add_parsers(sub: _Sub) -> None:
    """Register ``up`` and ``consume``."""
    p = sub.add_parser(
        "up",
        help="run the embedded stack in the foreground",
        description="Start nats-server (JetStream in DATA_DIR) unless --nats-url names a running "
        "server, provision streams and buckets, and run every consumer as a supervised child "
        "process (restarted if it dies). The embedded server accepts only credentials of this "
        "installation (NATS JWT auth; keys in DATA_DIR/auth, created on first start). Prints "
        "`cronium ready: URL ...` when ready (ending with the WebSocket URL browsers use), "
        "then `credentials: PATH` naming the admin "
        "credential, which client commands on this machine use by default. Ctrl-C or SIGTERM "
        "stops everything cleanly.",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="where JetStream and runtime files live (default: $CRONIUM_DATA_DIR or "
        "~/.local/share/cronium)",
    )
    p.add_argument(
        "--nats-port",
        type=int,
        metavar="PORT",
        help="port of the embedded nats-server on 127.0.0.1 (default 4222; 0 = any, and any "
        "for its WebSocket listener too, else websocket_port, 4223)",
    )
    p.add_argument(
        "--consumers",
        default=",".join(CONSUMERS),
        metavar="LIST",
        help=f"comma-separated consumers to run (default: {','.join(CONSUMERS)})",
    )
    add_client_options(p)
    p.set_defaults(handler=up)

    p = sub.add_parser(
        "web",
        help="serve the web console's files (cronium up does this too)",
        description="Serve the web console on 127.0.0.1:PORT. It talks NATS over WebSocket "
        "straight to nats-server as the signed-in user: sign in with the link from "
        "`cronium user token NAME --url`.",
    )
    p.add_argument("--port", type=int, default=4280, metavar="PORT", help="default 4280")
    p.add_argument(
        "--websocket", metavar="URL", help="the nats-server WebSocket the console may reach"
    )
    p.set_defaults(handler=web_cmd)

    p = sub.add_parser(
        "consume",
        help="run one consumer in the foreground (how the service scales out)",
        description="Run one consumer against the stack's NATS. Start as many as you like, on "
        "as many hosts as you like: they share durable consumers.",
    )
    p.add_argument(
        "name",
        choices=sorted(CONSUMERS),
        metavar="NAME",
        help=f"one of: {', '.join(sorted(CONSUMERS))}",
    )
    add_client_options(p)
    p.set_defaults(handler=consume)


def web_cmd(args: argparse.Namespace) -> int:
    """``cronium web``: serve the console's files alone (for a stack elsewhere)."""

    async def main() -> None:
        async with ConsoleServer("127.0.0.1", args.port, args.websocket) as console:
            print(f"cronium console: {console.url}", flush=True)
            stopper = Stopper()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stopper.stop)
            await stopper.wait()

    try:
        asyncio.run(main())
    except OSError as exc:
        return fail(f"cannot serve the console: {exc}", "pick a free --port", exitcodes.USAGE)
    return exitcodes.OK


def consume(args: argparse.Namespace) -> int:
    """``cronium consume NAME``."""
    try:
        settings = settings_from(args)
    except (ValidationError, FileNotFoundError) as exc:
        return fail(f"invalid settings: {exc}", "see `cronium config`", exitcodes.USAGE)
    configure_logging(settings.log_level, settings.log_format)
    structlog.contextvars.bind_contextvars(consumer=args.name)

    async def main() -> None:
        async with Bus(settings, name=f"consumer-{args.name}") as bus:
            service = CONSUMERS[args.name](bus)
            log.info("consumer starting", nats_url=settings.nats_url)
            await run_service(service)
            log.info("consumer stopped")

    try:
        asyncio.run(main())
    except BusUnavailableError as exc:
        return fail(exc.message, exc.hint, exitcodes.UNAVAILABLE)
    except CroniumError as exc:
        return fail(exc.message, exc.hint, exitcodes.INFRASTRUCTURE)
    return exitcodes.OK


def up(args: argparse.Namespace) -> int:
    """``cronium up``."""
    try:
        settings = settings_from(args, data_dir=args.data_dir, nats_port=args.nats_port)
    except (ValidationError, FileNotFoundError) as exc:
        return fail(f"invalid settings: {exc}", "see `cronium config`", exitcodes.USAGE)
    names = [n.strip() for n in args.consumers.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONSUMERS]
    if unknown:
        return fail(
            f"unknown consumer {', '.join(unknown)}",
            f"choose from {', '.join(CONSUMERS)}",
            exitcodes.USAGE,
        )
    configure_logging(settings.log_level, settings.log_format)
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    settings.data_dir.chmod(0o700)  # the store, the runtime dirs and the key: ours alone
    ensure_key_file(settings.data_dir)
    server: NatsServer | None = None
    admin: Path | None = None
    service_creds = settings.creds
    if args.nats_url is None:
        authority = Authority.load_or_create(settings.data_dir / "auth")
        stack_creds = authority.write_stack_creds()
        admin, service_creds = stack_creds["admin"], stack_creds[SERVICE]
        ws_port = settings.websocket_port
        if ws_port and args.nats_port == 0:  # a stack on any port opens any WebSocket port too
            ws_port = 0
        server = NatsServer(
            settings.data_dir,
            settings.nats_port,
            max_payload_mb=max(1, settings.streams.max_msg_size // 1024**2),
            authority=authority,
            websocket_port=ws_port,
        )
        try:
            server.start()
            authority.save()  # the account JWTs' new iat, so a later `user rm` is newer still
        except CroniumError as exc:
            return fail(exc.message, exc.hint, exitcodes.INFRASTRUCTURE)
        settings = settings.model_copy(update={"nats_url": server.url, "creds": service_creds})
    supervisor = Supervisor(child_env(settings.nats_url, settings.data_dir, service_creds))
    for name in names:
        extra = ["--config", str(args.config)] if args.config else []
        supervisor.add(name, extra)
    try:
        websocket = server.websocket_url if server is not None else None
        return asyncio.run(_run_stack(settings, supervisor, names, admin, websocket))
    except BusUnavailableError as exc:
        return fail(exc.message, exc.hint, exitcodes.UNAVAILABLE)
    finally:
        supervisor.stop()
        if server is not None:
            server.stop()


async def _run_stack(
    settings: Settings,
    supervisor: Supervisor,
    names: list[str],
    admin: Path | None,
    websocket: str | None = None,
) -> int:
    stopper = Stopper()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopper.stop)
    async with Bus(settings, name="cronium-up") as bus, contextlib.AsyncExitStack() as stack:
        await provision(bus.js, settings)
        if websocket is not None:  # for `cronium status` and `cronium user token --url`
            kv = await bus.js.key_value(META_BUCKET)
            await kv.put("websocket", websocket.encode())
        metrics: MetricsServer | None = None
        if settings.metrics_listen:
            metrics = MetricsServer(bus, *parse_listen(settings.metrics_listen))
            try:
                await stack.enter_async_context(metrics)
            except OSError as exc:
                return fail(
                    f"cannot serve metrics on {settings.metrics_listen}: {exc.strerror or exc}",
                    "set metrics_listen to a free HOST:PORT",
                )
        console: ConsoleServer | None = None
        if websocket is not None:
            port = 0 if settings.nats_port == 0 else settings.console_port
            console = ConsoleServer("127.0.0.1", port, websocket)
            try:
                await stack.enter_async_context(console)
            except OSError as exc:
                return fail(
                    f"cannot serve the console on 127.0.0.1:{port}: {exc.strerror or exc}",
                    "set console_port to a free port",
                )
            kv = await bus.js.key_value(META_BUCKET)
            await kv.put("console", console.url.encode())
        supervisor.tick()
        ready = False
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while not stopper.stopping:
            supervisor.tick()
            if not ready:
                beats = {b.kind: b for b in await read_beats(bus.js) if b.healthy()}
                if all(n in beats for n in names):
                    ready = True
                    pids = ", ".join(f"{n} pid {beats[n].pid}" for n in names)
                    ws = f" websocket {websocket}" if websocket else ""
                    print(
                        f"cronium ready: {settings.nats_url} data {settings.data_dir} ({pids}){ws}",
                        flush=True,
                    )
                    if admin is not None:
                        print(f"credentials: {admin}", flush=True)
                    if metrics is not None:
                        print(f"cronium metrics: serving {metrics.url}", flush=True)
                    if console is not None:
                        print(
                            f"cronium console: {console.url} (sign in: `cronium user token "
                            "NAME --url`)",
                            flush=True,
                        )
                elif time.monotonic() > deadline:
                    missing = [n for n in names if n not in beats]
                    print(
                        f"cronium degraded: {', '.join(missing)} not healthy after "
                        f"{_READY_TIMEOUT_S:.0f}s (see the log above); still trying",
                        file=sys.stderr,
                        flush=True,
                    )
                    deadline = float("inf")
            await stopper.wait(0.25 if not ready else 1.0)
    print("cronium stopping", file=sys.stderr, flush=True)
    return exitcodes.OK
