"""The attribute names this package stores on studies and trials, and the one place that reads
Optuna's private ids."""

from __future__ import annotations

from typing import Any

# Trial system attributes.
OWNER_ATTR = "hparam_search:owner"  # {host, pid, started, rank}: who runs the trial
RUN_ATTR_OF_TRIAL = "hparam_search:run"  # index into the study's run records
FAIL_REASON_ATTR = "fail_reason"  # the key Optuna itself uses for failed trials
# Study attributes.
RUN_ATTR = "hparam_search.run"  # user attribute: the latest run's metadata (the dashboard shows it)
RUNS_ATTR = "hparam_search:runs"  # system attribute: every run's metadata, in order
ENQUEUED_ATTR = "hparam_search:enqueued"


def study_id(study: Any) -> int:
    """The storage's id of an ``optuna.Study`` (Optuna keeps it private)."""
    return study._study_id


def trial_id(trial: Any) -> int:
    """The storage's id of an ``optuna.Trial`` or ``FrozenTrial``."""
    return trial._trial_id
