"""One trial: build its config, call train, record the outcome. No processes here."""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import HparamSearchError
from .space import ParamSpec, merge_params, suggest

if TYPE_CHECKING:
    import optuna

ERROR_ATTR = "error"
TRACEBACK_ATTR = "traceback"
PRUNE_REASON_ATTR = "prune_reason"


class Interrupted(BaseException):
    """Raised in a worker by SIGTERM: the search is being stopped. A BaseException, so that
    ``except Exception`` in the user's code does not swallow it."""


@dataclass(frozen=True)
class TrialInfo:
    """What :func:`current_trial` returns inside ``train``."""

    number: int
    rank: int
    n_jobs: int
    study_name: str
    storage: str
    params: dict[str, Any] = field(default_factory=dict)


_current: TrialInfo | None = None


def current_trial() -> TrialInfo | None:
    """The trial ``train`` is running in: number, worker rank, n_jobs, study name, storage URL.

    Returns None when ``train`` was called directly (``train({...})``) rather than by a search.
    """
    return _current


@dataclass(frozen=True)
class TrialResult:
    """The outcome of one trial, as sent from a worker to the launcher."""

    number: int
    state: str  # COMPLETE, PRUNED or FAIL
    value: float | None
    params: dict[str, Any]
    duration_s: float
    rank: int
    reason: str | None = None  # why it was pruned / failed, one line
    traceback: str | None = None


def run_trial(study: optuna.Study, trial: optuna.Trial, train: Callable[[dict], Any],
              fixed: Mapping[str, Any], params: tuple[ParamSpec, ...], info: TrialInfo
              ) -> TrialResult:
    """Sample, call ``train``, tell the study. An exception in ``train`` prunes the trial.

    Raises:
        HparamSearchError: train returned something that is not a number (the trial is
            marked FAIL first).
        Interrupted, KeyboardInterrupt: passed through; the caller decides the trial's fate.
    """
    from optuna.trial import TrialState

    global _current
    values = suggest(trial, params)
    config = merge_params(fixed, values)
    _current = TrialInfo(trial.number, info.rank, info.n_jobs, info.study_name, info.storage,
                         values)
    start = time.perf_counter()

    def result(state: str, value: float | None = None, reason: str | None = None,
               tb: str | None = None) -> TrialResult:
        return TrialResult(trial.number, state, value, values, time.perf_counter() - start,
                           info.rank, reason, tb)

    try:
        returned = train(config)
    except SystemExit as exc:
        reason, tb = f"train called sys.exit({exc.code!r})", traceback.format_exc()
        return _prune(study, trial, result, reason, tb)
    except Exception as exc:  # the user's code failed: record it, prune, keep searching
        reason, tb = f"{type(exc).__name__}: {exc}", traceback.format_exc()
        return _prune(study, trial, result, reason, tb)
    finally:
        _current = None

    value = _as_number(returned)
    if value is None:
        reason = f"train returned {type(returned).__name__} {returned!r:.80}, not a number"
        study.tell(trial, state=TrialState.FAIL)
        raise HparamSearchError(
            reason, key=getattr(train, "__qualname__", "train"),
            fix="Return the metric to optimise as a float, e.g. 'return val_loss'.")
    if not math.isfinite(value):
        trial.set_user_attr(PRUNE_REASON_ATTR, f"train returned {value}")
        study.tell(trial, state=TrialState.PRUNED)
        return result("PRUNED", reason=f"train returned {value}")
    study.tell(trial, value)
    return result("COMPLETE", value)


def _prune(study: optuna.Study, trial: optuna.Trial, result: Callable[..., TrialResult],
           reason: str, tb: str) -> TrialResult:
    from optuna.trial import TrialState

    trial.set_user_attr(ERROR_ATTR, reason)
    trial.set_user_attr(TRACEBACK_ATTR, tb)
    study.tell(trial, state=TrialState.PRUNED)
    return result("PRUNED", reason=reason, tb=tb)


def _as_number(value: Any) -> float | None:
    """float(value) for ints, floats and numeric scalars (numpy, 0-d tensors); else None."""
    if isinstance(value, bool) or isinstance(value, (str, bytes)):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value) if hasattr(value, "__float__") else None
    except (TypeError, ValueError):
        return None
