"""``cronium workflow validate FILE``: check a workflow definition before it runs.

The definition is YAML or JSON (``schemas/workflow.definition.v1.json``), checked by
``cronium_bus.workflows.definition``: exit 0 with a summary, or 2 naming the problem — a cycle,
an unknown node, a duplicate edge, an unreachable node, an invalid input schema, a limit.
Running workflows (``workflow run``, ``show``) is being built (issue 15).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TypeAlias

from cronium_bus.cli import exitcodes
from cronium_bus.cli.common import fail
from cronium_bus.workflows.definition import WorkflowError
from cronium_bus.workflows.files import load

_Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_parsers(sub: _Sub) -> None:
    """Register ``cronium workflow``."""
    p = sub.add_parser(
        "workflow",
        help="workflows: DAGs of executions with validated data passing",
        description="A workflow is a YAML or JSON file: nodes (each a request: runtime with code "
        "or file, limits, timeout, retry, secrets, priority, and an optional input_schema) and "
        "edges {from, to, when: always|on_success|on_failure|on_condition}. "
        "Schema: schemas/workflow.definition.v1.json. Only `validate` exists yet: running "
        "workflows is being built.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    v = actions.add_parser(
        "validate",
        help="check a definition: exit 0, or 2 naming the problem",
        description="Check FILE: a cycle (named), an edge to an unknown "
        "node, a duplicate edge, a node no start node reaches, an invalid input_schema, more "
        "than 100 nodes or 1 MiB. Nodes' `file` is read relative to FILE.",
    )
    v.add_argument("file", type=Path, metavar="FILE")
    v.add_argument("--json", action="store_true", help="print the checked definition as JSON")
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    """Entry point of ``cronium workflow``."""
    try:
        definition = load(args.file)
    except WorkflowError as exc:
        return fail(exc.message, exc.hint, exitcodes.USAGE)
    if args.json:
        import msgspec

        print(json.dumps(msgspec.to_builtins(definition)))
        return exitcodes.OK
    starts = ", ".join(definition.starts)
    print(
        f"workflow {definition.name}: {len(definition.nodes)} nodes, "
        f"{len(definition.edges)} edges; starts with {starts}"
    )
    return exitcodes.OK
