"""One study as a Slurm job array: the ``slurm:`` settings, the sbatch script, submit, status
and cancel, and what a launcher learns from the allocation it runs in.

Plain ``sbatch``/``squeue``/``scancel`` are used (no Python library): they are on every login
node, need no accounting database, and what they print is what a Slurm user already knows.
Every array task runs the same launcher command; the tasks share the study through its
storage (PostgreSQL, or a journal file on a shared filesystem), whose lock keeps the count
exact across them.
"""

from __future__ import annotations

import datetime
import functools
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import HparamSearchError, Locate, did_you_mean, fail_at

KEYS = ("tasks", "partition", "time", "gpus_per_task", "cpus_per_task", "sbatch",
        "nodes_share_sqlite")
JOBS_ATTR = "hparam_search:slurm_jobs"  # study system attribute: every submission
EXIT_SCHEDULER = 1  # sbatch refused the job
# Slurm's time formats: minutes, minutes:seconds, hours:minutes:seconds, days-hours,
# days-hours:minutes, days-hours:minutes:seconds.
_TIME = re.compile(r"^(\d+-\d+(:\d+(:\d+)?)?|\d+(:\d+(:\d+)?)?|UNLIMITED|INFINITE)$")


@dataclass(frozen=True)
class SlurmSpec:
    """A validated ``slurm:`` section."""

    tasks: int = 1
    partition: str | None = None
    time: str | None = None
    gpus_per_task: int | None = None
    cpus_per_task: int | None = None
    sbatch: tuple[str, ...] = ()
    nodes_share_sqlite: bool = False


def parse_slurm(raw: Any, locate: Locate) -> SlurmSpec | None:
    """Validate the ``slurm:`` section (None when absent)."""
    if raw is None:
        return None

    fail = functools.partial(fail_at, locate)

    if not isinstance(raw, Mapping):
        fail("slurm", "must be a mapping of Slurm settings", raw,
             "Write e.g. 'slurm: {tasks: 8, partition: gpu, time: \"04:00:00\"}'.")
    for key in raw:
        if key not in KEYS:
            fail(f"slurm.{key}", "unknown Slurm setting",
                 fix=did_you_mean(str(key), KEYS) or f"Use {', '.join(KEYS)}; other sbatch "
                     "options go in 'sbatch: [\"--option=value\"]'.")
    tasks = raw.get("tasks", 1)
    if not _is_int(tasks) or tasks < 1:
        fail("slurm.tasks", "must be an integer >= 1 (the number of array tasks)", tasks)
    for key in ("gpus_per_task", "cpus_per_task"):
        value = raw.get(key)
        if value is not None and (not _is_int(value) or value < 1):
            fail(f"slurm.{key}", "must be an integer >= 1", value)
    partition = raw.get("partition")
    if partition is not None and (not isinstance(partition, str) or not partition.strip()):
        fail("slurm.partition", "must be a partition name", partition)
    limit = raw.get("time")
    if limit is not None:
        text = str(limit) if _is_int(limit) else limit
        if not isinstance(text, str) or not _TIME.match(text.strip()):
            fail("slurm.time", "is not a Slurm time limit", limit,
                 'Write it as Slurm does, quoted: e.g. "04:00:00", "2-00:00:00" or "90" '
                 "(minutes).")
        limit = text.strip()
    extra = raw.get("sbatch", [])
    if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
        fail("slurm.sbatch", "must be a list of sbatch options, as strings", extra,
             'Write e.g. \'sbatch: ["--account=lab", "--qos=normal"]\'.')
    shared = raw.get("nodes_share_sqlite", False)
    if not isinstance(shared, bool):
        fail("slurm.nodes_share_sqlite", "must be true or false", shared)
    return SlurmSpec(tasks=tasks, partition=partition, time=limit,
                     gpus_per_task=raw.get("gpus_per_task"),
                     cpus_per_task=raw.get("cpus_per_task"), sbatch=tuple(extra),
                     nodes_share_sqlite=shared)


