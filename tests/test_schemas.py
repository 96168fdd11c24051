"""schemas/ is generated from the types; a producer in any language can validate against it."""

from __future__ import annotations

import json

import jsonschema

from cronium_bus import codec
from cronium_bus.schemagen import SCHEMA_DIR, drift
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
