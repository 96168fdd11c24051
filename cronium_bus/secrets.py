"""Secrets encrypted at rest in a NATS KV bucket (AES-256-GCM, key derived from settings).

The key comes from ``secret_key`` (``CRONIUM_SECRET_KEY``) or, when that is unset, from the key
file ``DATA_DIR/secret.key`` that ``cronium up`` creates (0600, 32 random bytes, hex) on its first
start — so ``cronium secret set`` works right after the quickstart. Each value is sealed with a
random nonce and the secret's name as associated data, so a ciphertext cannot be moved to another
name. Values are decrypted only in the runner's memory and handed to scripts through the
runtime API.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nats.js import JetStreamContext

from cronium_bus.errors import CroniumError, ErrorKind
from cronium_bus.ids import NAME_HINT, NAME_PATTERN
from cronium_bus.provision import bucket_keys, kv_value
from cronium_bus.settings import Settings
from cronium_bus.subjects import SECRETS_BUCKET

KEY_FILE: Final = "secret.key"
NAME_RE: Final = re.compile(NAME_PATTERN)
MAX_SECRET_BYTES: Final = 32 * 1024
MIN_SECRET_CHARS: Final = 3
"""The shortest secret (and line of a multi-line secret) that log masking can mask."""
_VERSION: Final = b"v1"


class SecretError(CroniumError):
    """A secret could not be stored or read."""

    kind: ErrorKind = "validation"


class SecretBox:
    """Seals and opens secret values with a key derived from the settings' ``secret_key``."""

    def __init__(self, secret_key: str) -> None:
        if len(secret_key) < 16:
            raise SecretError(
                "secret_key is too short (need at least 16 characters)",
                hint="generate one with `openssl rand -hex 32` and set CRONIUM_SECRET_KEY",
            )
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"cronium-secrets-v1"
        ).derive(secret_key.encode())
        self._aead = AESGCM(key)

    def seal(self, name: str, value: bytes) -> bytes:
        """Encrypt ``value`` bound to ``name``."""
        nonce = os.urandom(12)
        return _VERSION + nonce + self._aead.encrypt(nonce, value, name.encode())

    def open(self, name: str, sealed: bytes) -> bytes:
        """Decrypt a value sealed for ``name``."""
        if not sealed.startswith(_VERSION) or len(sealed) < len(_VERSION) + 12 + 16:
            raise SecretError(f"secret {name} is not in a known format")
        nonce, body = sealed[2:14], sealed[14:]
        try:
            return self._aead.decrypt(nonce, body, name.encode())
        except InvalidTag as exc:
            raise SecretError(
                f"secret {name} cannot be decrypted with the configured secret_key",
                hint="the key changed since it was stored: set it again with `cronium secret set`",
            ) from exc


def ensure_key_file(data_dir: Path) -> Path:
    """Create ``DATA_DIR/secret.key`` (0600, never overwritten) unless it exists; its path."""
    path = data_dir / KEY_FILE
    if path.exists():
        path.chmod(0o600)  # a copied or restored key file is kept private too
        return path
    # written whole under a temporary name, then linked into place: a reader never sees a
    # half-written key, and of two starts racing the first link wins
    tmp = data_dir / f".{KEY_FILE}.{os.getpid()}.{os.urandom(4).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink()
    return path


def box_from(settings: Settings) -> SecretBox:
    """The box for these settings (``secret_key``, else the data dir's key file), or a clear
    error when neither exists."""
    if settings.secret_key is not None:
        return SecretBox(settings.secret_key.get_secret_value())
    path = settings.data_dir / KEY_FILE
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        raise SecretError(
            f"no secret_key is configured and {path} does not exist",
            hint="start the stack once with `cronium up` (it creates the key file), or set "
            "CRONIUM_SECRET_KEY (e.g. `openssl rand -hex 32`) for the CLI and runners",
        ) from None
    except OSError as exc:
        raise SecretError(
            f"cannot read the key file {path}: {exc.strerror}",
            hint="run as the user that started `cronium up`, or set CRONIUM_SECRET_KEY",
        ) from exc
    return SecretBox(key)


def check_name(name: str) -> None:
    """Refuse names that are not safe as KV keys."""
    if not NAME_RE.fullmatch(name):
        raise SecretError(f"{name[:140]!r} is not a valid secret name", hint=NAME_HINT)


