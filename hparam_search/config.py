"""YAML file + ``--set`` overrides -> validated, frozen search settings. Does not import optuna."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ._yaml import DuplicateKey, load_with_lines
from .errors import COMMAND_LINE, HparamSearchError, did_you_mean
from .overrides import Override, apply_overrides, parse_override
from .sampling import PrunerSpec, SamplerSpec, parse_pruner, parse_sampler
from .space import ParamSpec, check_explicit, grid_points, parse_sweep

SWEEP_KEY = "sweep_parameters"
DIRECTIONS = ("minimize", "maximize")
START_METHODS = ("spawn", "forkserver", "fork")
_MISSING = HparamSearchError._MISSING


@dataclass(frozen=True)
class SearchConfig:
    """Everything a search needs, validated. ``fixed`` is what ``train`` gets minus sampled values."""

    path: Path
    experiment_name: str
    tag: str
    directions: tuple[str, ...]
    n_jobs: int
    n_trials: int
    n_startup_trials: int
    seed: int | None
    fail_fast: int
    start_method: str | None
    storage: str | None
    trial_timeout: float | None
    timeout: float | None
    isolate_trials: bool
    gpus: tuple[str, ...] | None
    workers_per_gpu: int
    trial_logs: bool
    progress_interval: float
    params: tuple[ParamSpec, ...]
    fixed: dict[str, Any] = field(hash=False)
    overrides: tuple[str, ...] = ()
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    metric: str | None = None  # the key of a returned dict that is the objective
    metrics: tuple[str, ...] = ()  # names of the objectives, in order (several objectives)
    explicit: tuple[dict[str, Any], ...] = ()  # trials run first, once each: grid or enqueue
    resolved: dict[str, Any] = field(default_factory=dict, hash=False)  # the YAML after --set

    @property
    def study_name(self) -> str:
        return f"{self.experiment_name}_{self.tag}"

    @property
    def direction(self) -> str:
        return ", ".join(self.directions)

    @property
    def multi_objective(self) -> bool:
        return len(self.directions) > 1


# name -> (required, default). The checks themselves are in _validate_settings.
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
}


def display_path(path: Path) -> str:
    """``path`` as the user would type it: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def load_config(path: Path, set_args: list[str] | tuple[str, ...] = (),
                not_found_hint: str = "") -> SearchConfig:
    """Read ``path``, apply ``set_args`` (``a.b=value`` strings), validate, and freeze.

    Raises:
        HparamSearchError: for any mistake in the file or the overrides.
    """
    source = display_path(path)
    if not path.is_file():
        raise HparamSearchError(
            "config file not found", source=source,
            fix=not_found_hint or "Check the path, or pass --config PATH.")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HparamSearchError(f"cannot read the config file ({exc})", source=source) from exc
    try:
        data, lines = load_with_lines(text)
    except DuplicateKey as exc:
        raise HparamSearchError(
            f"the key appears twice (first on line {exc.first_line})", source=source,
            key=exc.key, line=exc.line, fix="Keep one of them.") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise HparamSearchError(
            f"YAML syntax error: {problem}", source=source,
            line=mark.line + 1 if mark else None,
            fix="Check indentation, colons and quotes around this line.") from exc
    if data is None:
        raise HparamSearchError("the config file is empty", source=source,
                                fix="Add experiment_name, tag, n_trials and sweep_parameters.")
    if not isinstance(data, dict):
        raise HparamSearchError(
            f"the top level must be a mapping of key: value, not a {type(data).__name__}",
            source=source, line=1, fix="Start with lines like 'experiment_name: my_exp'.")

    overrides = [parse_override(text) for text in set_args]
    data = apply_overrides(data, overrides)
    locate = _locator(source, lines, overrides)
    settings = _validate_settings(data, locate)

    params = parse_sweep(data.get(SWEEP_KEY), locate)
    # `--set lr=0.01` on a swept parameter pins it: the user asked for that value.
    pinned = {ov.key for ov in overrides}
    params = tuple(p for p in params if p.name not in pinned)
    fixed = {k: v for k, v in data.items() if k != SWEEP_KEY}
    _check_collisions(params, fixed, locate)
    sampler, pruner = _search(data, settings, locate)
    explicit = _explicit(data, settings, params, sampler, locate)
    return SearchConfig(path=path, params=params, fixed=fixed, overrides=tuple(set_args),
                        sampler=sampler, pruner=pruner, explicit=explicit, resolved=data,
                        **settings)


