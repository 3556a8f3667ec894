"""One trial: build its config, call train, record the outcome. No processes here."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import storage as st
from ..errors import HparamSearchError
from ..space import ParamSpec, merge_params, suggest
from ..storage.counts import ERROR_ATTR, PRUNE_REASON_ATTR

if TYPE_CHECKING:
    import optuna

TRACEBACK_ATTR = "traceback"
METRIC_ATTR_PREFIX = "metric."


class Interrupted(BaseException):
    """Raised in a worker by SIGTERM: the search is being stopped. A BaseException, so that
    ``except Exception`` in the user's code does not swallow it; ``finally`` and ``with``
    blocks still run (save a last checkpoint there)."""


@dataclass(frozen=True)
class TrialInfo:
    """What :func:`current_trial` returns inside ``train``."""

    number: int
    rank: int
    n_jobs: int
    study_name: str
    storage: str
    params: dict[str, Any] = field(default_factory=dict)
    gpu: str | None = None  # the GPU this worker sees (as CUDA device 0), when `gpus` is set
    dir: Path | None = None  # the configuration's folder, shared by all its attempts
    attempt: int = 1  # 1 for the first run of a configuration, then 2, 3, ... for retries
    retry_of: int | None = None  # the first attempt's trial number, for a retry


@dataclass(frozen=True)
class Objective:
    """How to read train's return value: one number, a dict with a named metric, or several."""

    directions: tuple[str, ...] = ("minimize",)
    metric: str | None = None
    metrics: tuple[str, ...] = ()


_current: TrialInfo | None = None
_optuna_trial: Any = None  # the running optuna.Trial, for report() and should_prune()
_last_step: int | None = None
_stopping = False  # set by the worker when a stop was requested
_artifacts_dir: Path | None = None  # where save_artifact stores files, set by the worker
_sinks: Any = None  # the worker's tracking sinks (MLflow, TensorBoard), told of each report


def report(value: float, step: int) -> None:
    """Record an intermediate value (e.g. the validation loss after epoch ``step``) and stop
    the trial if the configured pruner says so.

    Stopping works by raising :class:`optuna.TrialPruned` (also available as
    ``hparam_search.TrialPruned``) out of ``report``: put clean-up in ``finally`` or a ``with``
    block. The trial is recorded as PRUNED with its last reported value. Outside a search
    (``train({...})``) this does nothing.
    """
    global _last_step
    trial = _optuna_trial
    if trial is None:
        return
    if not st.replace_intermediate(trial, value, step):  # a retry may report a step again
        trial.report(value, step)
    _last_step = step
    if _sinks is not None:
        _sinks.report(value, step)
    if trial.should_prune():
        import optuna

        raise optuna.TrialPruned(f"pruned at step {step}")


def should_prune() -> bool:
    """Whether the pruner would stop this trial now, for manual control: check it after
    ``report`` and return (or raise ``TrialPruned``) yourself. False outside a search."""
    trial = _optuna_trial
    return bool(trial is not None and trial.should_prune())


def current_trial() -> TrialInfo | None:
    """The trial ``train`` is running in: number, worker rank, n_jobs, study name, storage
    URL, sampled params, its folder ``dir`` (the same for every attempt of a configuration:
    keep checkpoints there), ``attempt`` and ``retry_of``.

    Returns None when ``train`` was called directly (``train({...})``) rather than by a search.
    """
    return _current


def stopping() -> bool:
    """True once the search was asked to stop (Ctrl-C, SIGTERM, a cluster's preemption).
    ``train`` learns of the stop as an exception raised where it runs; in a ``finally`` block
    this says whether to write a last checkpoint. False outside a search."""
    return _stopping


def save_artifact(path: str | os.PathLike[str]) -> str | None:
    """Store a file (a checkpoint, a plot) with the running trial, in Optuna's artifact store
    (``<save_db_directory>/<study>/artifacts/``): optuna-dashboard lists and downloads it,
    ``hparam-search best --artifacts DIR`` copies the best trial's. Returns the artifact id;
    does nothing outside a search.

    Raises:
        FileNotFoundError: there is no such file (the trial is then pruned with the message).
    """
    trial = _optuna_trial
    if trial is None or _artifacts_dir is None:
        return None
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"save_artifact: no file {source}")
    import warnings

    from optuna.artifacts import FileSystemArtifactStore, upload_artifact

    _artifacts_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks artifacts experimental
        return upload_artifact(artifact_store=FileSystemArtifactStore(str(_artifacts_dir)),
                               file_path=str(source), study_or_trial=trial)


