"""``cronium user add|list|rm``: people's NATS credentials, issued and revoked by the installation.

These commands sign with the installation's keys in ``DATA_DIR/auth`` (the store ``cronium up``
creates), so they run on the stack's host as the user that runs ``cronium up``; anyone else gets
exit 77. ``rm`` also pushes the account's new revocation list to the running server, which closes
the removed user's connections at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import TypeAlias
from urllib.parse import urlencode

import nats
import nats.errors
from pydantic import ValidationError

from cronium_bus.bus import Bus
from cronium_bus.cli import exitcodes
from cronium_bus.cli.common import fail, settings_from
from cronium_bus.errors import BusUnavailableError, CroniumError
from cronium_bus.identity.authority import Authority, IdentityError
from cronium_bus.identity.roles import ROLES, Role
from cronium_bus.ids import is_valid_id
from cronium_bus.provision import kv_value
from cronium_bus.settings import Settings
from cronium_bus.subjects import META_BUCKET
from cronium_bus.units import parse_duration

_Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
_PUSH_TIMEOUT_S = 5.0


def add_parsers(sub: _Sub) -> None:
    """Register ``cronium user``."""
    p = sub.add_parser(
        "user",
        help="issue, list and revoke people's credentials",
        description="Each person connects with a standard NATS .creds file; nats-server checks "
        "it and applies the role's permissions (admin: everything; user: run, follow, cancel and "
        "query their own executions, keep their own secrets; auditor: read everyone's history, "
        "audit and logs, run nothing). Run on the stack's host "
        "as the user that runs `cronium up` (the keys are in DATA_DIR/auth).",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("add", help="issue NAME's credentials and print the file's path")
    a.add_argument("name", metavar="NAME")
    a.add_argument("--role", choices=ROLES, default="user", help="what NAME may do (default user)")
    a.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="where to write the .creds file (default DATA_DIR/auth/users/NAME.creds), 0600",
    )
    ls = actions.add_parser("list", help="users, their roles and whether they are revoked")
    ls.add_argument("--json", action="store_true", help="one JSON object per user")
    rm = actions.add_parser("rm", help="revoke NAME: refuse new connections, close live ones")
    rm.add_argument("name", metavar="NAME")
    tok = actions.add_parser(
        "token",
        help="a short-lived bearer credential for NAME (a browser over WebSocket)",
        description="Print a bearer JWT for NAME with exactly NAME's permissions, valid for "
        "--ttl: it needs no private key, so treat it as a password; `user rm NAME` revokes it "
        "with NAME's credentials. Browsers connect to the WebSocket URL `cronium up` prints.",
    )
    tok.add_argument("name", metavar="NAME")
    tok.add_argument("--ttl", default="1h", metavar="DUR", help="how long it is valid (default 1h)")
    tok.add_argument(
        "--url",
        action="store_true",
        help="print a link to the running stack's web console that signs in as NAME (the "
        "credential is in the link's fragment, which browsers never send to a server)",
    )
    tok.add_argument(
        "--execution", metavar="ID", help="with --url: open this execution's live view"
    )
    conf = actions.add_parser(
        "nats-config",
        help="write the auth part of a deployed nats-server's config (deploy/nats)",
        description="Create the installation's keys in DATA_DIR/auth unless they exist, write "
        "the stack's own credentials there (admin, service, sys) and write FILE: the operator, "
        "the accounts and a full JWT resolver, for `include ./auth.conf` in deploy/nats/"
        "single.conf or cluster.conf (the same file on every node). Run it again after "
        "adding a role or moving keys; people are added with `cronium user add` as usual.",
    )
    conf.add_argument("--out", type=Path, required=True, metavar="FILE", help="e.g. auth.conf")
    conf.add_argument(
        "--resolver-dir",
        default="$NATS_RESOLVER_DIR",
        metavar="DIR",
        help="where nats-server keeps account JWTs (default: $NATS_RESOLVER_DIR, read by the "
        "server from its environment)",
    )
    for parser in (a, ls, rm, tok, conf):
        parser.add_argument(
            "--data-dir",
            type=Path,
            metavar="DIR",
            help="the stack's data dir (default: $CRONIUM_DATA_DIR or ~/.local/share/cronium)",
        )
        parser.add_argument(
            "--nats-url", metavar="URL", help="the running stack (for rm; default as elsewhere)"
        )
        parser.add_argument("--config", metavar="FILE", type=Path, help="TOML settings file")
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    """Entry point of ``cronium user``."""
    try:
        settings = settings_from(args, data_dir=args.data_dir)
    except (ValidationError, FileNotFoundError) as exc:
        return fail(f"invalid settings: {exc}", "see `cronium config`", exitcodes.USAGE)
    try:
        if args.action == "nats-config":
            return _nats_config(settings.data_dir / "auth", args.out, args.resolver_dir)
        authority = Authority.load(settings.data_dir / "auth")
        if args.action == "add":
            return _add(authority, args.name, args.role, args.out)
        if args.action == "list":
            return _list(authority, as_json=args.json)
        if args.action == "token":
            return _token(authority, args, settings)
        return _rm(authority, settings, args.name)
    except IdentityError as exc:
        refused = "cannot read" in exc.message
        return fail(exc.message, exc.hint, exitcodes.PERMISSION if refused else exitcodes.USAGE)
    except PermissionError as exc:
        return fail(
            f"not permitted: {exc.strerror} ({exc.filename})",
            "run as the user that runs `cronium up`",
            exitcodes.PERMISSION,
        )


def _token(authority: Authority, args: argparse.Namespace, settings: Settings) -> int:
    name, ttl = args.name, args.ttl
    try:
        seconds = parse_duration(ttl)
    except ValueError as exc:
        return fail(f"--ttl: {exc}", "e.g. 15m, 1h, 1d", exitcodes.USAGE)
    if not 1 <= seconds <= 30 * 86400:
        return fail("--ttl is between 1s and 30d", code=exitcodes.USAGE)
    if args.execution is not None and (not args.url or not is_valid_id(args.execution)):
        return fail("--execution takes an execution id, with --url", code=exitcodes.USAGE)
    token = authority.token(name, seconds)
    if not args.url:
        print(token)
        print(f"a bearer credential for {name}, valid {ttl}: keep it secret", file=sys.stderr)
        return exitcodes.OK
    try:
        console, websocket = asyncio.run(_console_of(settings))
    except BusUnavailableError as exc:
        return fail(exc.message, exc.hint, exitcodes.UNAVAILABLE)
    if console is None or websocket is None:
        return fail(
            "the stack serves no web console", "start it with `cronium up`", exitcodes.FAILURE
        )
    fragment = urlencode(
        {"ws": websocket, "user": name, "token": token}
        | ({"execution": args.execution} if args.execution else {})
    )
    print(f"{console}#{fragment}")
    print(f"signs in as {name} for {ttl}: share it only with {name}", file=sys.stderr)
    return exitcodes.OK


async def _console_of(settings: Settings) -> tuple[str | None, str | None]:
    """The running stack's console and WebSocket URLs (as `cronium up` recorded them)."""
    async with Bus(settings, name="cli-user") as bus:
        values = []
        for key in ("console", "websocket"):
            raw = await kv_value(bus.js, META_BUCKET, key)
            values.append(raw.decode() if raw else None)
        return values[0], values[1]


