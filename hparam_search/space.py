"""``sweep_parameters`` -> validated parameter specs -> Optuna distributions and suggestions."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import HparamSearchError, Locate, did_you_mean
from .errors import fail_at as _fail

if TYPE_CHECKING:
    import optuna

# locate(dotted_key) -> (source, line): where a key came from, for error messages.

PARAM_TYPES = ("float", "int", "categorical")
_FIELDS = {
    "float": {"type", "low", "high", "log", "step", "when"},
    "int": {"type", "low", "high", "log", "step", "when"},
    "categorical": {"type", "choices", "when"},
}
_ALL_FIELDS = sorted(set().union(*_FIELDS.values()))


@dataclass(frozen=True)
class ParamSpec:
    """One validated sweep parameter. ``name`` may be dotted (``model.hidden``)."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()
    # Conditions on other parameters: ((name, allowed values), ...); all must hold.
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def active(self, values: Mapping[str, Any]) -> bool:
        """Whether this parameter exists, given the values sampled so far."""
        return all(name in values and values[name] in allowed for name, allowed in self.when)

    def contains(self, value: Any) -> bool:
        if self.type == "categorical":
            return any(value == c and type(value) is type(c) for c in self.choices) or \
                value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type == "int" and not float(value).is_integer():
            return False
        return self.low <= value <= self.high

    def distribution(self) -> optuna.distributions.BaseDistribution:
        from optuna import distributions as d

        if self.type == "float":
            return d.FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return d.IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        return d.CategoricalDistribution(self.choices)

    def describe(self) -> str:
        cond = ""
        if self.when:
            cond = " when " + " and ".join(
                f"{n} in {list(v)}" if len(v) > 1 else f"{n} == {v[0]!r}" for n, v in self.when)
        if self.type == "categorical":
            return f"{self.name}: categorical {list(self.choices)}{cond}"
        extra = " log" if self.log else (f" step {self.step}" if self.step else "")
        return f"{self.name}: {self.type} [{self.low}, {self.high}]{extra}{cond}"


def parse_sweep(raw: Any, locate: Locate) -> tuple[ParamSpec, ...]:
    """Validate the ``sweep_parameters`` mapping. Raises HparamSearchError naming key and line."""
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        _fail(locate, "sweep_parameters", "must be a mapping of parameter name -> spec", raw,
              "Write one entry per parameter, e.g. 'lr: {type: float, low: 1e-5, high: 1e-1}'.")
    if not raw:
        _fail(locate, "sweep_parameters", "is empty, so every trial would run the same config",
              fix="List the parameters to search under it (indented), e.g. "
                  "'lr: {type: float, low: 1e-5, high: 1e-1}', or remove the key.")
    specs = [_parse_one(str(name), spec, locate) for name, spec in raw.items()]
    return _order_by_conditions(specs, locate)


def _parse_when(key: str, raw: Any, locate: Locate) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if not isinstance(raw, Mapping) or not raw:
        _fail(locate, f"{key}.when", "must map a parameter to its value(s)", raw,
              "Write e.g. 'when: {optimizer: SGD}' or 'when: {optimizer: [SGD, Nesterov]}'.")
    out = []
    for name, allowed in raw.items():
        values = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        if not values:
            _fail(locate, f"{key}.when.{name}", "lists no value", allowed)
        out.append((str(name), values))
    return tuple(out)


def _order_by_conditions(specs: list[ParamSpec], locate: Locate) -> tuple[ParamSpec, ...]:
    """Check every ``when`` names a parameter, and order parameters so that each comes after
    the ones its condition reads (sampling then sees their values)."""
    names = {p.name: p for p in specs}
    for p in specs:
        for name, allowed in p.when:
            if name not in names:
                _fail(locate, f"sweep_parameters.{p.name}.when.{name}",
                      "names a parameter that is not in sweep_parameters",
                      fix=did_you_mean(name, names) or "Conditions refer to swept parameters.")
            if name == p.name:
                _fail(locate, f"sweep_parameters.{p.name}.when", "a parameter cannot depend on "
                      "itself")
            other = names[name]
            for value in allowed:
                if not other.contains(value):
                    _fail(locate, f"sweep_parameters.{p.name}.when.{name}",
                          f"{value!r} is not a value {name} can take", value,
                          fix=f"{name} is {other.describe().split(': ', 1)[1]}.")
    ordered: list[ParamSpec] = []
    pending = list(specs)
    while pending:
        ready = [p for p in pending if all(n in {o.name for o in ordered} for n, _ in p.when)]
        if not ready:
            cycle = ", ".join(p.name for p in pending)
            _fail(locate, f"sweep_parameters.{pending[0].name}.when",
                  f"conditions form a cycle ({cycle})", fix="Make one of them unconditional.")
        ordered.extend(ready)
        pending = [p for p in pending if p not in ready]
    return tuple(ordered)


