"""Host files shared with one sandbox: readable by the sandbox's uid and the runner, no one else.

An attempt's runtime directory (script, input, token, event metadata, the API socket) is
bind-mounted read-only at ``/cronium``. On the host, when the runner is root (the usual case: it
drives the Docker engine):

- the directory stays **root's**, group the sandbox's gid, mode 0750: the sandbox may list and
  enter it, other users may not enter it, and no one but root may create, replace or link
  anything in it — so nothing can be swapped under the runner;
- each file and the socket are the **sandbox uid's**, mode 0600, set on the open descriptor
  (files) or on a path only root can change (the socket): another host user — ``nobody``, a local
  login — can neither read the token nor connect to the socket as the execution.

Only a host account with the sandbox's uid (1000) could read them; the default runtime root is
inside the data dir that ``cronium up`` keeps 0700, which no such account can enter.

A runner that is not root cannot give files away: as the sandbox uid the files are its own
anyway; otherwise it falls back to world-readable files and a world-connectable socket (0666:
connecting needs write permission), and says so once in its log.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

import structlog

from consumers.container.runtime import SANDBOX_UID

log = structlog.get_logger(__name__)

_ROOT: Final = os.geteuid() == 0
_PRIVATE: Final = _ROOT or os.geteuid() == SANDBOX_UID
DIR_MODE: Final = 0o750 if _ROOT else 0o700 if _PRIVATE else 0o755
FILE_MODE: Final = 0o600 if _PRIVATE else 0o644
SOCKET_MODE: Final = 0o600 if _PRIVATE else 0o666
_warned: list[bool] = []


def _warn_once() -> None:
    if not _PRIVATE and not _warned:
        _warned.append(True)
        log.warning(
            "runtime files are world-readable: run the runner as root or as the sandbox uid",
            sandbox_uid=SANDBOX_UID,
            runner_uid=os.geteuid(),
        )


def private_dir(path: Path) -> None:
    """Create (or take over) a runtime directory for one sandbox."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    if _ROOT:
        os.chown(path, 0, SANDBOX_UID, follow_symlinks=False)  # the image's gid equals its uid
    path.chmod(DIR_MODE)
    _warn_once()


def private_file(path: Path, data: bytes) -> None:
    """Write one file of a runtime directory, never following a link planted in its place."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        if _ROOT:
            os.fchown(f.fileno(), SANDBOX_UID, SANDBOX_UID)
        os.fchmod(f.fileno(), FILE_MODE)


def private_socket(path: Path) -> None:
    """Give the API socket to the sandbox uid (its directory is root's: nothing can swap it)."""
    if _ROOT:
        os.chown(path, SANDBOX_UID, SANDBOX_UID, follow_symlinks=False)
    path.chmod(SOCKET_MODE)


RUNNER_MARK = ".runner"
"""In each runtime dir: which runner made it (runners of one installation share the root)."""


def mark_runner(path: Path, runner_id: str) -> None:
    """Record which runner made ``path`` (the reaper of another runner leaves it alone)."""
    (path / RUNNER_MARK).write_text(runner_id)


def runner_of(path: Path) -> str:
    """The runner that made ``path`` (empty when unknown)."""
    try:
        return (path / RUNNER_MARK).read_text().strip()
    except OSError:
        return ""
