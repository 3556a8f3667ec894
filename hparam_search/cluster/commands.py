"""``hparam-search slurm submit|status|cancel``: what each does, printed as it goes.

The script's own resolved plan (config file, --set overrides, study, storage, slurm:
settings) is read by running it with ``--plan-json``: the same code that runs the search
resolves it, so the job array runs exactly what ``python train.py`` would.
"""

from __future__ import annotations

import datetime
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from .. import storage as st
from ..config import display_path
from ..errors import HparamSearchError
from . import slurm


class ConfigMistake(HparamSearchError):
    """A mistake in the script's config or the command line: exit code 2."""

    exit_code = 2


def main(args: Any) -> int:
    """Run one ``hparam-search slurm`` action; the exit code."""
    return {"submit": submit, "status": status, "cancel": cancel}[args.slurm_command](args)


# -- submit --------------------------------------------------------------------------------
def _passed(args: Any) -> list[str]:
    """The script's own options among ``args``: its config file and --set overrides."""
    return ([f"--config={args.config}"] if args.config else []) + \
        (["--set", *args.overrides] if args.overrides else [])


def submit(args: Any) -> int:
    script = Path(args.script).resolve()
    passed = _passed(args)
    plan = read_plan(script, passed)
    spec = plan["slurm"]
    if spec is None:
        raise ConfigMistake(f"{display_path(Path(plan['config']))} has no slurm: section",
                            key="slurm", fix="Add e.g. 'slurm: {tasks: 4, partition: gpu, "
                                             "time: \"04:00:00\"}' to the config.")
    spec = slurm.SlurmSpec(**{**spec, "sbatch": tuple(spec["sbatch"])})
    try:
        slurm.check_storage(spec, plan["url"], tuple(plan["storage_where"]))
    except HparamSearchError as exc:
        raise ConfigMistake(exc.problem, source=exc.source, key=exc.key, line=exc.line,
                            fix=exc.fix) from exc
    folder = Path(plan["db_dir"]) / plan["study"] / "slurm"
    command = [sys.executable, str(script), *passed]
    text = slurm.job_script(study=plan["study"], spec=spec, command=command,
                            workdir=script.parent, output_dir=folder,
                            stop_grace=plan["stop_grace"], storage=st.describe(plan["url"]))
    if args.dry_run:
        print(text, end="")
        print(f"\n(dry run: nothing written or submitted; a submit writes this to "
              f"{display_path(folder)}/<time>.sbatch)", file=sys.stderr)
        return 0
    # The storage must be reachable from here before anything is submitted; the study itself
    # is touched only once the scheduler accepted the job.
    storage = _open_storage(plan["url"])
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{datetime.datetime.now():%Y%m%d-%H%M%S}.sbatch"
        path.write_text(text, encoding="utf-8")
        try:
            job = slurm.submit(path)
        except HparamSearchError:
            path.unlink(missing_ok=True)  # refused: nothing of it is kept
            raise
        study = st.create_or_load_study(storage, plan["study"], tuple(plan["directions"]),
                                        tuple(plan["metrics"]))
        _record_job(study, plan["url"], {
            "job": job, "tasks": spec.tasks, "script": str(path),
            "submitted": datetime.datetime.now().isoformat(timespec="seconds"),
            "stop_grace": plan["stop_grace"]})
    finally:
        st.close_storage(storage)
    ref = " ".join(shlex.quote(part) for part in [display_path(script), *passed])
    print(f"submitted job {job}: {spec.tasks} array task{'s' if spec.tasks != 1 else ''} for "
          f"study '{plan['study']}' ({st.describe(plan['url'])})")
    print(f"  script   {display_path(path)}")
    print(f"  logs     {display_path(folder)}/{job}_<task>.out")
    print(f"  watch    hparam-search slurm status {ref}   (or: squeue -j {job})")
    print(f"  cancel   hparam-search slurm cancel {ref}")
    return 0