@dataclass(frozen=True)
class TrialResult:
    """The outcome of one trial, as sent from a worker to the launcher."""

    number: int
    state: str  # COMPLETE, PRUNED or FAIL
    value: float | list[float] | None
    params: dict[str, Any]
    duration_s: float
    rank: int
    reason: str | None = None  # why it was pruned / failed, one line
    traceback: str | None = None
    pruned_by: str | None = None  # PRUNED only: "pruner", "error" or "timeout"
    attempt: int = 1
    retry_of: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # train's other returned numbers


def run_trial(study: optuna.Study, trial: optuna.Trial, train: Callable[[dict], Any],
              fixed: Mapping[str, Any], params: tuple[ParamSpec, ...], info: TrialInfo,
              objective: Objective = Objective(), pruner_name: str = "pruner",
              retry_exceptions: tuple[str, ...] = (),
              on_start: Callable[[TrialInfo, dict[str, Any]], dict[str, Any]] | None = None
              ) -> TrialResult:
    """Sample, call ``train``, tell the study. An exception in ``train`` prunes the trial,
    unless its class (or a base class) is named in ``retry_exceptions``: then the trial fails
    and its configuration is retried like an interrupted one.

    Raises:
        HparamSearchError: train returned something that does not fit the objective (the
            trial is marked FAIL first).
        Interrupted, KeyboardInterrupt: passed through; the caller decides the trial's fate.
    """
    import optuna
    from optuna.trial import TrialState

    global _current, _optuna_trial, _last_step
    with st.batched_writes(trial.storage):  # one transaction for every sampled value
        values = suggest(trial, params)
    config = merge_params(fixed, values)
    _current = dataclasses.replace(info, number=trial.number, params=values)
    if on_start is not None:  # tracking: a run per trial, its id stored on the trial
        for key, value in on_start(_current, config).items():
            trial.storage.set_trial_system_attr(st.trial_id(trial), key, value)
    _optuna_trial, _last_step = trial, None
    start = time.perf_counter()

    def result(state: str, value: Any = None, reason: str | None = None,
               tb: str | None = None, pruned_by: str | None = None,
               metrics: dict[str, float] | None = None) -> TrialResult:
        return TrialResult(trial.number, state, value, values, time.perf_counter() - start,
                           info.rank, reason, tb, pruned_by, info.attempt, info.retry_of,
                           metrics or {})

    try:
        returned = train(config)
    except optuna.TrialPruned:
        step = _last_step
        reason = f"stopped by the {pruner_name} pruner" + (f" at step {step}" if step is not None
                                                           else "")
        trial.set_user_attr(PRUNE_REASON_ATTR, reason)
        study.tell(trial, state=TrialState.PRUNED)
        return result("PRUNED", reason=reason, pruned_by="pruner")
    except SystemExit as exc:
        reason, tb = f"train called sys.exit({exc.code!r})", traceback.format_exc()
        return _prune(study, trial, result, reason, tb)
    except Exception as exc:  # the user's code failed: record it, prune, keep searching
        reason, tb = f"{type(exc).__name__}: {exc}", traceback.format_exc()
        if any(cls.__name__ in retry_exceptions for cls in type(exc).__mro__):
            return _fail_for_retry(trial, result, reason, tb)
        return _prune(study, trial, result, reason, tb)
    finally:
        _current = _optuna_trial = None
    if _stopping:  # train caught the stop and returned early: a partial result, not a value
        raise Interrupted()

    try:
        numbers, extra = read_values(returned, objective)
    except HparamSearchError:
        trial.storage.set_trial_system_attr(st.trial_id(trial), st.NO_RETRY_ATTR, True)
        study.tell(trial, state=TrialState.FAIL)
        raise
    for name, number in extra.items():
        trial.set_user_attr(f"{METRIC_ATTR_PREFIX}{name}", number)
    result = functools.partial(result, metrics=extra)
    bad = [v for v in numbers if not math.isfinite(v)]
    if bad:
        # Not the pruner's doing: counted with the errors.
        reason = f"train returned {bad[0]}"
        trial.set_user_attr(PRUNE_REASON_ATTR, reason)
        trial.set_user_attr(ERROR_ATTR, reason)
        study.tell(trial, state=TrialState.PRUNED)
        return result("PRUNED", reason=reason, pruned_by="error")
    study.tell(trial, numbers if len(numbers) > 1 else numbers[0])
    return result("COMPLETE", numbers if len(numbers) > 1 else numbers[0])


