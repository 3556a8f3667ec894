"""Reading finished and running studies: find them, summarise, tabulate, export, plot.

Plotting and table libraries are imported only by the functions that need them.
"""

from __future__ import annotations

import csv
import datetime
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import HparamSearchError
from .storage import OWNER_ATTR, RUN_ATTR

DEFAULT_DIR = Path("optuna_studies")
EXPORT_FORMATS = ("csv", "json", "jsonl", "parquet")


@dataclass(frozen=True)
class StudyRef:
    """Where a study lives: storage URL and study name."""

    url: str
    name: str


def resolve(arg: str, folder: Path = DEFAULT_DIR) -> StudyRef:
    """A ``.db`` path, a storage URL (``sqlite:///...``, ``postgresql://...``, optionally
    ``URL#study``), or a study name found as ``<folder>/<name>.db``."""
    url, _, name = arg.partition("#") if "://" in arg else (arg, "", "")
    if "://" not in url:
        path = Path(arg)
        if not path.suffix == ".db" or not path.is_file():
            path = folder / f"{arg}.db" if not path.is_file() else path
        if not path.is_file():
            found = sorted(p.stem for p in folder.glob("*.db")) if folder.is_dir() else []
            hint = (f"Studies in {folder}/: {', '.join(found)}." if found else
                    f"No .db files in {folder}/; pass a .db path or a storage URL.")
            raise HparamSearchError(f"no study '{arg}'", fix=hint)
        url = f"sqlite:///{path.resolve()}"
    names = study_names(url)
    if name:
        if name not in names:
            raise HparamSearchError(f"no study '{name}' in {url}",
                                    fix=f"It holds: {', '.join(names) or 'no studies'}.")
        return StudyRef(url, name)
    if not names:
        raise HparamSearchError(f"{url} holds no study yet")
    if len(names) > 1:
        raise HparamSearchError(f"{url} holds several studies",
                                fix=f"Pick one with {url}#NAME: {', '.join(names)}.")
    return StudyRef(url, names[0])


def _storage(url: str) -> Any:
    import optuna

    try:
        return optuna.storages.RDBStorage(url, skip_table_creation=True)
    except Exception as exc:  # noqa: BLE001 - any driver or schema error: one clear line
        raise HparamSearchError(f"cannot open {url}: {exc}") from exc


def study_names(url: str) -> list[str]:
    import optuna

    return [s.study_name for s in optuna.get_all_study_summaries(_storage(url))]


def load(ref: StudyRef) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=ref.name, storage=_storage(ref.url))


def list_studies(folder: Path) -> list[dict[str, Any]]:
    """One row per study found in ``folder``'s ``.db`` files."""
    rows = []
    for path in sorted(folder.glob("*.db")):
        url = f"sqlite:///{path.resolve()}"
        try:
            names = study_names(url)
        except HparamSearchError:
            continue
        for name in names:
            rows.append(summary(load(StudyRef(url, name)), path=str(path)))
    return rows


def summary(study: Any, **extra: Any) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    times = [t.datetime_complete or t.datetime_start for t in trials
             if t.datetime_complete or t.datetime_start]
    starts = [t.datetime_start for t in trials if t.datetime_start]
    directions = [d.name.lower() for d in study.directions]
    best: Any = None
    if counts.get("COMPLETE"):
        if len(directions) == 1:
            b = study.best_trial
            best = {"number": b.number, "value": b.value, "params": b.params}
        else:
            best = [{"number": b.number, "values": b.values, "params": b.params}
                    for b in study.best_trials]
    return {
        "study": study.study_name, **extra, "directions": directions, "trials": len(trials),
        "states": counts, "best": best,
        "last_activity": max(times).isoformat(sep=" ", timespec="seconds") if times else None,
        "wall_s": (max(times) - min(starts)).total_seconds() if times and starts else None,
        "run": study.user_attrs.get(RUN_ATTR),
    }


def rows(study: Any) -> list[dict[str, Any]]:
    """One flat row per trial: number, state, value(s), each parameter under its (dotted)
    name, duration, worker, error, log file and every stored metric."""
    names = study.metric_names or (
        ["value"] if len(study.directions) == 1
        else [f"value_{i}" for i in range(len(study.directions))])
    param_names = sorted({p for t in study.get_trials(deepcopy=False) for p in t.params})
    out = []
    for t in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {"number": t.number, "state": t.state.name}
        values = t.values or [None] * len(names)
        row.update(dict(zip(names, values)))
        for p in param_names:
            row[p] = t.params.get(p)
        duration = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        owner = t.system_attrs.get(OWNER_ATTR) or {}
        row.update({
            "duration_s": duration,
            "worker": owner.get("rank"),
            "error": t.user_attrs.get("error") or t.system_attrs.get("fail_reason"),
            "prune_reason": t.user_attrs.get("prune_reason"),
            "log_file": t.user_attrs.get("log_file"),
            "datetime_start": t.datetime_start.isoformat(sep=" ") if t.datetime_start else None,
        })
        for key, value in sorted(t.user_attrs.items()):
            if key.startswith("metric."):
                row[key] = value
        out.append(row)
    return out


