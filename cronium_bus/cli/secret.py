"""``cronium secret set|list|rm``: secrets encrypted at rest, for scripts to read at run time.

The CLI never holds the key: it hands the value to the sealing service
(``consumers/secrets``) over its authenticated connection, which stores it under the caller's
own name (see that module for who may do what).
"""

from __future__ import annotations

import argparse
import base64
import getpass
import sys
from typing import Any, TypeAlias

import msgspec

from cronium_bus.bus import Bus
from cronium_bus.cli import exitcodes
from cronium_bus.cli.common import add_client_options, run_client
from cronium_bus.errors import CroniumError, PermissionDeniedError
from cronium_bus.secrets import SecretError, check_name

_SEAL_TIMEOUT_S = 10.0

_Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_parsers(sub: _Sub) -> None:
    """Register ``cronium secret``."""
    p = sub.add_parser(
        "secret",
        help="store secrets for scripts (encrypted at rest)",
        description="Secrets are sealed by the service (you never hold the key) and stored in "
        "NATS under your own name. A request names the secrets it needs (cronium run --secret "
        "NAME): its owner's own, or shared ones an admin granted them; the script reads them "
        "with cronium.secret(NAME) / cronium_secret NAME. They are never put in environment "
        "variables or on disk, and are masked in every log line.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = actions.add_parser("set", help="store a secret; the value is read from stdin or a prompt")
    s.add_argument("name", metavar="NAME")
    s.add_argument(
        "--shared", action="store_true", help="a shared secret (admins), usable by --grant users"
    )
    s.add_argument(
        "--grant",
        action="append",
        default=[],
        metavar="USER",
        help="with --shared: a user whose requests may name it (repeat; * for everyone)",
    )
    add_client_options(s)
    s = actions.add_parser("list", help="secret names you may use (never values)")
    add_client_options(s)
    s = actions.add_parser("rm", help="remove a secret")
    s.add_argument("name", metavar="NAME")
    s.add_argument("--shared", action="store_true", help="the shared secret NAME (admins)")
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
        if args.action == "set":
            check_name(args.name)
            body: dict[str, Any] = {
                "name": args.name,
                "value_b64": base64.b64encode(value).decode(),
                "shared": args.shared,
                "grant": args.grant,
            }
            await seal(bus, "set", body)
            print(f"secret {args.name} stored", file=sys.stderr)
        elif args.action == "list":
            for name in await seal(bus, "list", {}):
                print(name)
        else:
            await seal(bus, "rm", {"name": args.name, "shared": args.shared})
            print(f"secret {args.name} removed", file=sys.stderr)
        return exitcodes.OK

    return run_client(args, body)


async def seal(bus: Bus, action: str, body: dict[str, Any], *, family: str = "secrets") -> Any:
    """Ask the sealing service (``family`` secrets or servers), as this connection's identity;
    its result, or its refusal as an error (permission: exit 77, validation: exit 2)."""
    role = "admin" if bus.role in (None, "admin") else "user"
    # the same owner as this connection's requests: a user is themselves; the stack's
    # identities and admins act as the settings' user (whose runs then find the secret)
    subject = f"cronium.ctl.{family}.{role}.{bus.acting_user(None)}.{action}"
    reply = await bus.ask(
        subject, msgspec.json.encode(body), timeout=_SEAL_TIMEOUT_S, service="secrets service"
    )
    return result_of(reply, SecretError)


def result_of(reply: dict[str, Any], invalid: type[CroniumError]) -> Any:
    """A service's ``{"ok": …}`` reply: its result, or its refusal raised (permission: exit
    77, validation: ``invalid``, exit 2; anything else a plain :class:`CroniumError`)."""
    if reply.get("ok"):
        return reply.get("result")
    message, hint = str(reply.get("error", "refused")), str(reply.get("hint", ""))
    if reply.get("kind") == "permission":
        raise PermissionDeniedError(message, hint=hint)
    if reply.get("kind") == "validation":
        raise invalid(message, hint=hint)
    raise CroniumError(message, hint=hint)