def read_values(returned: Any, objective: Objective) -> tuple[list[float], dict[str, float]]:
    """The objective value(s) in ``returned``, and every other number a returned dict holds.

    Raises:
        HparamSearchError: the return value does not fit the objective.
    """
    n = len(objective.directions)
    names = objective.metrics or ((objective.metric,) if objective.metric else ())
    fix = ("Return the metric to optimise as a float, e.g. 'return val_loss'." if n == 1 else
           f"Return {n} numbers (a tuple or list, in the order of 'directions'), or a dict with "
           f"the keys named by 'metrics'.")
    if isinstance(returned, Mapping):
        if not names:
            keys = ", ".join(map(str, returned)) or "none"
            raise HparamSearchError(
                f"train returned a dict (keys: {keys}) but the config does not say which entry "
                f"to optimise", key="metric" if n == 1 else "metrics",
                fix="Add 'metric: <key>' (or 'metrics: [...]' with several directions).")
        missing = [m for m in names if m not in returned]
        if missing:
            raise HparamSearchError(
                f"train's returned dict has no {', '.join(map(repr, missing))} "
                f"(keys: {', '.join(map(str, returned))})", key="metric" if n == 1 else "metrics",
                fix="Return that key, or name another in the config.")
        raw = [returned[m] for m in names]
        extra = {str(k): _as_number(v) for k, v in returned.items() if k not in names}
        extras = {k: v for k, v in extra.items() if v is not None}
    elif n > 1:
        if not isinstance(returned, (list, tuple)) or len(returned) != n:
            raise HparamSearchError(
                f"train returned {_describe(returned)}; this study has {n} objectives",
                key="directions", fix=fix)
        raw, extras = list(returned), {}
    else:
        raw, extras = [returned], {}
    numbers = [_as_number(v) for v in raw]
    for value, number in zip(raw, numbers):
        if number is None:
            raise HparamSearchError(f"train returned {_describe(value)}, not a number",
                                    key="train", fix=fix)
    return [float(v) for v in numbers if v is not None], extras


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r:.80}"


def _prune(study: optuna.Study, trial: optuna.Trial, result: Callable[..., TrialResult],
           reason: str, tb: str) -> TrialResult:
    from optuna.trial import TrialState

    _release_gpu_memory()  # after a CUDA out-of-memory error the next trial needs it back
    trial.set_user_attr(ERROR_ATTR, reason)
    trial.set_user_attr(TRACEBACK_ATTR, tb)
    study.tell(trial, state=TrialState.PRUNED)
    return result("PRUNED", reason=reason, tb=tb, pruned_by="error")


def _fail_for_retry(trial: optuna.Trial, result: Callable[..., TrialResult], reason: str,
                    tb: str) -> TrialResult:
    """An exception listed in retry_exceptions (a GPU another process held, say): FAIL, so
    the configuration is run again."""

    _release_gpu_memory()
    reason = f"{reason} (in retry_exceptions: retried)"
    trial.set_user_attr(ERROR_ATTR, reason)
    trial.set_user_attr(TRACEBACK_ATTR, tb)
    st.fail_trial(trial.storage, st.trial_id(trial), reason)
    return result("FAIL", reason=reason, tb=tb)


def _release_gpu_memory() -> None:
    import gc
    import sys

    gc.collect()  # the failed trial's tensors are garbage now (its frames are gone)
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_initialized():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - best effort; the worker carries on regardless
            pass


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
