"""Generate ``schemas/``: one JSON Schema per public event type and version, and one for the
documents producers write (``workflow.definition``).

``python -m cronium_bus.schemagen write`` writes the files; ``check`` exits 1 when they drift from
the types (a test runs the same comparison); ``--help`` explains and writes nothing.

The output depends only on the types, never on the msgspec release that renders them: every
``description`` (taken from a docstring) goes through :func:`inspect.cleandoc`, so a release that
dedents docstrings and one that keeps their indentation give the same bytes.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from cronium_bus.events import EVENT_TYPES, SCHEMA_VERSION

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"


def clean(text: str) -> str:
    """A docstring as :func:`inspect.cleandoc` cleans it, without trailing blanks on any line."""
    return "\n".join(line.rstrip() for line in inspect.cleandoc(text).splitlines()).strip("\n")


def normalized(node: Any) -> Any:
    """``node`` with every ``description`` string cleaned (see :func:`clean`)."""
    if isinstance(node, dict):
        return {
            key: clean(value)
            if key == "description" and isinstance(value, str)
            else normalized(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [normalized(item) for item in node]
    return node


def render() -> dict[str, str]:
    """File name → file text for every event type and document (a workflow definition)."""
    from cronium_bus.workflows.definition import Definition

    documents: dict[str, type[Any]] = {"workflow.definition": Definition}
    files: dict[str, str] = {}
    for tag, cls in sorted({**EVENT_TYPES, **documents}.items()):
        schema = normalized(msgspec.json.schema(cls))
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


def parser() -> argparse.ArgumentParser:
    """The command line: ``write`` or ``check`` (``--check`` is kept as an alias of ``check``)."""
    p = argparse.ArgumentParser(
        prog="python -m cronium_bus.schemagen",
        description=(
            f"Generate the JSON Schema of every public event type into {SCHEMA_DIR} "
            "(one file per type and version, for producers in any language)."
        ),
        epilog="make schemas runs `write`; make test runs `check`. Exit 0 ok, 1 drift, 2 usage.",
    )
    p.add_argument(
        "command",
        nargs="?",
        choices=("write", "check"),
        help="write: replace the files with what the types say; check: exit 1 naming every "
        "missing, stale or unexpected file and write nothing",
    )
    p.add_argument("--check", action="store_true", help="same as the `check` command")
    return p


def main(argv: list[str]) -> int:
    """Write the schemas, or with ``check`` report drift; with no command print usage."""
    p = parser()
    args = p.parse_args(argv)
    command = "check" if args.check else args.command
    if command is None:
        p.print_help(sys.stderr)
        print("\nname a command: write or check", file=sys.stderr)
        return 2
    if command == "check":
        problems = drift()
        for problem in problems:
            print(problem, file=sys.stderr)
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
