"""Plots of a study: PNG files through matplotlib and one HTML report through plotly, both
from Optuna's own visualization module (imported only here); the report's page is made by
``report``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import HparamSearchError


def load_study(url: str, name: str) -> Any:
    """The study as an ``optuna.Study`` (plots need every trial)."""
    import optuna

    from ..storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=open_storage(url, create=False))


def plot(study: Any, folder: Path, info: dict[str, Any] | None = None,
         top_rows: list[dict[str, Any]] | None = None) -> list[Path]:
    """PNG files and one self-contained HTML report with Optuna's own plots. ``info`` and
    ``top_rows`` (from ``report.gather``) fill the report's summary and table; without them
    it summarises the trial counts only."""
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
    log_y = _spans_orders_of_magnitude([t.values[0] for t in complete], 2)
    charts.append(("optimization_history",
                   lambda m: _log_y(m.plot_optimization_history(study, **target), log_y)))
    if not multi and any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        charts.append(("intermediate_values", lambda m: m.plot_intermediate_values(study)))
    important = params
    if len(params) > 1 and len(complete) > 1:
        from optuna.importance import get_param_importances

        # Optuna's default evaluator looks for what makes the target low: with several
        # objectives the target is the first, negated when that one is maximized.
        by = {}
        if multi:
            sign = -1.0 if study.directions[0].name == "MAXIMIZE" else 1.0
            by = {"target": lambda t: sign * t.values[0], "target_name": target["target_name"]}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                important = list(get_param_importances(
                    study, **({"target": by["target"]} if by else {})))
            charts.append(("param_importances",
                           lambda m: m.plot_param_importances(study, **by)))
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
    from .report import write_report

    report = write_report(folder / "report.html", study.study_name,
                          info if info is not None else _counts_info(study), top_rows or [],
                          html_parts)
    written.append(report)
    return written


def _counts_info(study: Any) -> dict[str, Any]:
    """The report's summary when no reader's is given: directions and trials by state."""
    from ..storage import count_pruned_kinds, format_counts

    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    kinds = count_pruned_kinds(trials)
    return {"directions": [d.name.lower() for d in study.directions], "trials": len(trials),
            "states": counts, "pruned_kinds": kinds, "states_text": format_counts(counts, kinds),
            "value_columns": list(study.metric_names) if study.metric_names else None}


def _spans_orders_of_magnitude(values: list[float], orders: int) -> bool:
    """Positive values whose largest is more than 10**orders times the smallest."""
    finite = [v for v in values if v == v and abs(v) != float("inf")]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 10 ** orders


def _log_y(figure: Any, log: bool) -> Any:
    """A log y-axis on a matplotlib Axes or a plotly Figure."""
    if log:
        if hasattr(figure, "set_yscale"):
            figure.set_yscale("log")
        else:
            figure.update_yaxes(type="log")
    return figure
