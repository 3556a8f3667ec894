"""``sampler:`` and ``pruner:`` sections -> validated specs -> Optuna samplers and pruners.

Options are checked against the Optuna class's own signature, so every keyword Optuna accepts
can be written in the YAML and a misspelt one is answered with the closest valid names.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import Locate, did_you_mean
from .errors import fail_at as _fail


SAMPLERS = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "grid": "GridSampler",
    "cmaes": "CmaEsSampler",
    "gp": "GPSampler",
    "qmc": "QMCSampler",
    "nsga2": "NSGAIISampler",
}
PRUNERS = {
    "none": "NopPruner",
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "hyperband": "HyperbandPruner",
    "threshold": "ThresholdPruner",
    "wilcoxon": "WilcoxonPruner",
    "patient": "PatientPruner",
}
# Set by the launcher, not the YAML: seeds are derived per worker, and the grid's points come
# from sweep_parameters (see space.grid_points).
_MANAGED = {"seed", "search_space"}


@dataclass(frozen=True)
class SamplerSpec:
    """A validated ``sampler:`` section. ``options`` are passed to the Optuna class."""

    type: str = "tpe"
    options: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None

    def describe(self) -> str:
        if self.type == "grid":
            return "grid (every point run once, as an explicit trial)"
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{self.type} ({SAMPLERS[self.type]}{'(' + opts + ')' if opts else ''})"


@dataclass(frozen=True)
class PrunerSpec:
    """A validated ``pruner:`` section; ``wrapped`` is the inner pruner of ``patient``."""

    type: str = "none"
    options: dict[str, Any] = field(default_factory=dict)
    wrapped: PrunerSpec | None = None

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        inner = f" wrapping {self.wrapped.describe()}" if self.wrapped else ""
        return f"{self.type}{' (' + opts + ')' if opts else ''}{inner}"


def parse_sampler(raw: Any, locate: Locate, *, n_startup_trials: int | None, seed: int | None,
                  n_jobs: int) -> SamplerSpec:
    """Validate ``sampler:``. The top-level ``n_startup_trials`` and ``seed`` apply when the
    section does not set them; TPE gets ``constant_liar`` when several workers share a study."""
    raw = {} if raw is None else raw
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, Mapping):
        _fail(locate, "sampler", "must be a mapping with a 'type'", raw,
              "Write e.g. 'sampler: {type: tpe, multivariate: true}'.")
    kind = raw.get("type", "tpe")
    if kind not in SAMPLERS:
        _fail(locate, "sampler.type", "unknown sampler", kind,
              did_you_mean(str(kind), SAMPLERS) or f"Use one of {', '.join(SAMPLERS)}.")
    options = {k: v for k, v in raw.items() if k != "type"}
    own_seed = options.pop("seed", seed)
    if own_seed is not None and (not isinstance(own_seed, int) or isinstance(own_seed, bool)):
        _fail(locate, "sampler.seed", "must be an integer", own_seed)
    accepted = _parameters(SAMPLERS[kind], "samplers")
    for key in options:
        if key not in accepted or key in _MANAGED:
            allowed = ", ".join(sorted(accepted - _MANAGED)) or "no options"
            _fail(locate, f"sampler.{key}", f"not an option of the {kind} sampler",
                  fix=did_you_mean(key, accepted - _MANAGED) or f"It takes: {allowed}.")
    if "n_startup_trials" in accepted and "n_startup_trials" not in options \
            and n_startup_trials is not None:
        options["n_startup_trials"] = n_startup_trials
    if kind == "tpe" and "constant_liar" not in options and n_jobs > 1:
        options["constant_liar"] = True
    spec = SamplerSpec(kind, options, own_seed)
    if kind != "grid":  # the grid is checked against the space by the config
        try:
            with warnings.catch_warnings():  # a trial build: experimental flags warn here
                warnings.simplefilter("ignore")
                build_sampler(spec, seed=own_seed)
        except (TypeError, ValueError) as exc:
            _fail(locate, "sampler", f"Optuna rejected these options: {exc}")
    return spec


def parse_pruner(raw: Any, locate: Locate, key: str = "pruner") -> PrunerSpec:
    """Validate ``pruner:`` (``none`` when absent)."""
    if raw is None:
        return PrunerSpec()
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, Mapping):
        _fail(locate, key, "must be a mapping with a 'type'", raw,
              "Write e.g. 'pruner: {type: median, n_warmup_steps: 5}'.")
    kind = raw.get("type")
    if kind not in PRUNERS:
        _fail(locate, f"{key}.type", "unknown pruner", kind,
              did_you_mean(str(kind), PRUNERS) or f"Use one of {', '.join(PRUNERS)}.")
    options = {k: v for k, v in raw.items() if k not in ("type", "wrapped")}
    wrapped = None
    if kind == "patient":
        if "wrapped" not in raw:
            _fail(locate, key, "a patient pruner needs 'wrapped': the pruner it delays",
                  fix="Write e.g. '{type: patient, patience: 3, wrapped: {type: median}}'.")
        wrapped = parse_pruner(raw["wrapped"], locate, f"{key}.wrapped")
    elif "wrapped" in raw:
        _fail(locate, f"{key}.wrapped", "only a patient pruner wraps another")
    accepted = _parameters(PRUNERS[kind], "pruners") - {"wrapped_pruner"}
    for name in options:
        if name not in accepted:
            allowed = ", ".join(sorted(accepted)) or "no options"
            _fail(locate, f"{key}.{name}", f"not an option of the {kind} pruner",
                  fix=did_you_mean(name, accepted) or f"It takes: {allowed}.")
    spec = PrunerSpec(kind, options, wrapped)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            build_pruner(spec)
    except (TypeError, ValueError) as exc:
        _fail(locate, key, f"Optuna rejected these options: {exc}")
    return spec


def build_sampler(spec: SamplerSpec, *, seed: int | None) -> Any:
    """The Optuna sampler for one worker (``seed`` already made distinct per worker)."""
    import optuna

    if spec.type == "grid":
        # Every grid point is an explicit (enqueued) trial, taken exactly once; Optuna's
        # GridSampler can hand one point to two workers and stops studies from optimize().
        return optuna.samplers.RandomSampler(seed=seed)
    cls = getattr(optuna.samplers, SAMPLERS[spec.type])
    kwargs = dict(spec.options)
    if "seed" in _parameters(SAMPLERS[spec.type], "samplers"):
        kwargs["seed"] = seed
    return cls(**kwargs)


def build_pruner(spec: PrunerSpec) -> Any:
    import optuna

    cls = getattr(optuna.pruners, PRUNERS[spec.type])
    if spec.type == "patient":
        assert spec.wrapped is not None
        return cls(build_pruner(spec.wrapped), **spec.options)
    return cls(**spec.options)


def _parameters(class_name: str, module: str) -> set[str]:
    import optuna

    cls = getattr(getattr(optuna, module), class_name)
    return {name for name, p in inspect.signature(cls.__init__).parameters.items()
            if name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
