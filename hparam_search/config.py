"""YAML file + ``--set`` overrides -> validated, frozen search settings. Does not import optuna."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ._yaml import DuplicateKey, load_with_lines
from .errors import COMMAND_LINE, HparamSearchError, Locate, fail_at
from .overrides import Override, apply_overrides, parse_override
from .cluster.slurm import SlurmSpec, parse_slurm
from .sampling import PrunerSpec, SamplerSpec, parse_pruner, parse_sampler
from .settings import SETTINGS, SWEEP_KEY, validate_settings
from .tracking import TrackingSpec, parse_tracking
from .space import ParamSpec, check_explicit, grid_points, looks_like_spec, parse_sweep


@dataclass(frozen=True)
class SearchConfig:
    """Everything a search needs, validated. ``fixed`` is what ``train`` gets minus sampled
    values."""

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
    threads_per_worker: int | None
    retries: int
    retry_exceptions: tuple[str, ...]
    stop_grace: float
    trial_dir: str | None
    enqueue_file: str | None
    results_file: str | None
    params: tuple[ParamSpec, ...]
    fixed: dict[str, Any] = field(hash=False)
    overrides: tuple[str, ...] = ()
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    metric: str | None = None  # the key of a returned dict that is the objective
    metrics: tuple[str, ...] = ()  # names of the objectives, in order (several objectives)
    explicit: tuple[dict[str, Any], ...] = ()  # trials run first, once each: grid or enqueue
    warnings: tuple[str, ...] = ()  # said once at start
    slurm: SlurmSpec | None = None
    tracking: TrackingSpec = TrackingSpec()
    resolved: dict[str, Any] = field(default_factory=dict, hash=False)  # the YAML after --set
    # Where a dotted key came from (file and line, or the --set that changed it), for errors
    # found after loading, such as a search space the stored study cannot take.
    locate: Locate | None = field(default=None, hash=False, compare=False, repr=False)

    def where(self, key: str) -> tuple[str, int | None]:
        return self.locate(key) if self.locate else (display_path(self.path), None)

    @property
    def study_name(self) -> str:
        return f"{self.experiment_name}_{self.tag}"

    @property
    def direction(self) -> str:
        return ", ".join(self.directions)

    @property
    def multi_objective(self) -> bool:
        return len(self.directions) > 1


def display_path(path: Path) -> str:
    """``path`` as the user would type it: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def load_config(path: Path, set_args: list[str] | tuple[str, ...] = (),
                not_found_hint: str = "", base: Path | None = None) -> SearchConfig:
    """Read ``path``, apply ``set_args`` (``a.b=value`` strings), validate, and freeze.
    Relative files the config names (``enqueue_file``) are taken from ``base`` (the script's
    folder; the config file's folder when not given).

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
    settings = validate_settings(data, locate)

    # `sweep_parameters:` with nothing under it is YAML's null: an empty section, not none.
    sweep = {} if SWEEP_KEY in data and data[SWEEP_KEY] is None else data.get(SWEEP_KEY)
    params = parse_sweep(sweep, locate)
    # `--set lr=0.01` on a swept parameter pins it: the user asked for that value.
    pinned = {ov.key for ov in overrides}
    params = tuple(p for p in params if p.name not in pinned)
    fixed = {k: v for k, v in data.items() if k != SWEEP_KEY}
    _check_collisions(params, fixed, locate, overrides)
    sampler, pruner = _search(data, settings, locate)
    explicit = _explicit(data, settings, params, sampler, locate,
                         _from_file(settings, params, fixed, base or path.parent, locate))
    slurm = parse_slurm(data.get("slurm"), locate)
    tracking = parse_tracking(data.get("tracking"), locate)
    return SearchConfig(path=path, params=params, fixed=fixed, overrides=tuple(set_args),
                        sampler=sampler, pruner=pruner, explicit=explicit, resolved=data,
                        locate=locate, warnings=_warnings(fixed, params, locate), slurm=slurm,
                        tracking=tracking,
                        **settings)


def _warnings(fixed: dict[str, Any], params: tuple[ParamSpec, ...], locate: Locate
              ) -> tuple[str, ...]:
    """Mistakes that still make a valid search, said once at start."""
    from .drift import flatten

    out = []
    specs = {k: v for k, v in fixed.items() if looks_like_spec(v)}
    for key, value in flatten(fixed).items():  # nested ones too: model.lr: {type: ...}
        parent = key.rsplit(".", 2)[0] if key.count(".") >= 2 else None
        if parent and parent not in specs and looks_like_spec(_get(fixed, parent)):
            specs[parent] = _get(fixed, parent)
    for key in sorted(specs):
        if key in SETTINGS:
            continue
        src, line = locate(key)
        where = f"{src}:{line}" if line else src
        out.append(f"warning: {where}: {key}: looks like a sweep parameter (type: "
                   f"{specs[key]['type']}) but is not under sweep_parameters, so train receives "
                   f"it as a dict. To search it, indent it under sweep_parameters.")
    if not params:
        out.append("warning: no sweep parameters, so every trial runs the same config.")
    return tuple(out)


def _get(mapping: dict[str, Any], dotted: str) -> Any:
    node: Any = mapping
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


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
                                key="pruner", line=line,
                                fix="Remove 'pruner:' or use one direction.")
    return sampler, pruner


def _from_file(settings: dict[str, Any], params: tuple[ParamSpec, ...], fixed: dict[str, Any],
               base: Path, locate: Locate) -> tuple[dict[str, Any], ...]:
    if settings["enqueue_file"] is None:
        return ()
    from .sweep_file import read_sweep_file

    path = Path(settings["enqueue_file"]).expanduser()
    return read_sweep_file(path if path.is_absolute() else base / path, params, fixed,
                           locate("enqueue_file"))


def _explicit(data: dict[str, Any], settings: dict[str, Any], params: tuple[ParamSpec, ...],
              sampler: SamplerSpec, locate: Locate, from_file: tuple[dict[str, Any], ...] = ()
              ) -> tuple[dict[str, Any], ...]:
    """The grid's points or the enqueue list (and file); fills in n_trials for a grid."""
    fail = functools.partial(fail_at, locate)

    n_trials = settings["n_trials"]
    if sampler.type == "grid":
        for key in ("enqueue", "enqueue_file"):
            if data.get(key) is not None:
                fail(key, "a grid already lists every trial", fix=f"Drop {key}, or the grid.")
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
    listed = check_explicit(params, data["enqueue"], locate) if data.get("enqueue") else ()
    entries = (*listed, *from_file)
    if len(entries) > n_trials:
        key = "enqueue" if listed else "enqueue_file"
        fail(key, f"lists {len(entries)} trials, more than n_trials ({n_trials})",
             fix="Raise n_trials or shorten the list.")
    return entries


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


def _check_collisions(params: tuple[ParamSpec, ...], fixed: dict[str, Any], locate: Locate,
                      overrides: list[Override]) -> None:
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
            made_by = next((ov for ov in overrides if ov.key == clash
                            or ov.key.startswith(clash + ".")), None)
            if made_by is not None and made_by.key.startswith(p.name + "."):
                # `--set lr.low=0.1`: the sweep_parameters prefix was forgotten.
                field_ = made_by.key[len(p.name) + 1:]
                raise HparamSearchError(
                    f"{p.name} is a sweep parameter, so this sets a fixed value beside it",
                    source=f"{COMMAND_LINE} (--set {made_by.text})", key=made_by.key,
                    fix=f"To change its {field_}, write --set "
                        f"{SWEEP_KEY}.{made_by.key}={made_by.text.partition('=')[2]}")
            src, line = locate(f"{SWEEP_KEY}.{p.name}")
            raise HparamSearchError(
                f"the sweep parameter also exists as a fixed value '{clash}'",
                source=src, key=f"{SWEEP_KEY}.{p.name}", line=line,
                fix=f"Remove '{clash}' from the fixed parameters, or this sweep parameter.")
