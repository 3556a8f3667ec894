"""The attribute names this package stores on studies and trials, and the one place that reads
Optuna's private ids."""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager

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


def frozen_of(trial: Any) -> Any:
    """The FrozenTrial an ``optuna.Trial`` was made from (as Optuna caches it)."""
    return trial._cached_frozen_trial


def replace_intermediate(trial: Any, value: float, step: int) -> bool:
    """Store ``value`` at ``step`` when the trial already has a value there (a retry carries
    the interrupted attempt's curve over and reports those steps again); False otherwise, and
    ``Trial.report`` records it as usual. Optuna's own report would ignore the new value."""
    cached = trial._cached_frozen_trial
    if step not in cached.intermediate_values:
        return False
    value = float(value)
    trial.storage.set_trial_intermediate_value(trial._trial_id, step, value)
    cached.intermediate_values[step] = value
    return True


def set_user_attrs(storage: Any, trial_id: int, values: dict[str, Any]) -> None:
    """Several user attributes of one trial, in one transaction where the storage can."""
    many = getattr(storage, "set_trial_user_attrs", None)
    if many is not None:
        many(trial_id, values)
        return
    for key, value in values.items():
        storage.set_trial_user_attr(trial_id, key, value)


def batched_writes(storage: Any) -> ContextManager[None]:
    """The writes this thread makes to trials in the block (sampled parameters, the sampler's
    attributes) in one transaction, where the storage is the fast path; as they come
    elsewhere."""
    batched = getattr(getattr(storage, "_backend", storage), "batched", None)
    return batched() if batched is not None else contextlib.nullcontext()