def read_plan(script: Path, passed: list[str]) -> dict[str, Any]:
    """The script's resolved plan (its config mistakes are reported as the script reports
    them, with exit code 2)."""
    if not script.is_file():
        raise ConfigMistake(f"no script {script}", fix="Pass the path of your training script.")
    try:
        done = subprocess.run([sys.executable, str(script), "--plan-json", *passed],
                              capture_output=True, text=True, cwd=script.parent, timeout=600)
    except subprocess.TimeoutExpired as exc:
        raise HparamSearchError(f"{script.name} took more than 10 minutes to resolve its "
                                "config (--plan-json)",
                                fix="Check what the script does at import time.") from exc
    if done.returncode != 0:
        said = done.stderr.strip().removeprefix("error: ") or f"exit code {done.returncode}"
        raise ConfigMistake(said) if done.returncode == 2 else HparamSearchError(said)
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise HparamSearchError(f"{script.name} printed no plan (is it a script decorated "
                                f"with @hparam_search that calls train()?)") from exc


def _open_storage(url: str) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return st.open_storage(url, create=True)


def _record_job(study: Any, url: str, record: dict[str, Any]) -> None:
    storage, sid = study._storage, st.study_id(study)
    with st.budget_lock(url, study.study_name, getattr(storage, "_backend", storage)):
        jobs = storage.get_study_system_attrs(sid).get(slurm.JOBS_ATTR, [])
        storage.set_study_system_attr(sid, slurm.JOBS_ATTR, [*jobs, record])


# -- status and cancel ---------------------------------------------------------------------
def _study_of(args: Any) -> tuple[str, str]:
    """(storage URL, study name) of a study argument, or of a training script's study with
    the overrides it was submitted with."""
    if args.study.endswith(".py"):
        plan = read_plan(Path(args.study).resolve(), _passed(args))
        return plan["url"], plan["study"]
    if args.overrides or args.config:
        raise ConfigMistake("--set and --config go with a training script, not a study",
                            fix="Pass the script (train.py --set ...) or the study alone.")
    from ..results import resolve

    ref = resolve(args.study)
    return ref.url, ref.name


def status(args: Any) -> int:
    from ..results import StudyReader

    url, name = _study_of(args)
    with StudyReader(url, name) as reader:
        jobs = reader.study_system_attrs().get(slurm.JOBS_ATTR, [])
        counts, kinds = reader.counts(), reader.pruned_kinds()
        running = reader.records(states=["RUNNING"])
    print(f"study '{name}' in {st.describe(url)}")
    print(f"trials   {sum(counts.values())}: {st.format_counts(counts, kinds)}")
    if not jobs:
        print("no Slurm job was submitted for this study (hparam-search slurm submit SCRIPT)")
        return 0
    by_task: dict[tuple[str, str], list[int]] = {}
    for trial in running:
        where = (trial.system_attrs.get(st.OWNER_ATTR) or {}).get("slurm") or {}
        by_task.setdefault((str(where.get("job")), str(where.get("task"))), []).append(
            trial.number)
    listed = slurm.queue([j["job"] for j in jobs])
    for job in jobs:
        tasks = [t for t in listed if t.job == job["job"]]
        print(f"\njob {job['job']} (submitted {job['submitted']}, {job['tasks']} tasks): "
              + (f"{len(tasks)} listed by squeue" if tasks else "no task listed by squeue "
                 "(finished or cancelled)"))
        if tasks:
            print("  task  state        elapsed     node (or why pending)  running trials")
            for t in tasks:
                numbers = by_task.get((job["job"], t.task), [])
                print(f"  {t.task:<5} {t.state:<12} {t.elapsed:<11} {t.where:<22} "
                      + (", ".join(map(str, numbers)) or "-"))
    return 0


def cancel(args: Any) -> int:
    from ..results import StudyReader

    url, name = _study_of(args)
    with StudyReader(url, name) as reader:
        jobs = reader.study_system_attrs().get(slurm.JOBS_ATTR, [])
    live = {t.job for t in slurm.queue([j["job"] for j in jobs])}
    if not live:
        print(f"study '{name}': no job of it is queued or running; nothing to cancel")
        return 0
    for job in jobs:
        if job["job"] in live:
            wait = float(job.get("stop_grace", 30)) + 30
            print(slurm.cancel(job["job"], wait_s=wait), flush=True)
    return 0
