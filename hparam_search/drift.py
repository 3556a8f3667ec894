"""What changed between two runs of one study: the fixed parameters and the search space
(study settings such as n_trials or n_jobs may change freely). Does not import optuna."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

_ABSENT = object()


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; an empty mapping stays a leaf."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def compared_part(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that defines what a trial computes, flattened: fixed
    parameters and sweep_parameters, without study settings."""
    from .settings import SETTINGS

    return flatten({k: v for k, v in resolved.items() if k not in SETTINGS})


def changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for each key whose value differs; a missing side is
    reported as ``ABSENT``."""
    before, after = compared_part(old), compared_part(new)
    out = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key, _ABSENT), after.get(key, _ABSENT)
        if a != b or type(a) is not type(b):
            out.append((key, a, b))
    return out


def show_value(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix(
        "\n...").removesuffix(" ...")


def notice(study: str, previous: Mapping[str, Any], changed: list[tuple[str, Any, Any]]) -> str:
    """The lines printed when a run's config differs from the study's previous run."""
    when = f" (started {previous['started']})" if previous.get("started") else ""
    lines = [f"notice: this config differs from the previous run of study '{study}'{when}:"]
    lines += [f"  {key}: {show_value(a)} -> {show_value(b)}" for key, a, b in changed]
    lines.append("  The new trials join this study beside trials run with the old values (each "
                 "trial keeps its own config: 'hparam-search show' and 'export' tell them "
                 "apart). To keep them separate, start another study with --set tag=NEW_TAG.")
    return "\n".join(lines)


ABSENT = _ABSENT
