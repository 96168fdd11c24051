"""Check that a venv holds exactly the lock: the same packages at the same versions, no more.

``python scripts/lockcheck.py requirements/dev.txt`` (run with the venv's python) prints each
difference and exits 1 when there is any, 0 when the venv matches. ``make setup`` runs it after
every install and ``make test`` before the suite, so a hand-installed package, a drifted pin or a
half-finished install fails loudly instead of being tested by accident.

The lock is uv's universal ``requirements.txt`` format: ``name==version ; marker`` lines with
``--hash`` continuations. A line whose marker does not hold here (another Python, another OS) is
not expected in this venv.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name

# Distributions a venv may hold that the lock does not list: the project itself (installed
# editable from the checkout, not from an index).
NOT_LOCKED = frozenset({"cronium-bus"})

_PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;]+)\s*(?:;(?P<marker>.*))?$"
)


def logical_lines(text: str) -> Iterable[str]:
    """The lock's requirement lines, continuations joined, comments and hashes dropped."""
    joined = re.sub(r"\\\n", " ", text)
    for raw in joined.splitlines():
        line = raw.split("#", 1)[0] if raw.lstrip().startswith("#") else raw
        line = re.sub(r"\s--hash=\S+", "", line).strip()
        if line:
            yield line


def pins(text: str, environment: Mapping[str, str] | None = None) -> dict[str, str]:
    """Canonical name → version of every lock line whose marker holds in ``environment``."""
    out: dict[str, str] = {}
    for line in logical_lines(text):
        match = _PIN.match(line)
        if match is None:
            raise ValueError(
                f"not an exact pin: {line!r} (the lock holds only name==version lines)"
            )
        marker = match["marker"]
        if marker and not Marker(marker.strip()).evaluate(dict(environment or {}) or None):
            continue
        out[canonicalize_name(match["name"])] = match["version"]
    return out


def installed() -> dict[str, str]:
    """Canonical name → version of every distribution in the running interpreter's environment."""
    return {
        canonicalize_name(d.metadata["Name"]): d.version
        for d in metadata.distributions()
        if d.metadata["Name"]
    }


def differences(
    locked: Mapping[str, str], present: Mapping[str, str], allowed: frozenset[str] = NOT_LOCKED
) -> list[str]:
    """Every way ``present`` differs from ``locked``, one sentence each, sorted by package."""
    problems: list[tuple[str, str]] = []
    for name, version in locked.items():
        have = present.get(name)
        if have is None:
            problems.append((name, f"{name}=={version} is locked but not installed"))
        elif have != version:
            problems.append((name, f"{name} is {have}, the lock says {version}"))
    for name, version in present.items():
        if name not in locked and name not in allowed:
            problems.append((name, f"{name}=={version} is installed but not in the lock"))
    return [text for _, text in sorted(problems)]


def main(argv: list[str]) -> int:
    """Compare the running venv with the lock file named in ``argv``."""
    if len(argv) != 1 or argv[0] in {"-h", "--help"}:
        print(__doc__.strip(), file=sys.stderr)
        return 0 if argv and argv[0] in {"-h", "--help"} else 2
    lock = Path(argv[0])
    problems = differences(pins(lock.read_text()), installed())
    for problem in problems:
        print(f"[lock] {problem}", file=sys.stderr)
    if problems:
        print(
            f"[lock] the venv differs from {lock}: rebuild it with `rm -rf .venv && make setup`",
            file=sys.stderr,
        )
        return 1
    print(f"[lock] venv matches {lock} ({len(pins(lock.read_text()))} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
