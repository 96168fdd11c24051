"""Host files shared with one sandbox: readable by the sandbox's uid and the runner, no one else.

An attempt's runtime directory (script, input, token, event metadata, the API socket) is
bind-mounted read-only at ``/cronium``. On the host it is mode 0700 and its files 0600, owned by
the sandbox uid when the runner is root (the usual case: it drives the Docker engine), so another
host user — ``nobody``, a local login — can neither list it nor read the token and connect to the
socket as the execution. Root (the runner) reads everything anyway.

A runner that is not root cannot give files away; it then runs as the sandbox uid itself (the
files are its own), or falls back to world-readable modes and says so once in its log.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

import structlog

from consumers.container.runtime import SANDBOX_UID

log = structlog.get_logger(__name__)

_PRIVATE: Final = os.geteuid() in (0, SANDBOX_UID)
DIR_MODE: Final = 0o700 if _PRIVATE else 0o755
FILE_MODE: Final = 0o600 if _PRIVATE else 0o644
_warned: list[bool] = []


def give_to_sandbox(path: Path, mode: int) -> None:
    """Make ``path`` the sandbox uid's with ``mode`` (when the runner may give files away)."""
    if os.geteuid() == 0:
        os.chown(path, SANDBOX_UID, SANDBOX_UID, follow_symlinks=False)
    elif not _PRIVATE and not _warned:
        _warned.append(True)
        log.warning(
            "runtime files are world-readable: run the runner as root or as the sandbox uid",
            sandbox_uid=SANDBOX_UID,
            runner_uid=os.geteuid(),
        )
    path.chmod(mode)


def private_dir(path: Path) -> None:
    """Create (or take over) a runtime directory for one sandbox."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    give_to_sandbox(path, DIR_MODE)


def private_file(path: Path, data: bytes) -> None:
    """Write one file of a runtime directory, never following a link planted in its place."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    give_to_sandbox(path, FILE_MODE)