async def put_secret(js: JetStreamContext, box: SecretBox, name: str, value: bytes) -> None:
    """Store (or replace) a secret."""
    check_name(name)
    if len(value.strip()) < MIN_SECRET_CHARS:
        raise SecretError(
            f"the secret is shorter than {MIN_SECRET_CHARS} characters: it could not be masked "
            "in logs without masking ordinary text everywhere",
            hint=f"use a value of at least {MIN_SECRET_CHARS} characters",
        )
    if len(value) > MAX_SECRET_BYTES:
        raise SecretError(f"the secret is {len(value):,} bytes; the limit is {MAX_SECRET_BYTES:,}")
    kv = await js.key_value(SECRETS_BUCKET)
    await kv.put(name, box.seal(name, value))


async def get_secret(js: JetStreamContext, box: SecretBox, name: str) -> bytes:
    """Read and decrypt a secret; :class:`SecretError` when it does not exist."""
    check_name(name)
    sealed = await kv_value(js, SECRETS_BUCKET, name)
    if sealed is None:
        raise SecretError(
            f"secret {name} does not exist", hint=f"store it with `cronium secret set {name}`"
        )
    return box.open(name, sealed)


async def list_secrets(js: JetStreamContext) -> list[str]:
    """Names of stored secrets (never their values)."""
    return [
        key
        for key in await bucket_keys(js, SECRETS_BUCKET)
        if await kv_value(js, SECRETS_BUCKET, key) is not None  # removed: its marker only
    ]


async def delete_secret(js: JetStreamContext, name: str) -> None:
    """Remove a secret."""
    check_name(name)
    kv = await js.key_value(SECRETS_BUCKET)
    await kv.purge(name)


# --------------------------------------------------------------------------- ownership
#
# Keys in the bucket: ``u.<owner>.<name>`` is a user's own secret, ``shared.<name>`` one an admin
# created for the users in ``grant.<name>`` (a JSON list), ``ssh-key.<server>`` a registered
# server's private key (only the SSH runner reads those). The key is also the sealed value's
# associated data, so a ciphertext cannot be moved to another owner or name.

SHARED: Final = "shared"


def owned_key(owner: str, name: str) -> str:
    """The bucket key of ``owner``'s own secret ``name``."""
    check_name(name)
    return f"u.{owner}.{name}"


def shared_key(name: str) -> str:
    """The bucket key of the shared secret ``name``."""
    check_name(name)
    return f"{SHARED}.{name}"


def _grant_key(name: str) -> str:
    return f"grant.{name}"


async def grants_of(js: JetStreamContext, name: str) -> list[str]:
    """The users a shared secret is granted to (``*``: every user)."""
    raw = await kv_value(js, SECRETS_BUCKET, _grant_key(name))
    if raw is None:
        return []
    try:
        users = json.loads(raw)
    except ValueError:
        return []
    return [str(u) for u in users] if isinstance(users, list) else []


async def set_grants(js: JetStreamContext, name: str, users: list[str]) -> None:
    """Replace the users a shared secret is granted to."""
    kv = await js.key_value(SECRETS_BUCKET)
    await kv.put(_grant_key(name), json.dumps(sorted(set(users))).encode())


async def usable_key(js: JetStreamContext, owner: str, name: str) -> str | None:
    """The bucket key behind ``name`` for a request of ``owner``: their own secret, else a shared
    one granted to them; ``None`` when neither (the caller does not learn which exists)."""
    if await kv_value(js, SECRETS_BUCKET, owned_key(owner, name)) is not None:
        return owned_key(owner, name)
    grants = await grants_of(js, name)
    if (owner in grants or "*" in grants) and await kv_value(
        js, SECRETS_BUCKET, shared_key(name)
    ) is not None:
        return shared_key(name)
    return None


def not_usable(name: str) -> SecretError:
    """The refusal for a secret a requester may not use (never saying whether it exists)."""
    error = SecretError(
        f"secret {name!r} is not one of yours or shared with you",
        hint=f"store it with `cronium secret set {name}`, or ask an admin to share it with you",
    )
    error.kind = "permission"
    return error


async def open_for(js: JetStreamContext, box: SecretBox, owner: str, name: str) -> bytes:
    """Decrypt the secret ``name`` as a request of ``owner`` sees it."""
    key = await usable_key(js, owner, name)
    if key is None:
        raise not_usable(name)
    return await get_secret(js, box, key)


async def names_for(js: JetStreamContext, owner: str | None) -> list[str]:
    """The secret names ``owner`` may use (``None``: an admin's view, every key)."""
    keys = await list_secrets(js)
    if owner is None:
        return keys
    own = [k.removeprefix(f"u.{owner}.") for k in keys if k.startswith(f"u.{owner}.")]
    shared = [k.removeprefix(f"{SHARED}.") for k in keys if k.startswith(f"{SHARED}.")]
    granted = [n for n in shared if {owner, "*"} & set(await grants_of(js, n))]
    return sorted(set(own) | {f"{n} (shared)" for n in granted})
