"""Trials as rows: summaries, the export table and its file formats, the config a trial ran
with, and plain text tables."""

from __future__ import annotations

import csv
import datetime
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import HparamSearchError
from ..storage import (OWNER_ATTR, RUN_ATTR_OF_TRIAL, TRIAL_DIR_ATTR, attempt_of, format_counts,
                       retry_of, run_of_trial)
from ..storage.counts import ERROR_ATTR, PRUNE_REASON_ATTR
from .reader import StudyReader, TrialRecord

EXPORT_FORMATS = ("csv", "json", "jsonl", "parquet")
LOG_ATTR = "log_file"


def summary(reader: StudyReader, **extra: Any) -> dict[str, Any]:
    """What `ls` and `show` print about a study, from a handful of queries."""
    counts = reader.counts()
    kinds = reader.pruned_kinds() if counts.get("PRUNED") else {}
    first, last = reader.times()
    best: Any = None
    if counts.get("COMPLETE"):
        records = reader.best()
        if len(reader.directions) == 1 and records:
            b = records[0]
            best = {"number": b.number, "value": b.values[0] if b.values else None,
                    "params": b.params, "record": b}
        else:
            best = [{"number": b.number, "values": b.values, "params": b.params}
                    for b in records]
    runs = reader.runs()
    return {
        "study": reader.name, **extra, "directions": reader.directions,
        "trials": sum(counts.values()), "states": counts, "pruned_kinds": kinds,
        "states_text": format_counts(counts, kinds), "best": best,
        "last_activity": last.isoformat(sep=" ", timespec="seconds") if last else None,
        "wall_s": (last - first).total_seconds() if first and last else None,
        "runs": runs, "run": runs[-1] if runs else None,
    }


def rows(reader: StudyReader, records: list[TrialRecord] | None = None) -> list[dict[str, Any]]:
    """One flat row per trial: number, state, value(s), each parameter under its (dotted)
    name, duration, worker, error, log file, every stored metric, the run it ran under and,
    where runs differed, the fixed values it got (``config.<key>``)."""
    names = reader.value_columns()
    if records is None:
        records = reader.records()
    param_names = sorted({p for t in records for p in t.params})
    runs = reader.runs()
    varying = varying_config(runs)
    out = []
    for t in records:
        row: dict[str, Any] = {"number": t.number, "state": t.state}
        values = t.values or [None] * len(names)
        row.update(dict(zip(names, values)))
        for p in param_names:
            row[p] = t.params.get(p)
        owner = t.system_attrs.get(OWNER_ATTR) or {}
        row.update({
            "duration_s": t.duration_s,
            "worker": owner.get("rank"),
            "error": t.user_attrs.get(ERROR_ATTR) or t.system_attrs.get("fail_reason"),
            "prune_reason": t.user_attrs.get(PRUNE_REASON_ATTR),
            "log_file": t.user_attrs.get(LOG_ATTR),
            "datetime_start": t.start.isoformat(sep=" ") if t.start else None,
            "run": t.system_attrs.get(RUN_ATTR_OF_TRIAL),
            "retry_of": retry_of(t),
            "attempt": attempt_of(t),
            TRIAL_DIR_ATTR: t.user_attrs.get(TRIAL_DIR_ATTR),
        })
        if owner.get("slurm"):
            slurm = owner["slurm"]
            row.update({"slurm_job": slurm.get("job"), "slurm_task": slurm.get("task"),
                        "slurm_node": slurm.get("node")})
        if varying:
            run = run_of_trial(t, runs)
            row.update({f"config.{k}": v
                        for k, v in varying.get(run["id"] if run else -1, {}).items()})
        for key, value in sorted(t.user_attrs.items()):
            if key.startswith("metric."):
                row[key] = value
        out.append(row)
    return out


