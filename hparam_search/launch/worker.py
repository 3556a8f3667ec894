"""Worker process: open the study from its URL and run trials while the budget has room.

Spawn target; no argv, no YAML. Talks to the launcher through one pipe:
worker -> launcher: ("ready",), ("start", ...) when a trial starts, ("out", text) for its
output, ("trial", TrialResult), ("fatal", message), ("done",)
launcher -> worker: ("go", {settings decided after start}) or ("quit",)
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import storage as st
from ..errors import HparamSearchError
from ..sampling import PrunerSpec, SamplerSpec, build_pruner, build_sampler
from ..space import ParamSpec
from . import capture as _capture
from . import signals
from . import trial as _trial
from .fork_server import PRELOAD, preload_for

EXIT_DONE = 0
EXIT_FATAL = 3  # a message explaining why was sent first
EXIT_INTERRUPTED = 4
EXIT_RECYCLE = 5  # ran its one trial (isolate_trials): the launcher starts a fresh process
_SEED_STRIDE = 1_000_003
LOG_ATTR = "log_file"


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, small and picklable."""

    script: str
    module: str
    qualname: str
    url: str
    study_name: str
    fixed: dict[str, Any]
    params: tuple[ParamSpec, ...]
    n_trials: int
    n_jobs: int
    sampler: SamplerSpec
    pruner: PrunerSpec
    objective: _trial.Objective
    fail_fast: int
    rank: int
    generation: int
    resumed_from: int  # finished trials when this launch began: varies seeds on resume
    trials_root: str = ""  # each new configuration gets the folder <trials_root>/<number>/
    trial_logs: bool = True  # a trial's output also goes to <its folder>/<number>.log
    artifacts_dir: str | None = None  # save_artifact's store
    retries: int = 0
    retry_exceptions: tuple[str, ...] = ()
    slurm: dict[str, Any] | None = None  # job, task and node, recorded as the trial's owner
    tracking: Any = None  # tracking.Context from the launcher: MLflow / TensorBoard, or None
    deadline: float | None = None  # wall-clock time after which no trial starts (`timeout`)
    one_trial: bool = False  # leave after one trial (`isolate_trials`): a fresh process each
    gpu: str | None = None  # CUDA_VISIBLE_DEVICES for this worker
    run_id: int = 0  # this run's index in the study's run records, stored on each trial
    threads: int | None = None  # torch's intra-op threads, when the launcher chose them


def worker_seed(spec: WorkerSpec) -> int | None:
    """Distinct per worker (and per replacement and resume), reproducible for a fresh study."""
    seed = spec.sampler.seed
    if seed is None:
        return None
    slot = spec.generation * spec.n_jobs + spec.rank
    return (seed + _SEED_STRIDE * slot + 7919 * spec.resumed_from) % 2**32


def resolve_train(module: str, qualname: str) -> Callable[[dict], Any]:
    """Find the user's undecorated train function again in this process."""
    if module == "__main__":
        # spawn/forkserver import the script as __mp_main__; fork keeps __main__.
        mod = sys.modules.get("__mp_main__") or sys.modules["__main__"]
    else:
        mod = importlib.import_module(module)
    obj: Any = mod
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise HparamSearchError(
                f"a worker could not find '{qualname}' in {getattr(mod, '__file__', module)}",
                fix="Define the decorated function at the top level of your script.")
    return getattr(obj, "__hparam_search_train__", obj)


def main(spec: WorkerSpec, conn: multiprocessing.connection.Connection) -> None:
    """Process entry point. Never ends in a traceback: a second signal that lands while the
    first exit path runs still leaves quietly."""
    try:
        _main(spec, conn)
    except BaseException:  # noqa: BLE001 - _main's own handlers already said what happened
        _leave(EXIT_INTERRUPTED)


