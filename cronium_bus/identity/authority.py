"""The keys, users and revocations of one installation, and the nats-server config they give.

Kept in ``DATA_DIR/auth`` (0700): ``authority.json`` (0600) holds the operator, system-account
and ``CRONIUM``-account seeds, one scoped signing key per role, the users issued and the
revocations; ``*.creds`` files are the standard credentials of the stack's own identities
(``admin``, ``service``, and ``sys`` for pushing account updates). Whoever can read this
directory is the installation's root of trust: it is the ``nsc`` store of this deployment.

Every start re-issues both account JWTs with a newer ``iat`` (nats-server's full resolver keeps
the newest), so the server always has the current revocations. Removing a user adds their key
to the account's ``revocations`` and pushes the account JWT to the running server through the
system account (``$SYS.REQ.CLAIMS.UPDATE``): nats-server then closes the user's live connections
and refuses new ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cronium_bus.errors import CroniumError
from cronium_bus.identity import jwt
from cronium_bus.identity.roles import ROLES, SERVICE, Role, template

NAME_RE: Final = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
ACCOUNT: Final = "CRONIUM"
SYSTEM: Final = "SYS"
_STATE: Final = "authority.json"
_UNLIMITED: Final = {"subs": -1, "data": -1, "payload": -1}
_ACCOUNT_LIMITS: Final = {
    **_UNLIMITED,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
}
_JETSTREAM: Final = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
STACK_IDENTITIES: Final = ("admin", SERVICE, "sys")


class IdentityError(CroniumError):
    """A user name, role or credential is not usable."""


def check_name(name: str) -> None:
    """Refuse a user name that is not a NATS subject token we can template on."""
    if not NAME_RE.fullmatch(name):
        raise IdentityError(
            f"{name!r} is not a valid user name",
            hint="use 1-64 characters: a lowercase letter, then lowercase letters, digits, - or _",
        )


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (0600) atomically: a reader sees the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


@dataclass
class UserRecord:
    """One issued user credential."""

    name: str
    role: str
    public_key: str
    issued_at: int
    revoked_at: int | None = None


WEB: Final = "web:"
"""Scopes of browser tokens: a role's permissions, as a bearer token, over WebSocket only."""
_SCOPES: Final = (*ROLES, *(f"{WEB}{role}" for role in ROLES))


def _scope_template(key: str) -> dict[str, Any]:
    """A scoped signing key's template: its role's permissions; a browser scope's tokens are
    bearer tokens (no private key needed) and connect over WebSocket only."""
    role = key.removeprefix(WEB)
    out = template(role)  # type: ignore[arg-type]
    if key.startswith(WEB):
        out = {**out, "bearer_token": True, "allowed_connection_types": ["WEBSOCKET"]}
    return out


