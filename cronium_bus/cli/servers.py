"""``cronium servers add|list|remove``: the servers the SSH runner may run scripts on."""

from __future__ import annotations

import argparse
import base64
import json
import time
from pathlib import Path
from typing import TypeAlias

import msgspec

from cronium_bus.bus import Bus
from cronium_bus.cli import exitcodes
from cronium_bus.cli.common import add_client_options, fail, run_client
from cronium_bus.errors import CroniumError
from cronium_bus.provision import kv_value, provision
from cronium_bus.servers import (
    CircuitState,
    Server,
    check_name,
    circuit_key,
    list_servers,
    parse_target,
    remove_server,
    save_server,
)
from cronium_bus.subjects import CIRCUITS_BUCKET

_Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_parsers(sub: _Sub) -> None:
    """Register ``cronium servers``."""
    p = sub.add_parser(
        "servers",
        help="manage the servers scripts can run on over SSH",
        description="Servers are reached over SSH with a private key (stored encrypted, like any "
        "secret, sealed by the service) and host keys that are always verified.",
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
    add_client_options(a)
    a = actions.add_parser("list", help="list servers with their circuit state")
    a.add_argument("--json", action="store_true")
    add_client_options(a)
    a = actions.add_parser("remove", help="forget a server and its key")
    a.add_argument("name", metavar="NAME")
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


async def register(bus: Bus, name: str, url: str, key: bytes, known_hosts: str) -> Server:
    """Store a server and its key (shared by `servers add` and `run --target ssh://...`)."""
    check_name(name)
    user, host, port = parse_target(url)
    server = Server(name=name, user=user, host=host, port=port, known_hosts=known_hosts)
    await provision(bus.js, bus.settings)
    from cronium_bus.cli.secret import seal

    await seal(bus, "set", {"name": server.key_secret, "value_b64": base64.b64encode(key).decode()})
    await save_server(bus.js, server)
    return server


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

    async def body(bus: Bus) -> int:
        if args.action == "add":
            server = await register(bus, args.name, args.url, key, known)
            print(f"server {server.name} ({server.address}) added")
            return exitcodes.OK
        if args.action == "remove":
            await remove_server(bus.js, args.name)
            from cronium_bus.cli.secret import seal

            await seal(bus, "rm", {"name": f"ssh-key.{args.name}"})
            print(f"server {args.name} removed")
            return exitcodes.OK
        await provision(bus.js, bus.settings)
        rows: list[dict[str, str | dict[str, str]]] = []
        for server in await list_servers(bus.js):
            stored = await kv_value(bus.js, CIRCUITS_BUCKET, circuit_key(server.host, server.port))
            circuit: dict[str, str] = {"state": "closed"}  # no runner has tried this host yet
            if stored is not None:
                c = msgspec.json.decode(stored, type=CircuitState)
                circuit = {
                    "state": c.state,
                    "failures": str(c.failures),
                    "retry_in_s": str(c.retry_in_s),
                    "last_error": c.last_error,
                    "age_s": f"{time.time() - c.at:.0f}",
                }
            rows.append({"name": server.name, "address": server.address, "circuit": circuit})
        if args.json:
            print(json.dumps(rows))
        else:
            for server_row in rows:
                circuit_row = server_row["circuit"]
                assert isinstance(circuit_row, dict)
                print(
                    f"{server_row['name']!s:<20} {server_row['address']!s:<32} "
                    f"circuit {circuit_row['state']}"
                )
        return exitcodes.OK

    return run_client(args, body)