def _main(spec: WorkerSpec, conn: multiprocessing.connection.Connection) -> None:
    if spec.gpu is not None:  # before train's code can initialise CUDA
        os.environ["CUDA_VISIBLE_DEVICES"] = spec.gpu
    signals.lead_own_group()  # whatever train starts can be ended with this process
    signals.die_with_parent()
    _trial._artifacts_dir = Path(spec.artifacts_dir) if spec.artifacts_dir else None
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher turns Ctrl-C into SIGTERM
    signal.signal(signal.SIGTERM, _raise_interrupted)
    for stream in (sys.stdout, sys.stderr):  # train's prints show up (and reach logs) at once
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)
    state = _State()
    try:
        train = resolve_train(spec.module, spec.qualname)
        _limit_torch_threads(spec.threads)
        _preload(spec.url)

        _watch_launcher(state)
        conn.send(("ready",))
        reply = conn.recv()
        if reply[0] != "go":
            _leave(EXIT_DONE)
        spec = dataclasses.replace(spec, **reply[1])
        storage = state.storage = st.open_storage(spec.url, create=False)
        study = _load_study(spec, storage)
        if spec.tracking is not None:
            from ..tracking import TrialSinks

            state.sinks = _trial._sinks = TrialSinks(spec.tracking)
        _loop(spec, study, storage, train, conn, state)
    except _Recycle:
        _leave(EXIT_RECYCLE)
    except (_trial.Interrupted, KeyboardInterrupt, EOFError, BrokenPipeError):
        # Stopped by the launcher, or the launcher is gone (before the catch-all below: EOFError
        # and BrokenPipeError are Exceptions): give the slot back and leave. Not cut short by
        # a SIGTERM now (the launcher's death sends one) while this or the watchdog writes.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        state.fail_current("interrupted: the search was stopped")
        _leave(EXIT_INTERRUPTED)
    except HparamSearchError as exc:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the launcher may be stopping us already
        _send(conn, ("fatal", str(exc)))
        _leave(EXIT_FATAL)
    except Exception as exc:  # noqa: BLE001 - not train's (run_trial catches those)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        state.fail_current(f"the worker failed: {type(exc).__name__}: {exc}")
        message = st.failure_message(exc, f"worker {spec.rank}")
        if os.environ.get("HPARAM_SEARCH_DEBUG"):
            import traceback

            message += "\n" + traceback.format_exc()
        _send(conn, ("fatal", message))
        _leave(EXIT_FATAL)
    _send(conn, ("done",))
    _leave(EXIT_DONE)


def _preload(url: str) -> None:
    """Import what the trial loop needs while the launcher is still creating the study. A
    driver that is not installed is reported where the storage is opened, not here."""
    for name in preload_for(url):
        try:
            importlib.import_module(name)
        except ImportError:
            if name in PRELOAD:
                raise


def _limit_torch_threads(threads: int | None) -> None:
    """torch reads OMP_NUM_THREADS when it is imported; a script that imported it before the
    launcher set the variable (start method fork) gets the same count here."""
    torch = sys.modules.get("torch")
    if threads is not None and torch is not None:
        torch.set_num_threads(threads)


def _leave(code: int) -> None:
    """Exit at once: everything is committed, and tearing the interpreter down (modules,
    finalizers) only delays the launcher's exit. A late SIGTERM cannot interrupt it either.
    Processes a trial started (and left behind) are ended first."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signals.end_rest_of_group()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


class _State:
    """The worker's current trial, so the watchdog can give it back if the launcher dies.

    ``lock`` is held while a trial is claimed and recorded here, and while it is given back:
    the main thread and the watchdog may both give up at once (the launcher's death is also a
    SIGTERM to the main thread), and neither may exit under the other's write or claim."""

    def __init__(self) -> None:
        self.storage: Any = None
        self.sinks: Any = None  # tracking sinks, whose runs end with the trial
        self.trial_id: int | None = None
        self.lock = threading.Lock()

    def fail_current(self, reason: str) -> None:
        with self.lock:
            self.fail_current_locked(reason)

    def fail_current_locked(self, reason: str) -> None:
        trial_id, self.trial_id = self.trial_id, None
        if trial_id is not None and self.storage is not None:
            try:
                if st.fail_trial(self.storage, trial_id, reason) and self.sinks is not None:
                    self.sinks.end_interrupted([self.storage.get_trial(trial_id)])
            except Exception:  # noqa: BLE001 - best effort; the launcher sweeps up after us
                pass


