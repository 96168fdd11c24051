"""The lock is what gets installed and tested: requirements/*.txt against pyproject and the venv."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import lockcheck  # noqa: E402

DEV_LOCK = ROOT / "requirements" / "dev.txt"
RUNTIME_LOCK = ROOT / "requirements" / "runtime.txt"


def _project() -> dict[str, list[str]]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {"runtime": data["dependencies"], **data["optional-dependencies"]}


def test_the_venv_is_exactly_the_lock() -> None:
    """Every locked package is installed at its locked version, and nothing else is."""
    assert lockcheck.differences(lockcheck.pins(DEV_LOCK.read_text()), lockcheck.installed()) == []


@pytest.mark.parametrize("group", ["runtime", "dev", "bench"])
def test_every_declared_dependency_is_locked_within_its_range(group: str) -> None:
    """A dependency added to pyproject.toml without `make lock` fails here, naming it."""
    locked = lockcheck.pins(DEV_LOCK.read_text())
    for spec in _project()[group]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name} is in pyproject.toml but not in the lock: run make lock"
        assert req.specifier.contains(locked[name], prereleases=True), (
            f"{req.name}=={locked[name]} is outside pyproject.toml's {req.specifier}: run make lock"
        )


def test_the_runtime_lock_is_the_dev_lock_without_the_tools() -> None:
    """A production host installs the same versions that were tested, and no test tools."""
    dev = lockcheck.pins(DEV_LOCK.read_text())
    runtime = lockcheck.pins(RUNTIME_LOCK.read_text())
    assert {n: dev.get(n) for n in runtime} == runtime
    assert not {"pytest", "mypy", "ruff", "hypothesis"} & set(runtime)


@pytest.mark.parametrize("lock", [DEV_LOCK, RUNTIME_LOCK], ids=["dev", "runtime"])
def test_every_pin_is_exact_and_hashed(lock: Path) -> None:
    """Each requirement is `name==version` with at least one sha256, so pip checks every file."""
    entries = list(lockcheck.logical_lines(lock.read_text().replace("--hash=", "HASH=")))
    assert entries
    for entry in entries:
        assert "==" in entry and "HASH=sha256:" in entry, entry


def test_differences_name_each_kind_of_drift() -> None:
    """Missing, different and unlocked packages are each reported; the project itself is not."""
    locked = {"msgspec": "0.23.0", "nats-py": "2.16.0", "ruff": "0.17.6"}
    present = {"msgspec": "0.22.0", "ruff": "0.17.6", "six": "1.16.0", "cronium-bus": "0.1.0"}
    assert lockcheck.differences(locked, present) == [
        "msgspec is 0.22.0, the lock says 0.23.0",
        "nats-py==2.16.0 is locked but not installed",
        "six==1.16.0 is installed but not in the lock",
    ]


def test_markers_select_the_pins_of_this_interpreter() -> None:
    """A universal lock's marker lines apply only where their marker holds."""
    text = (
        "numpy==2.4.6 ; python_full_version < '3.12' \\\n    --hash=sha256:aa\n"
        "numpy==2.5.5 ; python_full_version >= '3.12' \\\n    --hash=sha256:bb\n"
        "# via chdb\npywin32==312 ; sys_platform == 'win32' \\\n    --hash=sha256:cc\n"
    )
    linux_311 = {"python_full_version": "3.11.7", "sys_platform": "linux"}
    linux_313 = {"python_full_version": "3.13.1", "sys_platform": "linux"}
    assert lockcheck.pins(text, linux_311) == {"numpy": "2.4.6"}
    assert lockcheck.pins(text, linux_313) == {"numpy": "2.5.5"}


def test_a_loose_requirement_in_the_lock_is_refused() -> None:
    """A range or a bare name in the lock is an error, not something silently resolved later."""
    with pytest.raises(ValueError, match="not an exact pin"):
        lockcheck.pins("msgspec>=0.18 \\\n    --hash=sha256:aa\n")


def test_lockcheck_exits_1_naming_the_drift(tmp_path: Path) -> None:
    """The command CI runs fails, with the fix, when the lock and the venv disagree."""
    lock = tmp_path / "lock.txt"
    lock.write_text(DEV_LOCK.read_text() + "not-installed-anywhere==1.0 \\\n    --hash=sha256:00\n")
    assert lockcheck.main([str(lock)]) == 1
    assert lockcheck.main([str(DEV_LOCK)]) == 0
