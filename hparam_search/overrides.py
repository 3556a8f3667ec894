"""``--set a.b.c=value`` overrides: parse them and apply them to a plain dict. No file I/O."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

import yaml

from ._yaml import parse_scalar
from .errors import COMMAND_LINE, HparamSearchError

_KEY = re.compile(r"^[A-Za-z_][\w\-]*(\.[\w\-]+)*$")


@dataclass(frozen=True)
class Override:
    """One parsed ``key=value``: the dotted path, the YAML value, and the user's own text."""

    path: tuple[str, ...]
    value: Any
    text: str

    @property
    def key(self) -> str:
        return ".".join(self.path)


def parse_override(text: str) -> Override:
    """Parse ``a.b=value``; the value is a YAML scalar or flow collection, never Python."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise HparamSearchError(
            f"--set {text}: expected key=value",
            source=COMMAND_LINE,
            fix="Write it like --set n_trials=200 or --set model.dropout=0.1.",
        )
    if not _KEY.match(key):
        raise HparamSearchError(
            f"--set {text}: {key!r} is not a dotted key",
            source=COMMAND_LINE,
            fix="Keys are names joined by dots, like model.first_layer.bias.",
        )
    try:
        value = parse_scalar(raw)
    except yaml.YAMLError as exc:
        raise HparamSearchError(
            f"--set {text}: the value is not valid YAML ({_first_line(exc)})",
            source=COMMAND_LINE,
            fix="Quote it for the shell, e.g. --set 'tag=\"my: tag\"'.",
        ) from exc
    return Override(tuple(key.split(".")), value, text)


def apply_overrides(data: dict[str, Any], overrides: list[Override]) -> dict[str, Any]:
    """Return a deep copy of ``data`` with each override set, creating nested mappings."""
    out = copy.deepcopy(data)
    for ov in overrides:
        node = out
        for depth, part in enumerate(ov.path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(ov.path[: depth + 1])
                raise HparamSearchError(
                    f"--set {ov.text}: {where} is a {type(child).__name__}, not a mapping, "
                    f"so it has no key {ov.path[depth + 1]!r}",
                    source=COMMAND_LINE,
                    fix=f"Set {where} itself, e.g. --set {where}=...",
                )
            node = child
        node[ov.path[-1]] = ov.value
    return out


def _first_line(exc: yaml.YAMLError) -> str:
    return str(exc).strip().splitlines()[0]