def _raise_interrupted(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one interruption; then let cleanup run
    _trial._stopping = True
    raise _trial.Interrupted()


def _watch_launcher(state: _State) -> None:
    """Exit soon after the launcher dies (even SIGKILLed), so no worker trains for hours."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        with state.lock:  # kept until the exit: no further trial is claimed
            state.fail_current_locked("the launcher process died")
            _leave(EXIT_INTERRUPTED)

    threading.Thread(target=watch, name="hparam-search-watchdog", daemon=True).start()


def _load_study(spec: WorkerSpec, storage: Any) -> Any:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Samplers such as gp and qmc are marked experimental; the user chose them knowingly.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # Heartbeats are sent by this worker itself (storage.Heartbeat), not by Study.optimize.
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    return optuna.load_study(study_name=spec.study_name, storage=storage,
                             sampler=build_sampler(spec.sampler, seed=worker_seed(spec)),
                             pruner=build_pruner(spec.pruner))


class _Recycle(Exception):
    """This worker ran its one trial (isolate_trials)."""


class _Channel:
    """The pipe to the launcher, shared by the trial loop and the output-capture thread."""

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()

    def send(self, message: tuple) -> None:
        with self.lock:
            self.conn.send(message)

    def relay(self, text: str) -> None:
        try:
            self.send(("out", text))
        except (BrokenPipeError, OSError):
            pass  # the launcher is gone; the watchdog ends this process


def _loop(spec: WorkerSpec, study: Any, storage: Any, train: Callable[[dict], Any],
          conn: multiprocessing.connection.Connection, state: _State) -> None:
    owner = st.Owner.me(spec.rank, spec.slurm).as_attr()
    base = _trial.TrialInfo(-1, spec.rank, spec.n_jobs, spec.study_name, spec.url, gpu=spec.gpu)
    channel = _Channel(conn)
    # Who runs the trial and under which run: written with the trial itself.
    new_attrs = {st.OWNER_ATTR: owner, st.RUN_ATTR_OF_TRIAL: spec.run_id}
    claim = _claimer(spec, study, storage, new_attrs, state)
    capture = _capture.OutputCapture(channel.relay) if spec.trial_logs else None
    beats = st.Heartbeat(storage)
    while True:
        if spec.deadline is not None and time.time() >= spec.deadline:
            return
        with state.lock:
            taken = claim()
            if taken is None:
                return
            trial, retried = taken
            state.trial_id = st.trial_id(trial)
        frozen = st.frozen_of(trial) if retried else None
        info = _trial_info(base, spec, trial, frozen)
        channel.send(("start", trial.number, st.trial_id(trial), info.retry_of, info.attempt))
        log_path = info.dir / f"{trial.number}.log" if spec.trial_logs else None
        if st.frozen_of(trial).user_attrs.get(st.TRIAL_DIR_ATTR) is None:  # not written yet
            st.set_user_attrs(storage, st.trial_id(trial), _files_of(spec, trial.number, frozen))
        with contextlib.ExitStack() as during:
            during.enter_context(beats.running(st.trial_id(trial)))
            if capture is not None and log_path is not None:
                during.enter_context(capture.trial(
                    log_path, f"[trial {trial.number} w{spec.rank}] "))
            result = _trial.run_trial(study, trial, train, spec.fixed, spec.params, info,
                                      spec.objective, spec.pruner.type, spec.retry_exceptions,
                                      state.sinks.start if state.sinks else None)
        if state.sinks is not None:
            state.sinks.finish(result, result.metrics)
        if result.traceback and log_path is not None:
            # In the log only: the console already has the one-line reason.
            _capture.append(log_path, result.traceback)
        with state.lock:
            state.trial_id = None
        channel.send(("trial", result))
        if result.traceback and spec.fail_fast and _all_failed_so_far(study, spec.fail_fast):
            raise HparamSearchError(
                f"the first {spec.fail_fast} finished trials all raised an exception, so the "
                f"search stopped early (likely a bug in train)",
                fix=f"Fix train and run again (the study resumes), or set fail_fast: 0 to "
                    f"search on regardless. The first failure:\n"
                    f"{_first_traceback(study).rstrip()}")
        if spec.one_trial:
            raise _Recycle()


STALE_REASON = "its heartbeat stopped: its process or host was lost"


def _claimer(spec: WorkerSpec, study: Any, storage: Any, attrs: dict[str, Any], state: _State
             ) -> Callable[[], tuple[Any, bool] | None]:
    """How this worker takes its next trial: (the optuna.Trial, whether it is a retry), or None
    when the budget is spent. An interrupted configuration comes first, then a WAITING
    (enqueued) trial, then a new one."""
    if hasattr(storage, "claim"):  # the fast path: one transaction
        interval = storage.heartbeat_interval
        next_stale_check = [0.0]

        def fast() -> tuple[Any, bool] | None:
            due = interval is not None and time.monotonic() >= next_stale_check[0]
            if due:
                next_stale_check[0] = time.monotonic() + interval
            claimed = storage.claim(study, spec.n_trials, attrs, retries=spec.retries,
                                    check_stale=due, stale_reason=STALE_REASON,
                                    user_attrs=lambda n, r: _files_of(spec, n, r))
            if storage.stale_failed and state.sinks is not None:  # their runs end KILLED
                state.sinks.end_interrupted([storage.get_trial(t) for t in storage.stale_failed])
            if claimed is None:
                return None
            return st.optuna_trial(study, claimed.trial_id), claimed.retried is not None

        return fast

    # Optuna's own storages (journal files, MySQL): a lock around count, retry and ask.
    planner = st.RetryPlanner(spec.retries)
    study_id = st.study_id(study)

    def locked() -> tuple[Any, bool] | None:
        with st.budget_lock(spec.url, spec.study_name, storage):
            stale = st.fail_stale(storage, study_id)
            if stale and state.sinks is not None:
                state.sinks.end_interrupted([storage.get_trial(t) for t in stale])
            counts = st.state_counts(storage, study_id)
            if st.claimed(counts) >= spec.n_trials:
                return None
            trial = planner.claim(study, storage, counts.get("FAIL", 0), attrs)
            if trial is not None:
                return trial, True
            trial = study.ask()
            for key, value in attrs.items():
                storage.set_trial_system_attr(st.trial_id(trial), key, value)
            return trial, False

    return locked


def _folder_of(spec: WorkerSpec, number: int, retried: Any) -> Path:
    """A new configuration's own folder, or the one every attempt of a retried one shares."""
    folder = retried.user_attrs.get(st.TRIAL_DIR_ATTR) if retried is not None else None
    return Path(folder) if folder else Path(spec.trials_root) / str(number)


def _files_of(spec: WorkerSpec, number: int, retried: Any) -> dict[str, str]:
    """The user attributes naming a trial's folder and log file."""
    folder = _folder_of(spec, number, retried)
    files = {st.TRIAL_DIR_ATTR: str(folder)}
    if spec.trial_logs:
        files[LOG_ATTR] = str(folder / f"{number}.log")
    return files


def _trial_info(base: _trial.TrialInfo, spec: WorkerSpec, trial: Any, retried: Any
                ) -> _trial.TrialInfo:
    """The trial as train sees it, with its folder made."""
    path = _folder_of(spec, trial.number, retried)
    path.mkdir(parents=True, exist_ok=True)
    if retried is None:
        return dataclasses.replace(base, number=trial.number, dir=path)
    return dataclasses.replace(base, number=trial.number, dir=path,
                               attempt=st.attempt_of(retried), retry_of=st.retry_of(retried))


def _all_failed_so_far(study: Any, limit: int) -> bool:
    first = _first_finished(study, limit)
    return len(first) == limit and all(_trial.ERROR_ATTR in t.user_attrs for t in first)


def _first_finished(study: Any, limit: int) -> list[Any]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return sorted(trials, key=lambda t: t.number)[:limit]


def _first_traceback(study: Any) -> str:
    first = _first_finished(study, 1)
    return first[0].user_attrs.get(_trial.TRACEBACK_ATTR, "") if first else ""


def _send(conn: multiprocessing.connection.Connection, message: tuple) -> None:
    try:
        conn.send(message)
    except (BrokenPipeError, OSError):
        pass