def _search(data: dict[str, Any], settings: dict[str, Any], locate: Locate
            ) -> tuple[SamplerSpec, PrunerSpec]:
    n_startup, seed, n_jobs = settings["n_startup_trials"], settings["seed"], settings["n_jobs"]
    if data.get("sampler") is None:
        # The default needs no Optuna import, which keeps the launcher's start fast.
        options: dict[str, Any] = {"n_startup_trials": n_startup}
        if n_jobs > 1:
            options["constant_liar"] = True
        sampler = SamplerSpec("tpe", options, seed)
    else:
        sampler = parse_sampler(data["sampler"], locate, n_startup_trials=n_startup, seed=seed,
                                n_jobs=n_jobs)
    pruner = parse_pruner(data.get("pruner"), locate)
    if pruner.type != "none" and len(settings["directions"]) > 1:
        src, line = locate("pruner")
        raise HparamSearchError("pruning works with one objective only", source=src,
                                key="pruner", line=line, fix="Remove 'pruner:' or use one direction.")
    return sampler, pruner


def _explicit(data: dict[str, Any], settings: dict[str, Any], params: tuple[ParamSpec, ...],
              sampler: SamplerSpec, locate: Locate) -> tuple[dict[str, Any], ...]:
    """The grid's points or the enqueue list; fills in n_trials for a grid."""
    def fail(key: str, problem: str, got: Any = _MISSING, fix: str | None = None) -> None:
        src, line = locate(key)
        raise HparamSearchError(problem, source=src, key=key, line=line, got=got, fix=fix)

    n_trials = settings["n_trials"]
    if sampler.type == "grid":
        if data.get("enqueue") is not None:
            fail("enqueue", "a grid already lists every trial", fix="Drop enqueue, or the grid.")
        if not params:
            fail(SWEEP_KEY, "a grid needs sweep_parameters")
        points = tuple(grid_points(params, locate))
        if n_trials is None:
            settings["n_trials"] = len(points)
        elif n_trials > len(points):
            fail("n_trials", f"is more than the grid's {len(points)} points", n_trials,
                 f"Drop n_trials (it defaults to the grid size), or set it <= {len(points)}.")
        return points[: settings["n_trials"]]
    if n_trials is None:
        fail("n_trials", "missing required setting", fix="Add 'n_trials: ...' to the file.")
    if data.get("enqueue") is None:
        return ()
    entries = check_explicit(params, data["enqueue"], locate)
    if len(entries) > n_trials:
        fail("enqueue", f"lists {len(entries)} trials, more than n_trials ({n_trials})",
             fix="Raise n_trials or shorten the list.")
    return entries


Locate = Callable[[str], "tuple[str, int | None]"]


def _locator(source: str, lines: dict[str, int], overrides: list[Override]) -> Locate:
    def locate(key: str) -> tuple[str, int | None]:
        for ov in reversed(overrides):
            if key == ov.key or key.startswith(ov.key + ".") or ov.key.startswith(key + "."):
                return f"{COMMAND_LINE} (--set {ov.text})", None
        probe = key
        while probe:
            if probe in lines:
                return source, lines[probe]
            probe = probe.rpartition(".")[0]
        return source, None

    return locate


def _validate_settings(data: dict[str, Any], locate: Callable[[str], tuple[str, int | None]]
                       ) -> dict[str, Any]:
    def fail(key: str, problem: str, got: Any = _MISSING, fix: str | None = None) -> None:
        src, line = locate(key)
        raise HparamSearchError(problem, source=src, key=key, line=line, got=got, fix=fix)

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
        out["n_jobs"] = _cpu_count()
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
    for key in ("sampler", "pruner", "enqueue"):
        out.pop(key)
    return out


def _check_collisions(params: tuple[ParamSpec, ...], fixed: dict[str, Any],
                      locate: Callable[[str], tuple[str, int | None]]) -> None:
    for p in params:
        node: Any = fixed
        parts = p.name.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, dict):
                clash = ".".join(parts[:depth])
                break
            if part not in node:
                clash = None
                break
            node = node[part]
        else:
            clash = p.name
        if clash:
            src, line = locate(f"{SWEEP_KEY}.{p.name}")
            raise HparamSearchError(
                f"the sweep parameter also exists as a fixed value '{clash}'",
                source=src, key=f"{SWEEP_KEY}.{p.name}", line=line,
                fix=f"Remove '{clash}' from the fixed parameters, or this sweep parameter.")


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


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
