"""Study settings: the top-level keys that configure the search rather than train, with their
defaults and checks. Does not import optuna."""

from __future__ import annotations

import functools
import os
from typing import Any

from .errors import Locate, did_you_mean, fail_at

SWEEP_KEY = "sweep_parameters"
DIRECTIONS = ("minimize", "maximize")
START_METHODS = ("spawn", "forkserver", "fork")
MAX_FILE_NAME = 255  # bytes, on Linux and macOS filesystems

# name -> (required, default). The checks themselves are in validate_settings.
SETTINGS: dict[str, tuple[bool, Any]] = {
    "experiment_name": (True, None),
    "tag": (True, None),
    "direction": (False, "minimize"),
    "directions": (False, None),
    "metric": (False, None),
    "metrics": (False, None),
    "n_jobs": (False, 1),
    "n_trials": (False, None),  # required, except that a grid defaults it to its size
    "n_startup_trials": (False, 10),
    "seed": (False, None),
    "fail_fast": (False, 5),
    "start_method": (False, None),
    "sampler": (False, None),
    "pruner": (False, None),
    "enqueue": (False, None),
    "trial_logs": (False, True),
    "storage": (False, None),
    "trial_timeout": (False, None),
    "timeout": (False, None),
    "isolate_trials": (False, False),
    "gpus": (False, None),
    "workers_per_gpu": (False, 1),
    "progress_interval": (False, 30),
    "threads_per_worker": (False, None),  # None: cores // n_jobs; 0: leave the environment
    "retries": (False, 2),  # re-runs of an interrupted configuration
    "retry_exceptions": (False, None),  # exception class names retried like interruptions
    "stop_grace": (False, None),  # seconds workers get after SIGTERM; None: STOP_GRACE_S
    "trial_dir": (False, None),  # root of the trial folders; None: save_db_directory
    "slurm": (False, None),  # a job array for `hparam-search slurm submit`; see cluster/slurm.py
    "tracking": (False, None),  # MLflow / TensorBoard; see tracking/
    "enqueue_file": (False, None),  # JSON lines of configurations to run first
    "results_file": (False, None),  # the export table, rewritten while the search runs
}
RESULTS_FORMATS = ("parquet", "csv", "jsonl")
STOP_GRACE_S = 2.5  # the default: the whole stop stays under 3 s