def check_storage(spec: SlurmSpec, url: str, where: tuple[str, int | None]) -> None:
    """Array tasks run on several nodes: they need a storage every node reaches."""
    if not url.startswith("sqlite:") or spec.nodes_share_sqlite:
        return
    raise HparamSearchError(
        "a Slurm array needs a storage every node reaches, and a SQLite file is not one "
        "(SQLite over NFS corrupts)", source=where[0], line=where[1], key="storage",
        fix="Set 'storage: postgresql://user:password@db-host/db' (or 'storage: "
            "journal:PATH' on a shared filesystem); on a single-node partition, "
            "'slurm: {nodes_share_sqlite: true}' keeps the SQLite file.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _slurm(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a Slurm command; a controller that does not answer is one line, not a traceback."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise HparamSearchError(f"{Path(cmd[0]).name} did not answer within {timeout:g}s",
                                fix="Check that Slurm's controller is up (sinfo), then try "
                                    "again.") from exc
    except OSError as exc:
        raise HparamSearchError(f"cannot run {cmd[0]}: {exc.strerror or exc}",
                                fix="Run this on a Slurm login node (or load Slurm's "
                                    "module).") from exc


# -- the job script ------------------------------------------------------------------------
def signal_lead(stop_grace: float) -> int:
    """Seconds before its time limit that a task is asked to stop (``--signal=B:TERM@N``):
    Slurm sends it up to 30 s early, and the launcher needs stop_grace to end its trials."""
    return max(60, int(stop_grace) + 30)


def job_script(*, study: str, spec: SlurmSpec, command: Sequence[str], workdir: Path,
               output_dir: Path, stop_grace: float, storage: str) -> str:
    """A readable sbatch script: a job array whose tasks each run the same launcher."""
    # append: a requeued task's log continues its earlier run's instead of replacing it
    options = [f"--job-name=hparam-search-{study}", f"--array=0-{spec.tasks - 1}", "--requeue",
               f"--signal=B:TERM@{signal_lead(stop_grace)}", "--ntasks=1",
               f"--output={output_dir}/%A_%a.out", "--open-mode=append"]
    if spec.partition:
        options.append(f"--partition={spec.partition}")
    if spec.time:
        options.append(f"--time={spec.time}")
    if spec.gpus_per_task:
        options.append(f"--gpus-per-task={spec.gpus_per_task}")
    if spec.cpus_per_task:
        options.append(f"--cpus-per-task={spec.cpus_per_task}")
    options += spec.sbatch
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    lines = ["#!/bin/bash", *(f"#SBATCH {opt}" for opt in options), "",
             f"# Written by 'hparam-search slurm submit' on {stamp}.",
             f"# Each of the {spec.tasks} array tasks runs the same launcher; together they run",
             f"# study '{study}'",
             f"# in {storage},",
             "# and end with exactly its n_trials finished trials.",
             "# A task that is preempted or requeued gets SIGTERM: its launcher stops",
             "# its workers, their trials end FAIL and are retried by whichever task claims",
             "# next (the requeued one included). 'exec' makes the launcher the process that",
             "# receives Slurm's signals.",
             f"cd {shlex.quote(str(workdir))}",
             "exec " + " ".join(shlex.quote(part) for part in command), ""]
    return "\n".join(lines)


def submit(script: Path) -> str:
    """Submit ``script`` with sbatch; the job id.

    Raises:
        HparamSearchError: sbatch is missing, or refused the job (its own message).
    """
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise HparamSearchError("sbatch is not on PATH",
                                fix="Run this on a Slurm login node (or load Slurm's module).")
    done = _slurm([sbatch, "--parsable", str(script)], timeout=120)
    if done.returncode != 0:
        said = " ".join((done.stderr or done.stdout).split()) or f"exit code {done.returncode}"
        raise SchedulerRefused(f"sbatch refused the job: {said}",
                               fix=f"Fix the slurm: settings (or the sbatch options) and submit "
                                   f"again; the script is {script}.")
    return done.stdout.strip().split(";")[0]


class SchedulerRefused(HparamSearchError):
    """The scheduler said no (exit code 1, not a config mistake)."""

    exit_code = EXIT_SCHEDULER


# -- inside a task -------------------------------------------------------------------------
def in_job(env: Mapping[str, str] = os.environ) -> bool:
    return "SLURM_JOB_ID" in env


def owner_info(env: Mapping[str, str] = os.environ) -> dict[str, Any] | None:
    """The job, array task and node a trial runs in, for its owner attribute."""
    if not in_job(env):
        return None
    task = env.get("SLURM_ARRAY_TASK_ID")
    return {"job": env.get("SLURM_ARRAY_JOB_ID") or env["SLURM_JOB_ID"],
            "task": int(task) if task and task.isdigit() else task,
            "node": env.get("SLURMD_NODENAME")}


def allocated_gpus(env: Mapping[str, str] = os.environ) -> list[str]:
    """The GPUs Slurm gave this task (it sets CUDA_VISIBLE_DEVICES for a GPU allocation)."""
    if not in_job(env) or not (env.get("SLURM_GPUS_ON_NODE") or env.get("SLURM_JOB_GPUS")
                               or env.get("SLURM_STEP_GPUS")):
        return []
    visible = env.get("CUDA_VISIBLE_DEVICES", "")
    return [g.strip() for g in visible.split(",") if g.strip()]


def allocated_cpus(env: Mapping[str, str] = os.environ) -> int | None:
    if not in_job(env):
        return None
    value = env.get("SLURM_CPUS_PER_TASK", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


# -- status and cancel ---------------------------------------------------------------------
@dataclass(frozen=True)
class ArrayTask:
    """One array task as squeue shows it."""

    job: str
    task: str
    state: str
    elapsed: str
    where: str  # the node, or why it is pending


def queue(job_ids: Sequence[str]) -> list[ArrayTask]:
    """The array tasks Slurm still knows of (finished ones leave squeue soon after)."""
    squeue = shutil.which("squeue")
    if squeue is None or not job_ids:
        return []
    done = _slurm([squeue, "-h", "-r", "-j", ",".join(job_ids), "-o", "%F|%K|%T|%M|%R"],
                  timeout=60)
    if done.returncode != 0:  # every job already purged: "Invalid job id specified"
        return []
    tasks = []
    for line in done.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 5:
            tasks.append(ArrayTask(*parts))
    return tasks


def cancel(job_id: str, wait_s: float) -> str:
    """Cancel an array so that nothing is lost: pending tasks are removed first, running ones
    get SIGTERM (their launchers stop their workers; the trials end FAIL and are retried by
    the next submission), then what is left is cancelled. Returns what was done, in words."""
    scancel = shutil.which("scancel")
    if scancel is None:
        raise HparamSearchError("scancel is not on PATH",
                                fix="Run this on a Slurm login node (or load Slurm's module).")
    before = queue([job_id])
    pending = [t for t in before if t.state == "PENDING"]
    running = [t for t in before if t.state in ("RUNNING", "CONFIGURING", "COMPLETING")]
    _slurm([scancel, "--state=PENDING", job_id], timeout=60)
    if running:
        _slurm([scancel, "--batch", "--signal=TERM", job_id], timeout=60)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and any(
                t.state in ("RUNNING", "COMPLETING") for t in queue([job_id])):
            time.sleep(0.5)  # squeue is the only way to see the tasks leave
    left = [t for t in queue([job_id]) if t.state not in ("COMPLETED", "CANCELLED")]
    _slurm([scancel, job_id], timeout=60)
    parts = []
    if running:
        stopped = len(running) - len([t for t in left if t.state == "RUNNING"])
        parts.append(f"sent SIGTERM to {len(running)} running task"
                     f"{'s' if len(running) != 1 else ''} ({stopped} stopped on their own; "
                     "their interrupted trials will be retried)")
    if pending:
        parts.append(f"removed {len(pending)} pending task{'s' if len(pending) != 1 else ''}")
    if not parts:
        parts.append("no task of it was queued or running")
    return f"job {job_id}: " + "; ".join(parts) + "; the job is cancelled."
