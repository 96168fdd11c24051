"""Generate ``schemas/``: one JSON Schema per public event type and version.

``python -m cronium_bus.schemagen`` writes the files; ``--check`` exits 1 when they drift from the
types (a test runs the same comparison).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import msgspec

from cronium_bus.events import EVENT_TYPES, SCHEMA_VERSION

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"


def render() -> dict[str, str]:
    """File name → file text for every event type."""
    files: dict[str, str] = {}
    for tag, cls in sorted(EVENT_TYPES.items()):
        schema = msgspec.json.schema(cls)
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://cronium.dev/schemas/{tag}.v{SCHEMA_VERSION}.json",
            "title": tag,
            **schema,
        }
        files[f"{tag}.v{SCHEMA_VERSION}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return files


def drift(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of schema files that are missing, stale or unexpected."""
    want = render()
    have = {p.name for p in directory.glob("*.json")} if directory.is_dir() else set()
    problems = [f"unexpected {n}" for n in sorted(have - set(want))]
    for name, text in want.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"missing {name}")
        elif path.read_text() != text:
            problems.append(f"stale {name}")
    return problems


def main(argv: list[str]) -> int:
    """Write the schemas, or with ``--check`` report drift."""
    if "--check" in argv:
        problems = drift()
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            print("schemas drifted from cronium_bus.events: run `make schemas`", file=sys.stderr)
        return 1 if problems else 0
    SCHEMA_DIR.mkdir(exist_ok=True)
    for stale in SCHEMA_DIR.glob("*.json"):
        stale.unlink()
    for name, text in render().items():
        (SCHEMA_DIR / name).write_text(text)
    print(f"wrote {len(render())} schemas to {SCHEMA_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
