"""Retries: an interrupted trial's configuration is run again, as a new trial with the same
parameters, folder and reported values, before anything new is sampled. Links between the
attempts use Optuna's own attributes (``failed_trial``, ``retry_history``), so Optuna's
``RetryHeartbeatStaleTrialCallback.retried_trial_number`` works on these studies.

Which FAIL trials still await a retry is derived from the study itself (a retry names the
attempt it retries as the last entry of its ``retry_history``), so it is decided inside the
budget lock, exactly once per interruption, by whichever process claims next.
"""

from __future__ import annotations

import datetime
from typing import Any

from .attrs import study_id

FAILED_TRIAL_ATTR = "failed_trial"  # Optuna's: the first attempt's number
RETRY_HISTORY_ATTR = "retry_history"  # Optuna's: every earlier attempt's number, oldest first
NO_RETRY_ATTR = "hparam_search:no_retry"  # on a FAIL that would fail the same way again
TRIAL_DIR_ATTR = "trial_dir"  # user attribute: the folder every attempt shares


def attempt_of(trial: Any) -> int:
    """1 for a first run, 2 for its first retry, ..."""
    return len(trial.system_attrs.get(RETRY_HISTORY_ATTR) or ()) + 1


def retry_of(trial: Any) -> int | None:
    """The number of the configuration's first attempt, for a retry."""
    return trial.system_attrs.get(FAILED_TRIAL_ATTR)


class RetryPlanner:
    """Finds the next interrupted trial to retry, for one process, on storages without the
    fast path's claim. Cheap when nothing failed: the full look is taken only when the study's
    FAIL count differs from the last time every FAIL trial was found settled (retried, given
    up, or not retryable)."""

    def __init__(self, retries: int) -> None:
        self.retries = retries
        self._settled_at = -1  # FAIL count at which nothing was left to retry

    def claim(self, study: Any, storage: Any, n_fail: int, attrs: dict[str, Any]) -> Any:
        """Create the next retry as a RUNNING trial and return it as an ``optuna.Trial``, or
        None. Call inside the budget lock."""
        if self.retries <= 0 or n_fail == 0 or n_fail == self._settled_at:
            return None
        sid = study_id(study)
        failed = next_to_retry(storage, sid, self.retries)
        if failed is None:
            self._settled_at = n_fail
            return None
        new_id = study._storage.create_new_trial(sid, template_trial=retry_template(failed,
                                                                                    attrs))
        return optuna_trial(study, new_id)


def retryable(fails: list[Any], retries: int) -> list[Any]:
    """The FAIL trials that may be retried (oldest first): interrupted, with attempts left."""
    return sorted((t for t in fails if not t.system_attrs.get(NO_RETRY_ATTR)
                   and attempt_of(t) <= retries), key=lambda t: t.number)


def next_to_retry(storage: Any, sid: int, retries: int) -> Any:
    """The oldest FAIL trial that was interrupted, has attempts left and no retry yet."""
    from optuna.trial import TrialState

    candidates = retryable(storage.get_all_trials(sid, deepcopy=False,
                                                  states=(TrialState.FAIL,)), retries)
    if not candidates:
        return None
    done = {t.system_attrs[RETRY_HISTORY_ATTR][-1]
            for t in storage.get_all_trials(sid, deepcopy=False)
            if t.system_attrs.get(RETRY_HISTORY_ATTR)}
    return next((t for t in candidates if t.number not in done), None)


def retry_template(failed: Any, attrs: dict[str, Any]) -> Any:
    """A RUNNING trial with ``failed``'s parameters, distributions, folder and reported
    values; ``attrs`` are system attributes to write with it (its owner and run)."""
    from optuna.trial import FrozenTrial, TrialState

    history = [*(failed.system_attrs.get(RETRY_HISTORY_ATTR) or []), failed.number]
    system_attrs = {FAILED_TRIAL_ATTR: failed.system_attrs.get(FAILED_TRIAL_ATTR, failed.number),
                    RETRY_HISTORY_ATTR: history, **attrs}
    if "fixed_params" in failed.system_attrs:  # a grid point or enqueued trial stays one
        system_attrs["fixed_params"] = failed.system_attrs["fixed_params"]
    user_attrs = {k: v for k, v in failed.user_attrs.items() if k == TRIAL_DIR_ATTR}
    return FrozenTrial(
        number=-1, trial_id=-1, state=TrialState.RUNNING, value=None, values=None,
        datetime_start=datetime.datetime.now(), datetime_complete=None,
        params=dict(failed.params), distributions=dict(failed.distributions),
        user_attrs=user_attrs, system_attrs=system_attrs,
        intermediate_values=dict(failed.intermediate_values))


def optuna_trial(study: Any, new_id: int) -> Any:
    """An ``optuna.Trial`` for a trial made outside ``Study.ask``, as ``ask`` makes it."""
    import optuna

    study._thread_local.cached_all_trials = None  # the samplers re-read the study
    return optuna.Trial(study, new_id)