def _add(authority: Authority, name: str, role: Role, out: Path | None) -> int:
    creds = authority.issue(name, role)
    path = out or authority.directory / "users" / f"{name}.creds"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(creds)
    print(path)
    print(f"user {name} ({role}) can connect with --creds {path}", file=sys.stderr)
    return exitcodes.OK


def _nats_config(directory: Path, out: Path, resolver_dir: str) -> int:
    authority = Authority.load_or_create(directory)
    authority.save()
    creds = authority.write_stack_creds()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        "# Written by `cronium user nats-config`: the operator, the SYS and CRONIUM accounts\n"
        "# and a full resolver. No secrets in here (JWTs are public); keep DATA_DIR/auth private.\n"
        + authority.server_config(resolver_dir)
    )
    print(out)
    for name, path in creds.items():
        print(f"{name} credentials: {path}", file=sys.stderr)
    return exitcodes.OK


def _list(authority: Authority, *, as_json: bool) -> int:
    for user in sorted(authority.users.values(), key=lambda u: u.name):
        state = "revoked" if user.revoked_at is not None else "active"
        if as_json:
            print(json.dumps({**vars(user), "state": state}))
        else:
            issued = time.strftime("%Y-%m-%d %H:%M", time.gmtime(user.issued_at))
            print(f"{user.name:<24} {user.role:<8} {state:<8} issued {issued} UTC")
    return exitcodes.OK


def _rm(authority: Authority, settings: Settings, name: str) -> int:
    authority.revoke(name)
    account = authority.account_jwt()
    authority.save()  # the new iat
    try:
        reply = asyncio.run(_push(settings.nats_url, authority.directory / "sys.creds", account))
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        print(
            f"user {name} revoked; the running server was not told ({exc or type(exc).__name__}): "
            "it applies at the next `cronium up`",
            file=sys.stderr,
        )
        return exitcodes.UNAVAILABLE
    if '"code":200' not in reply.replace(" ", ""):
        return fail(f"the server did not take the update: {reply}", "see its log")
    print(f"user {name} revoked: new connections refused, live ones closed", file=sys.stderr)
    try:  # what runs as them without a connection of theirs: their schedules
        paused = asyncio.run(_pause_schedules(settings, name))
    except (CroniumError, OSError, TimeoutError, nats.errors.Error) as exc:
        print(
            f"their schedules could not be paused ({exc}): `cronium schedule list --user {name}`",
            file=sys.stderr,
        )
        return exitcodes.FAILURE
    if paused:
        print(f"paused {name}'s schedules: {', '.join(paused)}", file=sys.stderr)
    return exitcodes.OK


async def _pause_schedules(settings: Settings, name: str) -> list[str]:
    """Pause every active schedule of a removed user (they fire as that user)."""
    from cronium_bus.cli.schedule import ask

    async with Bus(settings, name="cli-user") as bus:
        rows = await ask(bus, "list", {"owner": name})
        out = []
        for row in rows:
            if row["state"] == "active":
                await ask(bus, "pause", {"name": row["name"], "owner": name})
                out.append(row["name"])
        return out


async def _push(url: str, sys_creds: Path, account_jwt: str) -> str:
    """Send the account JWT to the server through the system account; its reply."""
    nc = await nats.connect(
        servers=[u.strip() for u in url.split(",") if u.strip()],
        user_credentials=str(sys_creds),
        allow_reconnect=False,
        connect_timeout=2,
        name="cronium-user-rm",
    )
    try:
        msg = await nc.request("$SYS.REQ.CLAIMS.UPDATE", account_jwt.encode(), _PUSH_TIMEOUT_S)
        return msg.data.decode(errors="replace")
    finally:
        await nc.close()