def validate_settings(data: dict[str, Any], locate: Locate) -> dict[str, Any]:
    fail = functools.partial(fail_at, locate)

    for key in data:
        if key not in SETTINGS and key != SWEEP_KEY:
            hint = did_you_mean(str(key), [*SETTINGS, SWEEP_KEY], cutoff=0.8)
            if hint:
                fail(str(key), "unknown study setting", fix=hint)

    out: dict[str, Any] = {}
    for key, (required, default) in SETTINGS.items():
        if key not in data or (data[key] is None and required):
            if required:
                fail(key, "missing required setting", fix=f"Add '{key}: ...' to the file.")
            out[key] = default
        else:
            out[key] = data[key]

    for key in ("experiment_name", "tag"):
        value = out[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            fail(key, "must be a non-empty string", value)
        if any(bad in value for bad in ("/", "\\", "\0", "..")) or value.startswith("."):
            fail(key, "must not contain '/', '\\' or '..' or start with '.': it names the "
                 "study's file inside save_db_directory", value,
                 "Use letters, digits, '-' and '_'.")
        out[key] = value
    study_file = f"{out['experiment_name']}_{out['tag']}.db"
    if len(study_file.encode()) > MAX_FILE_NAME:
        longer = max(("experiment_name", "tag"), key=lambda k: len(out[k]))
        fail(longer, f"name too long: the study's file name ({study_file[:24]}…) would be "
             f"{len(study_file.encode())} bytes, and file names may have at most "
             f"{MAX_FILE_NAME}", fix="Use a shorter experiment_name or tag.")

    if out["directions"] is None:
        if out["direction"] not in DIRECTIONS:
            fail("direction", "must be minimize or maximize", out["direction"],
                 did_you_mean(str(out["direction"]), DIRECTIONS) or None)
        out["directions"] = (out["direction"],)
    else:
        if data.get("direction") is not None:
            fail("directions", "give either direction (one objective) or directions (several), "
                 "not both", fix="Remove 'direction'.")
        dirs = out["directions"]
        if not isinstance(dirs, list) or not dirs or any(d not in DIRECTIONS for d in dirs):
            fail("directions", "must be a list of minimize/maximize, one per objective", dirs,
                 "Write e.g. 'directions: [minimize, maximize]'.")
        out["directions"] = tuple(dirs)
    del out["direction"]
    n_obj = len(out["directions"])
    metric, metrics = out["metric"], out["metrics"]
    if metric is not None and (not isinstance(metric, str) or n_obj > 1):
        fail("metric", "must be the name of one returned value, with one objective", metric,
             "With several objectives, use 'metrics: [name, ...]'.")
    if metrics is None:
        out["metrics"] = ()
    elif (not isinstance(metrics, list) or len(metrics) != n_obj
          or not all(isinstance(m, str) for m in metrics) or len(set(metrics)) != n_obj):
        fail("metrics", f"must list {n_obj} distinct names, one per direction", metrics)
    else:
        out["metrics"] = tuple(metrics)

    def integer(key: str, minimum: int, extra: str = "") -> None:
        value = out[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            fail(key, f"must be an integer >= {minimum}{extra}", value)

    n_jobs = out["n_jobs"]
    if n_jobs == -1 and not isinstance(n_jobs, bool):
        out["n_jobs"] = cpu_count()
    else:
        integer("n_jobs", 1, " (or -1 for one worker per CPU core)")
    if out["n_trials"] is not None:
        integer("n_trials", 1)
    integer("n_startup_trials", 0)
    integer("fail_fast", 0, " (0 turns it off)")
    seed = out["seed"]
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        fail("seed", "must be a non-negative integer or null", seed)
    if out["storage"] is not None and (not isinstance(out["storage"], str)
                                       or not out["storage"].strip()):
        fail("storage", "must be a database URL or journal:PATH", out["storage"],
             "Write e.g. 'storage: postgresql://user@host/db' or 'storage: journal:./s.log'.")
    for key in ("trial_timeout", "timeout"):
        value = out[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or value <= 0):
            fail(key, "must be a number of seconds > 0, or null", value)
    integer("workers_per_gpu", 1)
    gpus = out["gpus"]
    if gpus == "auto":
        gpus = detect_gpus()
        if not gpus:
            fail("gpus", "auto found no GPU (nvidia-smi lists none)", "auto",
                 "Remove 'gpus' to run on the CPU, or list the GPU ids.")
    if gpus is not None:
        if not isinstance(gpus, list) or not gpus or not all(
                isinstance(g, (int, str)) and not isinstance(g, bool) for g in gpus):
            fail("gpus", "must be a list of GPU ids or 'auto'", out["gpus"],
                 "Write e.g. 'gpus: [0, 1]' or 'gpus: auto'.")
        gpus = tuple(str(g) for g in gpus)
        # One worker per GPU (or workers_per_gpu each): n_jobs follows from the GPUs.
        out["n_jobs"] = len(gpus) * out["workers_per_gpu"]
    out["gpus"] = gpus
    if not isinstance(out["isolate_trials"], bool):
        fail("isolate_trials", "must be true or false", out["isolate_trials"])
    if not isinstance(out["trial_logs"], bool):
        fail("trial_logs", "must be true or false", out["trial_logs"])
    interval = out["progress_interval"]
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0:
        fail("progress_interval", "must be a number of seconds > 0", interval)
    if out["start_method"] is not None and out["start_method"] not in START_METHODS:
        fail("start_method", "must be spawn, forkserver or fork", out["start_method"])
    threads = out["threads_per_worker"]
    if threads is not None:
        integer("threads_per_worker", 0, " (0 leaves OMP_NUM_THREADS and the like alone)")
    integer("retries", 0, " (0 turns retries off)")
    names = out["retry_exceptions"]
    if names is None:
        names = []
    if not isinstance(names, list) or not all(isinstance(n, str) and n.isidentifier()
                                              for n in names):
        fail("retry_exceptions", "must be a list of exception class names", names,
             "Write e.g. 'retry_exceptions: [OutOfMemoryError, MemoryError]'.")
    out["retry_exceptions"] = tuple(names)
    grace = out["stop_grace"]
    if grace is None:
        out["stop_grace"] = STOP_GRACE_S
    elif isinstance(grace, bool) or not isinstance(grace, (int, float)) or grace < 0:
        fail("stop_grace", "must be a number of seconds >= 0", grace,
             "Write e.g. 'stop_grace: 30' to give train 30 s to save a checkpoint.")
    for key in ("enqueue_file", "results_file"):
        if out[key] is not None and (not isinstance(out[key], str) or not out[key].strip()):
            fail(key, "must be a file path", out[key])
    results = out["results_file"]
    if results is not None and results.rsplit(".", 1)[-1].lower() not in RESULTS_FORMATS:
        fail("results_file", "has an extension that names no results format", results,
             f"Use a file ending in .{', .'.join(RESULTS_FORMATS)}.")
    trial_dir = out["trial_dir"]
    if trial_dir is not None and (not isinstance(trial_dir, str) or not trial_dir.strip()):
        fail("trial_dir", "must be a folder path", trial_dir,
             "Write e.g. 'trial_dir: /shared/runs' (relative paths are taken from the script's "
             "folder).")
    for key in ("sampler", "pruner", "enqueue", "slurm", "tracking"):
        out.pop(key)
    return out


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def threads_for_workers(setting: int | None, n_jobs: int) -> int | None:
    """Threads each worker's numeric libraries may use: a fair share of the cores by default,
    what ``threads_per_worker`` says otherwise; None leaves the environment alone."""
    if setting == 0:
        return None
    return setting if setting is not None else max(1, cpu_count() // n_jobs)


def thread_environment(threads: int | None) -> dict[str, str]:
    """The thread-count variables to set for workers (none the user's environment sets)."""
    return {name: str(threads) for name in THREAD_VARIABLES
            if name not in os.environ} if threads else {}


def cpu_count() -> int:
    """The CPU cores this process may run on: its affinity where the OS says, and no more than
    a Slurm task was given (without CPU binding, affinity shows the whole node)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    given = os.environ.get("SLURM_CPUS_PER_TASK", "") if "SLURM_JOB_ID" in os.environ else ""
    return min(cores, int(given)) if given.isdigit() and int(given) > 0 else cores


def detect_gpus() -> list[str]:
    """The GPU ids this machine offers: CUDA_VISIBLE_DEVICES if set, else nvidia-smi's list."""
    import subprocess

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(listed.stdout.splitlines())
            if line.startswith("GPU ")] if listed.returncode == 0 else []
