"""``enqueue_file:``: configurations to run first, one JSON object per line, as
``--dry-run --jsonl`` writes them and as params-proto's ``Sweep.save`` does. Does not import
optuna."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .drift import flatten
from .errors import HparamSearchError
from .space import ParamSpec


def read_sweep_file(path: Path, params: tuple[ParamSpec, ...], fixed: Mapping[str, Any],
                    where: tuple[str, int | None]) -> tuple[dict[str, Any], ...]:
    """The parameter values on each line. A key is a sweep parameter's (dotted) name; a
    params-proto key such as ``Args.lr`` is matched by its part after the last dot when that
    names one parameter; a key of a fixed value (a whole config, as --dry-run --jsonl writes)
    is left out. Values are checked against the space, errors name the file and line."""
    shown = _shown(path)
    if not path.is_file():
        raise HparamSearchError("enqueue_file: no such file", source=where[0], line=where[1],
                                key="enqueue_file", got=str(path),
                                fix="Relative paths are taken from the script's folder.")
    by_name = {p.name: p for p in params}
    known_fixed = flatten(dict(fixed))
    entries = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise HparamSearchError(f"enqueue_file: cannot be read ({exc})", source=where[0],
                                line=where[1], key="enqueue_file", got=str(path),
                                fix="Name a readable UTF-8 text file of JSON lines.") from exc
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except ValueError as exc:
            raise HparamSearchError(f"not a JSON object ({exc.msg})", source=shown, line=number,
                                    fix="Write one JSON object of parameter values per line, "
                                        'e.g. {"lr": 0.01, "optimizer": "Adam"}.') from exc
        if not isinstance(row, dict):
            raise HparamSearchError("not a JSON object", source=shown, line=number, got=row,
                                    fix='Write one object per line, e.g. {"lr": 0.01}.')
        entry: dict[str, Any] = {}
        for key, value in flatten(row).items():
            name = _parameter_of(key, by_name, known_fixed, shown, number)
            if name is None:
                continue
            if not by_name[name].contains(value):
                spec = by_name[name].describe().split(": ", 1)[1]
                raise HparamSearchError(f"outside the search space ({spec})", source=shown,
                                        line=number, key=key, got=value)
            entry[name] = value
        if not entry:
            raise HparamSearchError("names no sweep parameter", source=shown, line=number,
                                    fix=f"Sweep parameters: {', '.join(by_name) or 'none'}.")
        entries.append(entry)
    return tuple(entries)


def _parameter_of(key: str, by_name: Mapping[str, ParamSpec], fixed: Mapping[str, Any],
                  shown: str, line: int) -> str | None:
    if key in by_name:
        return key
    from .settings import SETTINGS

    if key in fixed or key.split(".", 1)[0] in SETTINGS:
        return None  # a fixed value or a study setting (a whole config, from --dry-run --jsonl)
    last = key.rsplit(".", 1)[-1]
    candidates = sorted(n for n in by_name if n == last or n.rsplit(".", 1)[-1] == last)
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        raise HparamSearchError(f"'{key}' could be any of {', '.join(candidates)}", source=shown,
                                line=line, key=key,
                                fix="Write the sweep parameter's full (dotted) name as the key.")
    raise HparamSearchError("is not a sweep parameter", source=shown, line=line, key=key,
                            fix=f"Sweep parameters: {', '.join(by_name) or 'none'}.")


def _shown(path: Path) -> str:
    from .config import display_path

    return display_path(path)