def export(study: Any, fmt: str, path: Path) -> int:
    """Write every trial as a row in ``fmt``; returns the number of rows."""
    table = rows(study)
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


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def best_config(study: Any) -> dict[str, Any]:
    """The config the best trial ran with: the stored resolved YAML's fixed values plus the
    best parameters at their (dotted) places, ready for ``train(config)``."""
    import yaml

    from .space import merge_params

    if len(study.directions) > 1:
        raise HparamSearchError("this study has several objectives, so no single best trial",
                                fix="Use 'show' to see the Pareto front.")
    try:
        best = study.best_trial
    except ValueError as exc:
        raise HparamSearchError(f"study '{study.study_name}' has no completed trial yet") from exc
    run = study.user_attrs.get(RUN_ATTR) or {}
    resolved = yaml.safe_load(run.get("config") or "{}") or {}
    fixed = {k: v for k, v in resolved.items() if k != "sweep_parameters"}
    return merge_params(fixed, best.params)


def plot(study: Any, folder: Path) -> list[Path]:
    """PNG files and one self-contained HTML report with Optuna's own plots."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization as vis
    import optuna.visualization.matplotlib as mvis

    folder.mkdir(parents=True, exist_ok=True)
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise HparamSearchError(f"study '{study.study_name}' has no completed trial to plot")
    multi = len(study.directions) > 1
    params = sorted({p for t in complete for p in t.params})
    charts: list[tuple[str, Any]] = []  # (name, draw(module) -> figure) for either backend
    if multi:
        charts.append(("pareto_front", lambda m: m.plot_pareto_front(study)))
        target = {"target": lambda t: t.values[0], "target_name": study.metric_names[0]
                  if study.metric_names else "objective 0"}
    else:
        target = {}
    charts.append(("optimization_history",
                   lambda m: m.plot_optimization_history(study, **target)))
    important = params
    if len(params) > 1 and len(complete) > 1:
        from optuna.importance import get_param_importances

        try:
            important = list(get_param_importances(
                study, **({"target": target["target"]} if target else {})))
            charts.append(("param_importances",
                           lambda m: m.plot_param_importances(study, **target)))
        except (RuntimeError, ValueError):
            pass
    for p in params:
        charts.append((f"slice_{p}", lambda m, p=p: m.plot_slice(study, params=[p], **target)))
    if params:
        charts.append(("parallel_coordinate",
                       lambda m: m.plot_parallel_coordinate(study, **target)))
    if len(important) >= 2:
        pair = important[:2]
        charts.append(("contour", lambda m: m.plot_contour(study, params=pair, **target)))
    written: list[Path] = []
    html_parts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
        for name, make in charts:
            ax = make(mvis)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            if fig.get_size_inches()[0] < 8:
                fig.set_size_inches(8, 5)
            png = folder / f"{name}.png"
            fig.savefig(png, dpi=100, bbox_inches="tight")
            plt.close(fig)
            written.append(png)
            html_parts.append((name, make(vis)))
    report = folder / "report.html"
    body = [f"<h1>Study {study.study_name}</h1>",
            f"<p>{len(study.trials)} trials; directions: "
            f"{', '.join(d.name.lower() for d in study.directions)}</p>"]
    for i, (name, fig) in enumerate(html_parts):
        body.append(f'<h2 id="{name}">{name.replace("_", " ")}</h2>')
        body.append(fig.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False,
                                div_id=f"plot-{name}"))
    report.write_text("<!doctype html><html><head><meta charset='utf-8'><title>"
                      f"{study.study_name}</title></head><body>{''.join(body)}</body></html>",
                      encoding="utf-8")
    written.append(report)
    return written


def format_table(table: Iterable[dict[str, Any]], columns: list[str]) -> str:
    """A plain fixed-width text table."""
    data = [[_short(r.get(c)) for c in columns] for r in table]
    widths = [max([len(c)] + [len(row[i]) for row in data]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in data]
    return "\n".join(lines)


def _short(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, datetime.datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."