def export(table: list[dict[str, Any]], fmt: str, path: Path) -> int:
    """Write every row in ``fmt``; returns the number of rows."""
    columns = list(dict.fromkeys(k for row in table for k in row))
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows({c: _cell(r.get(c)) for c in columns} for r in table)
    elif fmt == "json":
        path.write_text(json.dumps(table, indent=2, default=str))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r, default=str) + "\n" for r in table))
    elif fmt == "parquet":
        try:
            import pandas as pd
        except ImportError as exc:
            raise HparamSearchError("parquet export needs pandas and pyarrow",
                                    fix="pip install 'hparam-search[export]'") from exc
        frame = pd.DataFrame(table, columns=columns)
        for column in frame.columns:  # mixed parameter types: keep them readable
            if frame[column].map(type).nunique() > 2:
                frame[column] = frame[column].map(lambda v: None if v is None else str(v))
        try:
            frame.to_parquet(path, index=False)
        except ImportError as exc:
            raise HparamSearchError("parquet export needs pyarrow",
                                    fix="pip install 'hparam-search[export]'") from exc
    else:
        raise HparamSearchError(f"unknown export format '{fmt}'",
                                fix=f"Use one of {', '.join(EXPORT_FORMATS)}.")
    return len(table)


def format_of(path: Path, given: str | None) -> str:
    """The export format: the one given, else the file's extension."""
    if given:
        return given
    suffix = path.suffix.lower().lstrip(".")
    if suffix in EXPORT_FORMATS:
        return suffix
    raise HparamSearchError(
        f"cannot tell the format from the file name {path.name}",
        fix=f"Use a file ending in .{', .'.join(EXPORT_FORMATS)}, or pass --format.")


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def best_config(reader: StudyReader) -> dict[str, Any]:
    """The config the best trial ran with: its run's fixed values plus its parameters at their
    (dotted) places, ready for ``train(config)``."""
    if len(reader.directions) > 1:
        raise HparamSearchError("this study has several objectives, so no single best trial",
                                fix="Use 'show' to see the Pareto front.")
    best = reader.best()
    if not best:
        raise HparamSearchError(f"study '{reader.name}' has no completed trial yet")
    return trial_config(best[0], reader.runs())


def trial_config(trial: Any, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole config ``train`` received in ``trial``: the fixed values of the run it ran
    under plus its parameters at their (dotted) places."""
    from ..space import merge_params

    return merge_params(run_fixed(run_of_trial(trial, runs)), trial.params)


def run_fixed(run: dict[str, Any] | None) -> dict[str, Any]:
    """A run's resolved config without ``sweep_parameters``: what every trial of it got."""
    import yaml

    resolved = yaml.safe_load((run or {}).get("config") or "{}") or {}
    return {k: v for k, v in resolved.items() if k != "sweep_parameters"}


def varying_config(runs: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per run id, the fixed values (dotted keys) that differ between the study's runs; empty
    when every run gave trials the same fixed values."""
    from ..drift import ABSENT, compared_part

    parts = {run["id"]: compared_part(run_fixed(run)) for run in runs}
    keys = sorted({k for part in parts.values() for k in part
                   if len({repr(p.get(k, ABSENT)) for p in parts.values()}) > 1})
    if not keys:
        return {}
    return {rid: {k: part.get(k) for k in keys} for rid, part in parts.items()}


def format_table(table: Iterable[dict[str, Any]], columns: list[str],
                 full: Iterable[str] = ("log_file", "trial_dir", "why")) -> str:
    """A plain fixed-width text table; long cells are cut, except the ``full`` columns."""
    keep = set(full)
    data = [[_short(r.get(c), c in keep) for c in columns] for r in table]
    widths = [max([len(c)] + [len(row[i]) for row in data]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in data]
    return "\n".join(lines)


def _short(value: Any, full: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, datetime.datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    text = str(value)
    if full:
        from ..config import display_path

        return display_path(Path(text)) if text.startswith("/") else text
    return text if len(text) <= 40 else text[:37] + "..."
