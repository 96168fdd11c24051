"""Reading a workflow definition from a file: YAML (or JSON, which YAML reads too), with each
node's ``file`` read into its ``code``, relative to the definition.

YAML from anyone is parsed with the safe loader and refused before it is built when it uses
aliases (a few lines of anchors can expand into billions of nodes) or nests deeper than JSON
values may; the file and every script it names have size limits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import yaml

from cronium_bus.codec import MAX_JSON_DEPTH
from cronium_bus.workflows.definition import (
    MAX_DEFINITION_BYTES,
    MAX_NODES,
    Definition,
    WorkflowError,
    parse,
)

MAX_SCRIPT_BYTES: Final = 1024 * 1024
_NESTING: Final = MAX_JSON_DEPTH + 4  # a node's fields and its input_schema sit a few levels in


def _checked_yaml(text: str) -> Any:
    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise WorkflowError(
                    "the definition uses a YAML alias (*name)",
                    hint="write each value out: aliases are refused (they can expand without end)",
                )
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > _NESTING:
                    raise WorkflowError(f"the definition nests deeper than {_NESTING} levels")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WorkflowError(f"the definition is not valid YAML or JSON: {exc}") from exc


def load(path: Path, *, max_nodes: int = MAX_NODES) -> Definition:
    """The checked definition in ``path``, or :class:`WorkflowError` saying why."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise WorkflowError(f"cannot read {path}: {exc.strerror}") from exc
    if len(raw) > MAX_DEFINITION_BYTES:
        raise WorkflowError(
            f"{path} is {len(raw):,} bytes, over the limit of {MAX_DEFINITION_BYTES:,}"
        )
    data = _checked_yaml(raw.decode("utf-8", errors="replace"))
    if not isinstance(data, dict):
        raise WorkflowError(
            f"{path} is not a workflow definition", hint="it is an object: name, nodes, edges"
        )
    nodes = data.get("nodes")
    if isinstance(nodes, list):
        data["nodes"] = [_with_code(node, path.parent) for node in nodes]
    return parse(data, max_nodes=max_nodes)


def _with_code(node: Any, base: Path) -> Any:
    """A node with its ``file`` read into ``code`` (relative to the definition's folder)."""
    if not isinstance(node, dict) or "file" not in node:
        return node
    if "code" in node:
        raise WorkflowError(f"node {node.get('name')!r} has both code and file: give one")
    script = base / str(node["file"])
    try:
        size = script.stat().st_size
        if size > MAX_SCRIPT_BYTES:
            raise WorkflowError(f"{script} is {size:,} bytes, over {MAX_SCRIPT_BYTES:,}")
        code = script.read_text()
    except OSError as exc:
        raise WorkflowError(
            f"node {node.get('name')!r}: cannot read {script}: {exc.strerror}"
        ) from exc
    return {**{k: v for k, v in node.items() if k != "file"}, "code": code}
