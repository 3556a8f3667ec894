"""The study: create or load it, its explicit trials, and the record of every run."""

from __future__ import annotations

import json
import warnings
from typing import TYPE_CHECKING, Any

from ..errors import HparamSearchError
from .attrs import ENQUEUED_ATTR, RUN_ATTR, RUN_ATTR_OF_TRIAL, RUNS_ATTR, study_id
from .budget import budget_lock
from .counts import database_rows

if TYPE_CHECKING:
    import optuna
    from optuna.storages import RDBStorage


def create_or_load_study(storage: RDBStorage, study_name: str, directions: tuple[str, ...],
                         metric_names: tuple[str, ...] = ()) -> optuna.Study:
    """Create the study, or load it and check that its direction(s) match."""
    import optuna

    study = optuna.create_study(study_name=study_name, storage=storage,
                                directions=list(directions), load_if_exists=True)
    found = tuple(d.name.lower() for d in study.directions)
    if found != tuple(directions):
        key = "direction" if len(directions) == 1 else "directions"
        raise HparamSearchError(
            f"the study '{study_name}' already exists with {key} {', '.join(found)}",
            key=key, got=directions[0] if len(directions) == 1 else list(directions),
            fix="Use the same direction, or pick a new tag (--set tag=...) for a new study.")
    if metric_names and study.metric_names != list(metric_names):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks metric names experimental
            study.set_metric_names(list(metric_names))
    return study


def enqueue_once(study: optuna.Study, entries: tuple[dict[str, Any], ...], url: str) -> int:
    """Enqueue the explicit trials (grid points, ``enqueue:``) that this study has not had yet.
    Returns how many were added. Recorded on the study, so a resumed run adds none twice."""
    if not entries:
        return 0
    storage, sid = study._storage, study_id(study)
    with budget_lock(url, study.study_name, _backend(storage)):
        done = list(storage.get_study_system_attrs(sid).get(ENQUEUED_ATTR, []))
        seen = set(done)
        new = [e for e in entries if _canonical(e) not in seen]
        for entry in new:
            study.enqueue_trial(entry, skip_if_exists=False)
        if new:
            storage.set_study_system_attr(sid, ENQUEUED_ATTR, done + [_canonical(e) for e in new])
    return len(new)


def record_run(study: optuna.Study, metadata: dict[str, Any], url: str) -> int:
    """Store this run's metadata: every run's in a system attribute, the latest also as a user
    attribute (optuna-dashboard shows it). Returns the run's id, which each of its trials
    records (``RUN_ATTR_OF_TRIAL``) so that its own config can be found again."""
    storage, sid = study._storage, study_id(study)
    with budget_lock(url, study.study_name, _backend(storage)):  # launchers starting together
        runs = storage.get_study_system_attrs(sid).get(RUNS_ATTR, [])
        metadata = {**metadata, "id": len(runs)}
        storage.set_study_system_attr(sid, RUNS_ATTR, [*runs, metadata])
    study.set_user_attr(RUN_ATTR, metadata)
    return metadata["id"]


def runs_of(study: optuna.Study) -> list[dict[str, Any]]:
    """Every run's metadata, oldest first, each with its ``id``."""
    return runs_of_study(study._storage, study_id(study))


def runs_of_study(storage: Any, sid: int) -> list[dict[str, Any]]:
    runs = storage.get_study_system_attrs(sid).get(RUNS_ATTR, [])
    return [{**run, "id": run.get("id", i)} for i, run in enumerate(runs)]


def run_of_trial(trial: Any, runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run a trial ran under; for trials older than run records, the latest run."""
    index = trial.system_attrs.get(RUN_ATTR_OF_TRIAL)
    if isinstance(index, int) and 0 <= index < len(runs):
        return runs[index]
    return runs[-1] if runs else None


def _backend(storage: Any) -> Any:
    """The storage under Optuna's cache."""
    return getattr(storage, "_backend", storage)


def _canonical(entry: dict[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True, default=str)


def stored_distributions(storage: Any, sid: int) -> dict[str, Any]:
    """One stored distribution per parameter name of the study (Optuna keeps them compatible
    within a study), read with one query where the storage is a database."""
    from optuna.distributions import json_to_distribution

    rows = database_rows(
        storage, "SELECT p.param_name, MIN(p.distribution_json) FROM trial_params p JOIN "
                 "trials t ON p.trial_id = t.trial_id WHERE t.study_id = ? GROUP BY p.param_name",
        sid)
    if rows is None:
        found: dict[str, Any] = {}
        for trial in storage.get_all_trials(sid, deepcopy=False):
            for name, dist in trial.distributions.items():
                found.setdefault(name, dist)
        return found
    return {name: json_to_distribution(text) for name, text in rows}
