"""Pieces shared by the commands: common flags, settings, errors, printing."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats.errors
from pydantic import ValidationError

from cronium_bus.bus import Bus
from cronium_bus.cli import exitcodes
from cronium_bus.errors import BusUnavailableError, CroniumError, PermissionDeniedError
from cronium_bus.logging import configure_logging
from cronium_bus.settings import Settings, load_settings


def add_client_options(parser: argparse.ArgumentParser) -> None:
    """``--nats-url``, ``--creds`` and ``--config``, taken by every command that talks to the
    stack."""
    parser.add_argument(
        "--creds",
        metavar="FILE",
        type=Path,
        help="NATS credentials to act as (default: $CRONIUM_CREDS, else the admin credential "
        "in the data dir of `cronium up`)",
    )
    parser.add_argument(
        "--nats-url",
        metavar="URL",
        help="NATS server of the stack (default: $CRONIUM_NATS_URL or nats://127.0.0.1:4222)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        help="TOML settings file (default: $CRONIUM_CONFIG); see `cronium config`",
    )


def settings_from(args: argparse.Namespace, **extra: Any) -> Settings:
    """Read the settings once, with the command line's overrides on top."""
    return load_settings(
        getattr(args, "config", None),
        nats_url=getattr(args, "nats_url", None),
        creds=getattr(args, "creds", None),
        **extra,
    )


def exit_code_of(exc: CroniumError) -> int:
    """The exit code of a command that ended with ``exc``."""
    if exc.kind == "permission":
        return exitcodes.PERMISSION
    return exitcodes.USAGE if exc.kind == "validation" else exitcodes.FAILURE


def fail(message: str, hint: str = "", code: int = exitcodes.FAILURE) -> int:
    """Print an error (and what to do) on stderr and return the exit code."""
    print(f"cronium: error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    return code


def run_client(
    args: argparse.Namespace, body: Callable[[Bus], Awaitable[int]], **extra: Any
) -> int:
    """Read settings, connect, run ``body`` and map errors to exit codes and messages."""
    try:
        settings = settings_from(args, **extra)
    except ValidationError as exc:
        return fail(f"invalid settings: {exc}", "see `cronium config --help`", exitcodes.USAGE)
    except FileNotFoundError as exc:
        return fail(str(exc), "pass an existing --config FILE", exitcodes.USAGE)
    configure_logging("warning", settings.log_format)

    async def main() -> int:
        async with Bus(settings, name=f"cli-{args.command}") as bus:
            try:
                return await body(bus)
            except (TimeoutError, nats.errors.TimeoutError) as exc:
                if bus.violations:  # the server refused a request, which then timed out
                    raise PermissionDeniedError(
                        f"refused by the server: {bus.violations[-1].removeprefix('nats: ')}",
                        hint="your credentials' role does not allow this (README, Identities)",
                    ) from exc
                raise CroniumError(
                    "the stack did not answer in time",
                    hint="check `cronium status`; a consumer may be down",
                ) from exc

    try:
        return asyncio.run(main())
    except BusUnavailableError as exc:
        return fail(exc.message, exc.hint, exitcodes.UNAVAILABLE)
    except CroniumError as exc:
        return fail(exc.message, exc.hint, exit_code_of(exc))
    except KeyboardInterrupt:
        return exitcodes.CANCELLED