@dataclass
class Authority:
    """The installation's operator, accounts, signing keys and users (see module docstring)."""

    directory: Path
    operator: str
    system_account: str
    account: str
    role_keys: dict[str, str]
    users: dict[str, UserRecord] = field(default_factory=dict)
    iats: dict[str, int] = field(default_factory=dict)
    revoked: dict[str, int] = field(default_factory=dict)
    """Every revoked user key and when — never pruned, so re-adding a name never revives old
    credentials."""

    # ------------------------------------------------------------------ storage

    @classmethod
    def load_or_create(cls, directory: Path) -> Authority:
        """Open the authority in ``directory``, creating keys on first use."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        directory.chmod(0o700)
        path = directory / _STATE
        if path.is_file():
            return cls.load(directory)
        made = cls(
            directory=directory,
            operator=jwt.new_seed("operator"),
            system_account=jwt.new_seed("account"),
            account=jwt.new_seed("account"),
            role_keys={key: jwt.new_seed("account") for key in _SCOPES},
        )
        made.save()
        return made

    @classmethod
    def load(cls, directory: Path) -> Authority:
        """Open an existing authority, or say how to make one."""
        path = directory / _STATE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise IdentityError(
                f"no identity store at {directory}",
                hint="start the stack once with `cronium up --data-dir DIR` (it creates one)",
            ) from None
        except PermissionError:
            raise IdentityError(
                f"cannot read {path}",
                hint="user management needs the installation's keys: run it as the user "
                "that runs `cronium up`",
            ) from None
        return cls(
            directory=directory,
            operator=data["operator"],
            system_account=data["system_account"],
            account=data["account"],
            # a role (or scope) added since this store was made gets its signing key now
            role_keys={k: data["role_keys"].get(k) or jwt.new_seed("account") for k in _SCOPES},
            users={n: UserRecord(**u) for n, u in data["users"].items()},
            iats=data.get("iats", {}),
            revoked=data.get("revoked", {}),
        )

    def save(self) -> None:
        """Write the state file (0600, atomically)."""
        data = {
            "operator": self.operator,
            "system_account": self.system_account,
            "account": self.account,
            "role_keys": self.role_keys,
            "users": {n: vars(u) for n, u in sorted(self.users.items())},
            "iats": self.iats,
            "revoked": self.revoked,
        }
        _write_private(self.directory / _STATE, json.dumps(data, indent=2) + "\n")

    # ------------------------------------------------------------------ JWTs

    def _iat(self, subject: str) -> int:
        """A strictly newer ``iat`` for each re-issue of ``subject``'s JWT."""
        iat = max(int(time.time()), self.iats.get(subject, 0) + 1)
        self.iats[subject] = iat
        return iat

    @property
    def account_key(self) -> str:
        """The ``CRONIUM`` account's public key."""
        return jwt.public_key(self.account)

    @property
    def system_key(self) -> str:
        """The system account's public key."""
        return jwt.public_key(self.system_account)

    def operator_jwt(self) -> str:
        """The operator JWT (names the system account)."""
        op = jwt.public_key(self.operator)
        return jwt.encode(
            self.operator,
            op,
            "cronium",
            {"type": "operator", "system_account": self.system_key},
            self._iat(op),
        )

    def account_jwt(self) -> str:
        """The ``CRONIUM`` account: JetStream, one scoped signing key per role, revocations."""
        scopes = [
            {
                "kind": "user_scope",
                "key": jwt.public_key(seed),
                "role": key,
                "description": f"cronium role {key}",
                "template": _scope_template(key),
            }
            for key, seed in sorted(self.role_keys.items())
        ]
        revocations = dict(self.revoked)
        claims: dict[str, Any] = {
            "type": "account",
            "limits": {**_ACCOUNT_LIMITS, **_JETSTREAM},
            "default_permissions": {"pub": {}, "sub": {}},
            "signing_keys": scopes,
        }
        if revocations:
            claims["revocations"] = revocations
        return jwt.encode(
            self.operator, self.account_key, ACCOUNT, claims, self._iat(self.account_key)
        )

    def system_jwt(self) -> str:
        """The system account (monitoring and account updates)."""
        return jwt.encode(
            self.operator,
            self.system_key,
            SYSTEM,
            {"type": "account", "limits": _ACCOUNT_LIMITS},
            self._iat(self.system_key),
        )

    def server_config(self, resolver_dir: Path | str) -> str:
        """The auth part of nats-server's configuration (full resolver, accounts preloaded).
        ``resolver_dir`` is a path, or a ``$VARIABLE`` the server reads from its environment."""
        where = resolver_dir if str(resolver_dir).startswith("$") else repr(str(resolver_dir))
        return (
            f"operator: {self.operator_jwt()}\n"
            f"system_account: {self.system_key}\n"
            f"resolver: {{\n  type: full\n  dir: {where}\n"
            '  allow_delete: false\n  interval: "2m"\n  timeout: "1.9s"\n}\n'
            "resolver_preload: {\n"
            f"  {self.system_key}: {self.system_jwt()}\n"
            f"  {self.account_key}: {self.account_jwt()}\n"
            "}\n"
        )

    # ------------------------------------------------------------------ credentials

    def _stack_creds(self, name: str) -> str:
        """Credentials of a stack identity: admin and service in the account, sys in SYS."""
        seed = jwt.new_seed("user")
        account_seed = self.system_account if name == "sys" else self.account
        token = jwt.encode(
            account_seed,
            jwt.public_key(seed),
            name,
            {"type": "user", **_UNLIMITED, "pub": {}, "sub": {}},
            int(time.time()),
        )
        return jwt.creds_text(token, seed)

    def write_stack_creds(self) -> dict[str, Path]:
        """(Re)write ``admin``, ``service`` and ``sys`` credentials; their paths."""
        paths: dict[str, Path] = {}
        for name in STACK_IDENTITIES:
            path = self.directory / f"{name}.creds"
            if not path.is_file():
                _write_private(path, self._stack_creds(name))
            paths[name] = path
        return paths

    def issue(self, name: str, role: Role) -> str:
        """A new ``.creds`` for user ``name`` with ``role`` (signed by the role's scoped key)."""
        check_name(name)
        if name in STACK_IDENTITIES:
            raise IdentityError(f"{name!r} is reserved for the stack's own identities")
        current = self.users.get(name)
        if current is not None and current.revoked_at is None:
            raise IdentityError(
                f"user {name!r} exists",
                hint=f"remove it first with `cronium user rm {name}` to issue new credentials",
            )
        seed = jwt.new_seed("user")
        issued = int(time.time())
        if current is not None and current.revoked_at is not None:
            issued = max(issued, current.revoked_at + 1)  # after the old key's revocation
        token = jwt.encode(
            self.role_keys[role],
            jwt.public_key(seed),
            name,
            {"type": "user", "issuer_account": self.account_key, "tags": [f"role:{role}"]},
            issued,
        )
        self.users[name] = UserRecord(
            name=name, role=role, public_key=jwt.public_key(seed), issued_at=issued
        )
        self.save()
        return jwt.creds_text(token, seed)

    def token(self, name: str, ttl_s: float) -> str:
        """A short-lived bearer JWT for ``name`` (for a browser over WebSocket): the same key
        and role as their credentials, so it has exactly their permissions and ``user rm``
        revokes it too; it needs no private key to use, and expires after ``ttl_s``."""
        user = self.users.get(name)
        if user is None or user.revoked_at is not None:
            raise IdentityError(f"no user {name!r}", hint="add them with `cronium user add`")
        now = int(time.time())
        return jwt.encode(
            self.role_keys[f"{WEB}{user.role}"],
            user.public_key,
            name,
            {
                "type": "user",
                "issuer_account": self.account_key,
                "tags": [f"role:{user.role}"],
                # bearer and WebSocket-only come from the scope's template (a scoped user's
                # own claims may set no limits)
            },
            max(now, user.issued_at),
            exp=now + max(1, int(ttl_s)),
        )

    def revoke(self, name: str) -> UserRecord:
        """Mark ``name``'s credentials revoked (call :meth:`account_jwt` and push it after)."""
        user = self.users.get(name)
        if user is None or user.revoked_at is not None:
            raise IdentityError(f"no user {name!r}", hint="`cronium user list` shows the users")
        user.revoked_at = max(int(time.time()), user.issued_at)
        self.revoked[user.public_key] = user.revoked_at
        self.save()
        return user


def identity_of(creds: Path) -> tuple[str, str | None]:
    """``(name, role)`` of a ``.creds`` file; ``role`` is ``None`` for the stack's identities
    (signed by the account itself). Read from the JWT for choosing what to ask for: what the
    identity may actually do is what nats-server enforces."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        token, _ = jwt.parse_creds(creds.read_text())
        claims = jwt.claims_of(token)
        tags = claims.get("nats", {}).get("tags") or []
        roles = [t.removeprefix("role:") for t in tags if str(t).startswith("role:")]
        return str(claims.get("name", "")), roles[0] if roles else None
    raise IdentityError(f"cannot read credentials {creds}", hint="pass a readable --creds FILE")
