"""``cronium secret set|list|rm``: secrets encrypted at rest, for scripts to read at run time."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import TypeAlias

from cronium_bus.bus import Bus
from cronium_bus.cli import exitcodes
from cronium_bus.cli.common import add_client_options, run_client
from cronium_bus.provision import provision
from cronium_bus.secrets import box_from, delete_secret, list_secrets, put_secret

_Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_parsers(sub: _Sub) -> None:
    """Register ``cronium secret``."""
    p = sub.add_parser(
        "secret",
        help="store secrets for scripts (encrypted at rest)",
        description="Secrets are encrypted with CRONIUM_SECRET_KEY and stored in NATS. A request "
        "names the secrets it needs (cronium run --secret NAME); the script reads them with "
        "cronium.secret(NAME) / cronium_secret NAME. They are never put in environment "
        "variables or on disk, and are masked in every log line.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = actions.add_parser("set", help="store a secret; the value is read from stdin or a prompt")
    s.add_argument("name", metavar="NAME")
    add_client_options(s)
    s = actions.add_parser("list", help="list secret names (never values)")
    add_client_options(s)
    s = actions.add_parser("rm", help="remove a secret")
    s.add_argument("name", metavar="NAME")
    add_client_options(s)
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    """Entry point of ``cronium secret``."""
    value = b""
    if args.action == "set":
        # from a pipe, or typed without echo; never from the command line (shell history, ps)
        text = sys.stdin.read() if not sys.stdin.isatty() else getpass.getpass(f"{args.name}: ")
        value = text.removesuffix("\n").encode()

    async def body(bus: Bus) -> int:
        await provision(bus.js, bus.settings)
        if args.action == "set":
            await put_secret(bus.js, box_from(bus.settings), args.name, value)
            print(f"secret {args.name} stored", file=sys.stderr)
        elif args.action == "list":
            for name in await list_secrets(bus.js):
                print(name)
        else:
            await delete_secret(bus.js, args.name)
            print(f"secret {args.name} removed", file=sys.stderr)
        return exitcodes.OK

    return run_client(args, body)
