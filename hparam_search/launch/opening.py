"""What a run does before its first trial: create or load the study, check it against earlier
runs, end what dead processes left, record the run, and print the banner."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from .. import preflight
from .. import storage as st
from ..settings import cpu_count
from .plan import run_metadata

if TYPE_CHECKING:
    from .launcher import Launcher


def open_study(launcher: Launcher) -> bool:
    """Create or load the study; False when it has nothing left to do."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg, plan, out = launcher.cfg, launcher.plan, launcher.out
    launcher.storage = st.open_storage(plan.url, create=True)
    launcher.study = st.create_or_load_study(launcher.storage, cfg.study_name, cfg.directions,
                                             cfg.metrics or ((cfg.metric,) if cfg.metric else ()))
    _check_against_previous_runs(launcher)
    if cfg.tracking.on:  # before trials of dead processes are failed: their runs end
        launcher.tracking = _prepare_tracking(launcher)
    stale = launcher.fail_dead(None, "its process died (found when the search was resumed)")
    launcher.done = launcher.done_at_start = st.finished(launcher.counts())
    remaining = cfg.n_trials - launcher.done
    if remaining <= 0:
        launcher.accepting = False
        out.line(f"hparam_search: study '{cfg.study_name}' already has {launcher.done} finished "
                 f"trials (n_trials is {cfg.n_trials}); nothing to do. To run more, extend the "
                 f"budget: {plan.resume_command} --set n_trials={launcher.done + 50}")
        return False
    st.enqueue_once(launcher.study, cfg.explicit, plan.url)
    launcher.run_id = st.record_run(launcher.study, run_metadata(plan), plan.url)
    gpus = ("; GPUs " + ", ".join(launcher.gpu_of(r) or "" for r in range(cfg.n_jobs))
            if cfg.gpus else "")
    out.banner(study=cfg.study_name, db=plan.where, done=launcher.done, target=cfg.n_trials,
               n_workers=min(cfg.n_jobs, remaining), start_method=plan.start_method + gpus,
               dashboard=st.dashboard_command(plan.url), stale=stale,
               threads=_threads_text(launcher))
    if launcher.slurm:
        out.line(f"  slurm      job {launcher.slurm['job']} task {launcher.slurm['task']} on "
                 f"{launcher.slurm['node']}")
    if cfg.n_jobs > cpu_count():
        out.line(f"warning: n_jobs ({cfg.n_jobs}) is more than the {cpu_count()} CPU cores "
                 f"this process may use: workers will take turns on them")
    # Workers beyond what is left are told to quit when they report ready.
    launcher.wanted = min(cfg.n_jobs, remaining)
    if cfg.timeout is not None:
        launcher.deadline = time.time() + cfg.timeout
    launcher.progress.done = launcher.done
    out.start_progress(launcher.progress)
    return True


def _check_against_previous_runs(launcher: Launcher) -> None:
    """Before anything is written: a search space the stored trials cannot take is an error;
    changed fixed values or ranges get a notice."""
    notice = preflight.check(launcher.cfg, launcher.storage, st.study_id(launcher.study))
    if notice:
        launcher.out.line(notice)


def _prepare_tracking(launcher: Launcher) -> Any:
    from .. import tracking

    cfg, plan = launcher.cfg, launcher.plan
    names = list(cfg.metrics or ((cfg.metric,) if cfg.metric else ())) or (
        ["value"] if len(cfg.directions) == 1 else
        [f"value_{i}" for i in range(len(cfg.directions))])
    return tracking.prepare(cfg.tracking, study=launcher.study, url=plan.url,
                            files_root=str(plan.files_root), db_dir=str(plan.db_dir),
                            study_name=cfg.study_name, objectives=names, say=launcher.out.line)


def _threads_text(launcher: Launcher) -> str:
    if launcher.threads is None:
        return "as the libraries choose (threads_per_worker: 0)"
    if "OMP_NUM_THREADS" not in launcher.thread_env:
        return f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} (from your environment)"
    return f"{launcher.threads} per worker (OMP, MKL, OpenBLAS and torch threads)"
