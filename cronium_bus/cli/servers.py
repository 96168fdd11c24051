"""``cronium servers add|list|remove``: the servers the SSH runner may run scripts on."""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path
from typing import TypeAlias

from cronium_bus.bus import Bus
from cronium_bus.cli import exitcodes
from cronium_bus.cli.common import add_client_options, fail, run_client
from cronium_bus.cli.secret import seal
from cronium_bus.errors import CroniumError
from cronium_bus.servers import Server, check_name, parse_target

_Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_parsers(sub: _Sub) -> None:
    """Register ``cronium servers``."""
    p = sub.add_parser(
        "servers",
        help="manage the servers scripts can run on over SSH",
        description="Servers are reached over SSH with a private key (stored encrypted, like any "
        "secret, sealed by the service) and host keys that are always verified. A server "
        "belongs to whoever adds it; an admin's --shared servers are usable by the users it "
        "grants. A run's --target NAME is your own server NAME, else a shared one granted to you.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("add", help="add or replace a server")
    a.add_argument("name", metavar="NAME")
    a.add_argument("url", metavar="ssh://USER@HOST:PORT")
    a.add_argument("--key", type=Path, required=True, metavar="FILE", help="private key file")
    trust = a.add_mutually_exclusive_group(required=True)
    trust.add_argument(
        "--known-hosts",
        type=Path,
        metavar="FILE",
        help="known_hosts file with the server's host key",
    )
    trust.add_argument(
        "--host-key",
        metavar="LINE",
        help="the server's public host key, e.g. 'ssh-ed25519 AAAA...'",
    )
    a.add_argument(
        "--shared",
        action="store_true",
        help="an admin's server other users may run on (with --grant); default: your own",
    )
    a.add_argument(
        "--grant",
        action="append",
        default=[],
        metavar="USER",
        help="with --shared: a user who may run on it (repeat; * for everyone)",
    )
    add_client_options(a)
    a = actions.add_parser(
        "list", help="list the servers you may use (an admin: all) with their circuit state"
    )
    a.add_argument("--json", action="store_true")
    add_client_options(a)
    a = actions.add_parser("remove", help="forget one of your servers and its key")
    a.add_argument("name", metavar="NAME")
    a.add_argument("--shared", action="store_true", help="an admin's shared server")
    add_client_options(a)
    p.set_defaults(handler=main)


def known_hosts_text(host: str, port: int, known_hosts: Path | None, host_key: str | None) -> str:
    """known_hosts lines to trust for ``host:port`` (from a file, or one key line)."""
    if known_hosts is not None:
        return known_hosts.read_text()
    assert host_key is not None
    pattern = host if port == 22 else f"[{host}]:{port}"
    fields = host_key.split()
    if len(fields) < 2:
        raise ValueError("--host-key takes 'TYPE BASE64', e.g. 'ssh-ed25519 AAAA...'")
    return f"{pattern} {fields[0]} {fields[1]}\n"


async def register(
    bus: Bus,
    name: str,
    url: str,
    key: bytes,
    known_hosts: str,
    *,
    shared: bool = False,
    grant: tuple[str, ...] = (),
) -> Server:
    """Hand a server and its key to the sealing service (`servers add` and `run --target
    ssh://...`): it becomes the caller's own, or an admin's shared one with ``grant``."""
    check_name(name)
    user, host, port = parse_target(url)
    body = {
        "name": name,
        "user": user,
        "host": host,
        "port": port,
        "known_hosts": known_hosts,
        "key_b64": base64.b64encode(key).decode(),
        "shared": shared,
        "grant": list(grant),
    }
    await seal(bus, "add", body, family="servers")
    return Server(name=name, user=user, host=host, port=port, known_hosts=known_hosts)


def main(args: argparse.Namespace) -> int:
    """Entry point of ``cronium servers``."""
    key = b""
    known = ""
    if args.action == "add":
        try:
            key = args.key.read_bytes()
            _, host, port = parse_target(args.url)
            known = known_hosts_text(host, port, args.known_hosts, args.host_key)
        except OSError as exc:
            return fail(f"cannot read {exc.filename}: {exc.strerror}", code=exitcodes.USAGE)
        except (ValueError, CroniumError) as exc:
            return fail(str(exc), code=exitcodes.USAGE)

    if args.action == "add" and args.grant and not args.shared:
        return fail("--grant needs --shared", code=exitcodes.USAGE)

    async def body(bus: Bus) -> int:
        if args.action == "add":
            server = await register(
                bus, args.name, args.url, key, known, shared=args.shared, grant=tuple(args.grant)
            )
            whose = "shared" if args.shared else "yours"
            print(f"server {server.name} ({server.address}) added ({whose})")
            return exitcodes.OK
        if args.action == "remove":
            await seal(bus, "rm", {"name": args.name, "shared": args.shared}, family="servers")
            print(f"server {args.name} removed")
            return exitcodes.OK
        rows = await seal(bus, "list", {}, family="servers")
        if args.json:
            print(json.dumps(rows))
        else:
            for row in rows:
                print(
                    f"{row['name']!s:<20} {row['owner']!s:<12} {row['address']!s:<32} "
                    f"circuit {row['circuit']['state']}"
                )
        return exitcodes.OK

    return run_client(args, body)
