"""``cronium metrics``: the service's Prometheus metrics, once or served over HTTP."""

from __future__ import annotations

import argparse
import sys
from typing import TypeAlias

from cronium_bus.bus import Bus
from cronium_bus.cli import exitcodes
from cronium_bus.cli.common import add_client_options, fail, run_client
from cronium_bus.lifecycle import Stopper, run_service
from cronium_bus.metrics import DEFAULT_LISTEN, MetricsServer, parse_listen, scrape

_Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

_DESCRIPTION = """\
Print the service's metrics once in the Prometheus text format (for a textfile collector or a
look), or with --serve answer GET /metrics until stopped (for Prometheus to scrape).

Everything is read from NATS when asked: stream sizes and limits, jobs per runner lane, the
backlog of every durable consumer (projector lag, lanes), dead letters, each consumer process's
health, jobs in flight and own gauges (slots, Docker engine up, warm containers, SSH
connections), and SSH circuit states; attempts by status, the run-time histogram and the log
archive's size come from the projector when one answers (cronium_warehouse_up says whether it
did). The README's Monitoring section lists every metric.

`cronium up` serves the same endpoint when `metrics_listen` is set
(e.g. CRONIUM_METRICS_LISTEN=127.0.0.1:9464)."""

_EPILOG = f"""\
exit codes:
  0     printed (or served until stopped); NATS answered
  1     NATS did not answer the scrape (cronium_up 0 is still printed), or the
        address cannot be bound
  {exitcodes.USAGE}     bad flags
  {exitcodes.UNAVAILABLE}    the stack is not reachable"""


def _listen(text: str) -> tuple[str, int]:
    try:
        return parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_parser(sub: _Sub) -> None:
    """Register ``metrics``."""
    p = sub.add_parser(
        "metrics",
        help="Prometheus metrics: print once, or serve GET /metrics",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--serve", action="store_true", help="serve GET /metrics until stopped")
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        type=_listen,
        help=f"where --serve binds (default: metrics_listen, else {DEFAULT_LISTEN}; port 0 "
        "picks a free one)",
    )
    p.add_argument(
        "--no-warehouse",
        action="store_true",
        help="leave out the figures the projector answers (attempts, run time, archive)",
    )
    add_client_options(p)
    p.set_defaults(handler=metrics)


async def _until_stopped(stopper: Stopper) -> None:
    await stopper.wait()


def metrics(args: argparse.Namespace) -> int:
    """``cronium metrics``."""
    if args.listen is not None and not args.serve:
        return fail("--listen needs --serve", "add --serve", exitcodes.USAGE)

    async def once(bus: Bus) -> int:
        result = await scrape(bus, warehouse=not args.no_warehouse)
        sys.stdout.write(result.body.decode())
        if not result.nats_up:
            return fail("NATS did not answer the scrape", "see `cronium status`")
        return exitcodes.OK

    async def serve(bus: Bus) -> int:
        host, port = args.listen or parse_listen(bus.settings.metrics_listen or DEFAULT_LISTEN)
        server = MetricsServer(bus, host, port, warehouse=not args.no_warehouse)
        try:
            await server.start()
        except OSError as exc:
            return fail(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                "pick a free address with --listen HOST:PORT",
            )
        print(f"cronium metrics: serving {server.url}", flush=True)
        try:
            await run_service(_until_stopped)  # SIGTERM / SIGINT stop it
        finally:
            await server.stop()
        return exitcodes.OK

    return run_client(args, serve if args.serve else once)
