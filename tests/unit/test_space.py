"""Sweep specs -> Optuna distributions, and where sampled values land in the config."""

from __future__ import annotations

import optuna
import pytest

from hparam_search.space import ParamSpec, merge_params, parse_sweep


def locate(key: str) -> tuple[str, None]:
    return "c.yaml", None


def test_specs_become_the_matching_optuna_distributions() -> None:
    specs = parse_sweep({
        "lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
        "drop": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
        "layers": {"type": "int", "low": 1, "high": 9, "step": 2},
        "width": {"type": "int", "low": 8, "high": 512, "log": True},
        "opt": {"type": "categorical", "choices": ["Adam", "SGD", None, 3]},
    }, locate)
    d = {s.name: s.distribution() for s in specs}
    assert d["lr"] == optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)
    assert d["drop"] == optuna.distributions.FloatDistribution(0.0, 0.5, step=0.1)
    assert d["layers"] == optuna.distributions.IntDistribution(1, 9, step=2)
    assert d["width"] == optuna.distributions.IntDistribution(8, 512, log=True)
    assert d["opt"] == optuna.distributions.CategoricalDistribution(["Adam", "SGD", None, 3])


def test_sampled_values_are_placed_at_dotted_names_without_touching_fixed() -> None:
    fixed = {"model": {"depth": 2}, "lr": 1}
    config = merge_params(fixed, {"model.hidden": 64, "opt": "SGD"})
    assert config == {"model": {"depth": 2, "hidden": 64}, "lr": 1, "opt": "SGD"}
    assert fixed == {"model": {"depth": 2}, "lr": 1}


@pytest.mark.parametrize("spec", [
    {"type": "float", "low": 0.0, "high": 1.0},
    {"type": "int", "low": 0, "high": 3},
    {"type": "categorical", "choices": [True, False]},
])
def test_every_type_samples_inside_its_range(spec: dict) -> None:
    (p,) = parse_sweep({"v": spec}, locate)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    from hparam_search.space import suggest

    for _ in range(20):
        trial = study.ask()
        value = suggest(trial, (p,))["v"]
        study.tell(trial, 0.0)
        if p.type == "categorical":
            assert value in p.choices
        else:
            assert p.low <= value <= p.high


def test_describe_is_readable() -> None:
    assert ParamSpec("lr", "float", 1e-5, 0.1, log=True).describe() == "lr: float [1e-05, 0.1] log"
