"""schemas/ is generated from the types; a producer in any language can validate against it."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cronium_bus import codec
from cronium_bus.schemagen import SCHEMA_DIR, clean, drift, normalized
from projections.ddl import SQL_FILE
from tests.helpers import requested


def test_schema_files_match_the_types() -> None:
    """No schema file is missing, stale or unexpected (run `make schemas` to fix)."""
    assert drift() == []


def test_a_request_validates_against_its_schema_file() -> None:
    """The file a TypeScript producer would use accepts a real request and refuses a bad one."""
    schema = json.loads((SCHEMA_DIR / "execution.requested.v1.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    good = json.loads(codec.encode(requested("print(1)", input={"k": 1})))
    assert list(validator.iter_errors(good)) == []
    bad = {**good, "request": {**good["request"], "runtime": "ruby", "extra": 1}}
    messages = " ".join(e.message for e in validator.iter_errors(bad))
    assert "ruby" in messages or "extra" in messages


def test_drift_is_detected(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Editing a schema file is reported as drift."""
    for path in SCHEMA_DIR.glob("*.json"):
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "execution.requested.v1.json").write_text("{}")
    (tmp_path / "stray.v1.json").write_text("{}")
    assert set(drift(tmp_path)) == {"stale execution.requested.v1.json", "unexpected stray.v1.json"}


# What msgspec releases emit for the same docstring: older ones keep the continuation lines'
# indentation, 0.23 dedents them. Both must render the same schema bytes.
_LINE = st.text(
    alphabet=st.characters(codec="ascii", categories=("L", "N", "P", "Zs")), max_size=40
)


@given(first=_LINE, rest=st.lists(_LINE, max_size=6), indent=st.integers(0, 8))
def test_descriptions_do_not_depend_on_how_msgspec_renders_docstrings(
    first: str, rest: list[str], indent: int
) -> None:
    """A docstring's indented form and its dedented form normalize to the same description."""
    indented = "\n".join([first, *(" " * indent + line for line in rest)])
    dedented = "\n".join([first, *rest])
    wrap = {"$defs": {"T": {"description": indented, "properties": {"d": [{"x": 1}]}}}}
    same = {"$defs": {"T": {"description": dedented, "properties": {"d": [{"x": 1}]}}}}
    assert normalized(wrap) == normalized(same)
    assert normalized(normalized(wrap)) == normalized(wrap)


def test_generated_descriptions_are_clean() -> None:
    """No description in schemas/ keeps docstring indentation or trailing blanks."""

    def descriptions(node: object) -> list[str]:
        if isinstance(node, dict):
            own = [node["description"]] if isinstance(node.get("description"), str) else []
            return own + [d for v in node.values() for d in descriptions(v)]
        if isinstance(node, list):
            return [d for v in node for d in descriptions(v)]
        return []

    found = [d for p in SCHEMA_DIR.glob("*.json") for d in descriptions(json.loads(p.read_text()))]
    assert found, "the schemas carry the types' docstrings"
    assert all(d == clean(d) == inspect.cleandoc(d) for d in found)


@pytest.mark.parametrize(
    ("module", "generated"),
    [("cronium_bus.schemagen", SCHEMA_DIR), ("projections.ddl", SQL_FILE.parent)],
)
@pytest.mark.parametrize("args", [["--help"], ["-h"], [], ["--bogus"], ["write", "extra"]])
def test_generators_write_nothing_unless_told(
    module: str, generated: Path, args: list[str]
) -> None:
    """--help explains and exits 0; no command or a bad one exits 2; none of them writes."""
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in generated.iterdir()}
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in generated.iterdir()}
    assert after == before
    if args and args[0] in {"--help", "-h"}:
        assert done.returncode == 0
        assert "write" in done.stdout and "check" in done.stdout
    else:
        assert done.returncode == 2
        assert "write" in done.stderr
