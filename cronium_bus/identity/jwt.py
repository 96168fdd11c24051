"""NATS JWTs (v2) and ``.creds`` files, signed with the official ``nkeys`` package.

A NATS JWT is ``header.claims.signature``: the header says ``ed25519-nkey``, the claims carry
``iss`` (the signer's public key), ``sub`` (the subject's public key), ``iat``, a ``jti`` and a
``nats`` object whose ``type`` is ``operator``, ``account`` or ``user``. nats-server verifies the
signature chain (operator → account → user, or through one of the account's signing keys); the
``jti`` is an identifier it does not recompute.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from typing import Any, Final

import nkeys

_HEADER: Final = {"typ": "JWT", "alg": "ed25519-nkey"}
_CREDS_JWT: Final = re.compile(r"-----BEGIN NATS USER JWT-----\s*(\S+)\s*------END NATS USER JWT")
_CREDS_SEED: Final = re.compile(r"-----BEGIN USER NKEY SEED-----\s*(\S+)\s*------END USER NKEY")

PREFIX: Final = {
    "operator": nkeys.PREFIX_BYTE_OPERATOR,
    "account": nkeys.PREFIX_BYTE_ACCOUNT,
    "user": nkeys.PREFIX_BYTE_USER,
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_seed(kind: str) -> str:
    """A fresh seed (``SO…``, ``SA…``, ``SU…``) for an operator, account or user key."""
    return str(nkeys.encode_seed(os.urandom(32), PREFIX[kind]).decode())


def keypair(seed: str) -> nkeys.KeyPair:
    """The key pair of a seed."""
    return nkeys.from_seed(seed.encode())


def public_key(seed: str) -> str:
    """The public key (``O…``, ``A…``, ``U…``) of a seed."""
    return str(keypair(seed).public_key.decode())


def encode(
    signer_seed: str,
    subject: str,
    name: str,
    nats: dict[str, Any],
    iat: int,
    *,
    exp: int | None = None,
) -> str:
    """A JWT for ``subject`` (a public key) named ``name``, signed by ``signer_seed``; it
    expires at ``exp`` (seconds since the epoch) when given."""
    signer = keypair(signer_seed)
    claims: dict[str, Any] = {
        "jti": "",
        "iat": iat,
        "iss": signer.public_key.decode(),
        "name": name,
        "sub": subject,
        "nats": {**nats, "version": 2},
    }
    if exp is not None:
        claims["exp"] = exp
    digest = hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()
    claims["jti"] = base64.b32encode(digest).rstrip(b"=").decode()
    head = _b64(json.dumps(_HEADER, separators=(",", ":")).encode())
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{head}.{body}"
    return f"{signing_input}.{_b64(signer.sign(signing_input.encode()))}"


def claims_of(token: str) -> dict[str, Any]:
    """The claims of a JWT (not verified: for reading names and keys of our own tokens)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT (expected header.claims.signature)")
    data = json.loads(_unb64(parts[1]))
    if not isinstance(data, dict):
        raise ValueError("JWT claims are not an object")  # noqa: TRY004 - a malformed token
    return data


def creds_text(user_jwt: str, user_seed: str) -> str:
    """The standard ``.creds`` file of a user (as ``nsc`` writes it)."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user_seed}\n"
        "------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )


def parse_creds(text: str) -> tuple[str, str]:
    """``(jwt, seed)`` of a ``.creds`` file's text, or ``ValueError`` naming what is missing."""
    token, seed = _CREDS_JWT.search(text), _CREDS_SEED.search(text)
    if token is None or seed is None:
        raise ValueError("not a NATS .creds file (no user JWT or no seed block)")
    return token.group(1), seed.group(1)
