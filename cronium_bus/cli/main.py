"""``cronium``: run scripts in isolated containers over an event bus, and inspect them."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from cronium_bus import __version__
from cronium_bus.cli import (
    exitcodes,
    inspect,
    metrics,
    ops,
    run,
    schedule,
    secret,
    servers,
    stack,
    users,
    warehouse,
    workflow,
)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(
        prog="cronium",
        description="Cronium's execution service: run bash, python and node scripts in "
        "isolated containers, with every lifecycle change and log line an event on NATS "
        "JetStream.",
        epilog="Start the embedded stack with `cronium up`, then e.g. "
        "`cronium run --runtime python -c 'print(6*7)'`.\n\n" + exitcodes.TABLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cronium {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    stack.add_parsers(sub)
    run.add_parser(sub)
    inspect.add_parsers(sub)
    secret.add_parsers(sub)
    servers.add_parsers(sub)
    warehouse.add_parsers(sub)
    ops.add_parsers(sub)
    metrics.add_parser(sub)
    users.add_parsers(sub)
    workflow.add_parsers(sub)
    schedule.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the command; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except BrokenPipeError:  # e.g. `cronium audit export ... | head`: the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return exitcodes.OK
    return code


if __name__ == "__main__":
    sys.exit(main())