def looks_like_spec(value: Any) -> bool:
    """A mapping shaped like a sweep parameter (``type`` plus ``low``/``high`` or
    ``choices``), as left behind when it is dedented out of ``sweep_parameters``."""
    return (isinstance(value, Mapping) and value.get("type") in PARAM_TYPES
            and ({"low", "high"} <= set(value) or "choices" in value))


def _parse_one(name: str, spec: Any, locate: Locate) -> ParamSpec:
    key = f"sweep_parameters.{name}"
    if not isinstance(spec, Mapping):
        _fail(locate, key, "must be a mapping with a 'type'", spec,
              "Write e.g. '{type: float, low: 0.0, high: 1.0}'.")
    kind = spec.get("type")
    if kind is None:
        _fail(locate, key, "has no 'type'",
              fix="Add 'type: float', 'type: int' or 'type: categorical'.")
    if kind not in PARAM_TYPES:
        hint = did_you_mean(str(kind), PARAM_TYPES) or "Use float, int or categorical."
        _fail(locate, f"{key}.type", "unknown parameter type", kind, hint)
    for field in spec:
        if field not in _FIELDS[kind]:
            allowed = ", ".join(sorted(_FIELDS[kind]))
            hint = did_you_mean(str(field), _FIELDS[kind]) or f"A {kind} parameter takes {allowed}."
            _fail(locate, f"{key}.{field}", f"unknown field for a {kind} parameter", fix=hint)
    when = _parse_when(key, spec["when"], locate) if "when" in spec else ()
    if kind == "categorical":
        param = _categorical(name, key, spec, locate)
    else:
        param = _numeric(name, key, kind, spec, locate)
    return dataclasses.replace(param, when=when)


def _categorical(name: str, key: str, spec: Mapping[str, Any], locate: Locate) -> ParamSpec:
    choices = spec.get("choices")
    if not isinstance(choices, list) or not choices:
        _fail(locate, f"{key}.choices", "must be a non-empty list", choices,
              "Write e.g. 'choices: [Adam, SGD]'.")
    for i, choice in enumerate(choices):
        if choice is not None and not isinstance(choice, (bool, int, float, str)):
            _fail(locate, f"{key}.choices.{i}", "each choice must be a YAML scalar "
                  "(string, number, true/false or null)", choice,
                  "Name the option with a string and build the object inside train.")
    if len(set(map(repr, choices))) != len(choices):
        _fail(locate, f"{key}.choices", "lists the same choice twice", choices,
              "Remove the repeat.")
    return ParamSpec(name, "categorical", choices=tuple(choices))


def _numeric(name: str, key: str, kind: str, spec: Mapping[str, Any], locate: Locate) -> ParamSpec:
    bounds = {}
    for field in ("low", "high"):
        if field not in spec:
            _fail(locate, key, f"a {kind} parameter needs '{field}'", fix=f"Add '{field}: ...'.")
        value = spec[field]
        ok = _is_int(value) if kind == "int" else _is_number(value)
        if not ok or (kind == "float" and not math.isfinite(value)):
            what = "an integer" if kind == "int" else "a finite number"
            _fail(locate, f"{key}.{field}", f"must be {what}", value, _quoted_number(value))
        bounds[field] = value if kind == "int" else float(value)
    low, high = bounds["low"], bounds["high"]
    if low > high:
        _fail(locate, f"{key}.low", f"must be <= high ({high})", low, "Swap low and high.")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        _fail(locate, f"{key}.log", "must be true or false", log)
    step = spec.get("step")
    if step is not None:
        ok = _is_int(step) if kind == "int" else _is_number(step)
        if not ok or step <= 0:
            what = "a positive integer" if kind == "int" else "a positive number"
            _fail(locate, f"{key}.step", f"must be {what}", step, _quoted_number(step))
        if log and not (kind == "int" and step == 1):
            _fail(locate, f"{key}.step", "cannot be combined with log: true", step,
                  "Drop step, or set log: false.")
        if high > low and step > high - low:
            _fail(locate, f"{key}.step", f"is larger than the range high - low "
                  f"({high - low:g}), so only low ({low:g}) could ever be drawn", step,
                  "Use a smaller step, or widen low/high.")
        step = step if kind == "int" else float(step)
    if log and (low < 1 if kind == "int" else low <= 0):
        need = ">= 1" if kind == "int" else "> 0"
        _fail(locate, f"{key}.low", f"must be {need} when log is true", low,
              "Use a positive low or drop log.")
    return ParamSpec(name, kind, low=low, high=high, log=log, step=step)


