"""Safe YAML loading with line numbers for every key, shared by files and ``--set`` values."""

from __future__ import annotations

import re
from typing import Any

import yaml


class Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.2), as users write learning rates."""


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


class DuplicateKey(Exception):
    def __init__(self, key: str, line: int, first_line: int) -> None:
        super().__init__(key)
        self.key, self.line, self.first_line = key, line, first_line


def load_with_lines(text: str) -> tuple[Any, dict[str, int]]:
    """Parse ``text``; return the data and a map from dotted key to its 1-based line.

    Raises yaml.YAMLError for syntax errors and DuplicateKey when a mapping repeats a key.
    """
    node = yaml.compose(text, Loader=Loader)
    lines: dict[str, int] = {}
    if node is not None:
        _walk(node, "", lines)
    data = yaml.load(text, Loader=Loader)  # noqa: S506 - Loader is a SafeLoader subclass
    return data, lines


def _walk(node: yaml.Node, prefix: str, lines: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            dotted = f"{prefix}.{key}" if prefix else key
            line = key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKey(dotted, line, seen[key])
            seen[key] = line
            lines[dotted] = line
            _walk(value_node, dotted, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            dotted = f"{prefix}.{i}"
            lines.setdefault(dotted, item.start_mark.line + 1)
            _walk(item, dotted, lines)


def parse_scalar(text: str) -> Any:
    """Parse one ``--set`` value as YAML (never as Python). Raises yaml.YAMLError."""
    return yaml.load(text, Loader=Loader) if text.strip() else ""  # noqa: S506