def _quoted_number(value: Any) -> str | None:
    """The fix for a number written in quotes, which YAML reads as text."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return None
        return "Remove the quotes: YAML reads a quoted value as text."
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_against_study(params: tuple[ParamSpec, ...], stored: Mapping[str, Any], study: str,
                        locate: Locate) -> None:
    """Raise when a parameter's distribution cannot join the trials the study already holds:
    Optuna keeps a parameter's kind, log scale and categorical choices fixed within a study."""
    from optuna.distributions import CategoricalDistribution, check_distribution_compatibility

    for p in params:
        old = stored.get(p.name)
        if old is None:
            continue
        try:
            check_distribution_compatibility(old, p.distribution())
        except ValueError:
            pass
        else:
            continue
        key, got = f"sweep_parameters.{p.name}", _MISSING
        if isinstance(old, CategoricalDistribution) and p.type == "categorical":
            key, got = f"{key}.choices", list(p.choices)
            problem = (f"study '{study}' already has trials with choices {list(old.choices)}, "
                       f"and Optuna cannot change a categorical parameter's choices within a "
                       f"study")
            keep = "keep the old choices"
        elif getattr(old, "log", None) is not None and p.type != "categorical" and \
                type(old).__name__.lower().startswith(p.type):
            key, got = f"{key}.log", p.log
            scale = "log" if old.log else "linear"
            problem = (f"study '{study}' already has trials sampled on a {scale} scale, and "
                       f"Optuna cannot change log within a study")
            keep = f"keep log: {'true' if old.log else 'false'}"
        else:
            kind = {"FloatDistribution": "float", "IntDistribution": "int",
                    "CategoricalDistribution": "categorical"}.get(type(old).__name__, "other")
            key, got = f"{key}.type", p.type
            problem = (f"study '{study}' already has trials where this parameter is {kind}, and "
                       f"Optuna cannot change a parameter's type within a study")
            keep = f"keep type: {kind}"
        source, line = locate(key)
        raise HparamSearchError(problem, source=source, key=key, line=line, got=got,
                                fix=f"Start a separate study with --set tag=NEW_TAG, or {keep}.")


_MISSING = HparamSearchError._MISSING


def suggest(trial: optuna.Trial, params: tuple[ParamSpec, ...]) -> dict[str, Any]:
    """Ask ``trial`` for a value of every parameter; return {dotted name: value}."""
    values: dict[str, Any] = {}
    for p in params:
        if not p.active(values):
            continue
        if p.type == "float":
            values[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            values[p.name] = trial.suggest_int(p.name, p.low, p.high, log=p.log, step=p.step or 1)
        else:
            values[p.name] = trial.suggest_categorical(p.name, p.choices)
    return values


def merge_params(fixed: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The config ``train`` receives: ``fixed`` with each value placed at its dotted name."""
    import copy

    config = copy.deepcopy(dict(fixed))
    for name, value in values.items():
        node = config
        *parents, leaf = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config


MAX_GRID = 1_000_000


def grid_points(params: tuple[ParamSpec, ...], locate: Locate) -> list[dict[str, Any]]:
    """Every combination of the parameters' values, in order; parameters whose ``when`` does not
    hold are left out (and the duplicates that leaves are dropped)."""
    axes = []
    for p in params:
        if p.type == "categorical":
            axes.append(list(p.choices))
        elif p.type == "int":
            axes.append(list(range(p.low, p.high + 1, p.step or 1)))
        elif p.step is None:
            _fail(locate, f"sweep_parameters.{p.name}", "a grid needs a step for every float "
                  "parameter", fix=f"Add 'step: ...' to {p.name}, or make it categorical.")
        else:
            count = int(math.floor((p.high - p.low) / p.step + 1e-9)) + 1
            axes.append([round(p.low + i * p.step, 12) for i in range(count)])
    size = math.prod(len(a) for a in axes)
    if size > MAX_GRID:
        _fail(locate, "sweep_parameters", f"the grid has {size} points, more than {MAX_GRID}",
              fix="Use fewer values, or a sampler such as tpe or random.")
    seen: set[str] = set()
    points = []
    for combo in itertools.product(*axes):
        point: dict[str, Any] = {}
        for p, value in zip(params, combo):
            if p.active(point):
                point[p.name] = value
        key = repr(sorted(point.items()))
        if key not in seen:
            seen.add(key)
            points.append(point)
    return points


def check_explicit(params: tuple[ParamSpec, ...], entries: Any, locate: Locate
                   ) -> tuple[dict[str, Any], ...]:
    """Validate ``enqueue:``: a list of {parameter: value}; names and values must fit the space."""
    if not isinstance(entries, list):
        _fail(locate, "enqueue", "must be a list of parameter mappings", entries,
              "Write e.g. 'enqueue: [{lr: 0.01, optimizer: Adam}]'.")
    by_name = {p.name: p for p in params}
    out = []
    for i, entry in enumerate(entries):
        key = f"enqueue.{i}"
        if not isinstance(entry, Mapping) or not entry:
            _fail(locate, key, "must be a mapping of parameter: value", entry)
        for name, value in entry.items():
            if name not in by_name:
                _fail(locate, f"{key}.{name}", "is not a sweep parameter",
                      fix=did_you_mean(str(name), by_name) or
                      f"Use names from sweep_parameters: {', '.join(by_name)}.")
            if not by_name[name].contains(value):
                spec = by_name[name].describe().split(": ", 1)[1]
                _fail(locate, f"{key}.{name}", f"outside the search space ({spec})", value)
        out.append(dict(entry))
    return tuple(out)
