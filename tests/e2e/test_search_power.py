"""Samplers, pruners, metrics, several objectives, nested/conditional spaces, grids, enqueue."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import UserProject, needs_torch

# A train that reports a learning curve: the loss after each of `epochs` steps.
CURVE_SCRIPT = '''
import json, os
from hparam_search import hparam_search, report, should_prune, TrialPruned


@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    steps = 0
    try:
        for step in range(config["epochs"]):
            loss = abs(config["x"]) * (1 + step / 4) + 1.0 / (step + 1)
            steps += 1
            if config.get("manual"):
                hparam_search.report(loss, step)   # the decorator also carries the helpers
                if should_prune():
                    raise TrialPruned()
            else:
                report(loss, step)
    finally:
        with open(os.path.join(config["out"], f"{os.getpid()}-{abs(hash(config['x']))}.json"), "w") as f:
            json.dump({"x": config["x"], "steps": steps}, f)
    return loss


if __name__ == "__main__":
    train()
'''

RETURNS_SCRIPT = '''
import json, os
from hparam_search import hparam_search, current_trial


@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    if config.get("out"):
        with open(os.path.join(config["out"], f"{current_trial().number}.json"), "w") as f:
            json.dump(config, f)
    x = config.get("x", 0.0)
    kind = config.get("returns", "float")
    if kind == "dict":
        return {"val_loss": (x - 1) ** 2, "acc": 1 - abs(x) / 10, "note": "text is not stored"}
    if kind == "pair":
        return (x - 1) ** 2, abs(x)
    if kind == "pair_dict":
        return {"loss": (x - 1) ** 2, "size": abs(x), "extra": 7}
    return (x - 1) ** 2


if __name__ == "__main__":
    train()
'''

SPACE = {"x": {"type": "float", "low": -5.0, "high": 5.0}}


def write(project: UserProject, script: str, **config) -> None:
    project.write_script(body=script)
    base = {"experiment_name": "exp", "tag": "t", "n_jobs": 2, "n_trials": 6,
            "sweep_parameters": SPACE}
    base.update(config)
    project.write_config(base)


def finished(project: UserProject, study: str = "exp_t") -> list:
    return [t for t in project.trials(study) if t.state.name in ("COMPLETE", "PRUNED")]


@pytest.mark.parametrize("sampler", [
    {"type": "tpe", "multivariate": True, "n_startup_trials": 2},
    {"type": "random"},
    {"type": "cmaes", "n_startup_trials": 2},
    {"type": "qmc", "qmc_type": "sobol"},
    {"type": "nsga2", "population_size": 4},
    pytest.param({"type": "gp", "n_startup_trials": 2}, marks=pytest.mark.torch),
])
def test_every_sampler_runs_an_exact_budget(project: UserProject, sampler: dict) -> None:
    if sampler["type"] == "gp":
        needs_torch()  # Optuna's GPSampler needs PyTorch
    if sampler["type"] == "cmaes":
        pytest.importorskip("cmaes", reason="Optuna's CmaEsSampler needs the cmaes package")
    write(project, RETURNS_SCRIPT, sampler=sampler, seed=3,
          sweep_parameters={"x": SPACE["x"], "y": {"type": "int", "low": 0, "high": 4}})
    result = project.run(timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert project.states() == {"COMPLETE": 6}
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("pruner", [
    {"type": "median", "n_startup_trials": 1},
    {"type": "percentile", "percentile": 25.0, "n_startup_trials": 1},
    {"type": "successive_halving"},
    {"type": "hyperband", "min_resource": 1, "max_resource": 8},
    {"type": "threshold", "upper": 2.0},
    {"type": "wilcoxon", "p_threshold": 0.5},
    {"type": "patient", "patience": 1,
     "wrapped": {"type": "median", "n_startup_trials": 1}},
])
def test_pruners_stop_bad_trials_early(project: UserProject, tmp_path: Path,
                                       pruner: dict) -> None:
    out = tmp_path / "curves"
    out.mkdir()
    write(project, CURVE_SCRIPT, pruner=pruner, epochs=8, out=str(out), n_trials=16, n_jobs=2,
          sampler={"type": "random"}, seed=1, fail_fast=0,
          enqueue=[{"x": 0.0}, {"x": 0.1}, {"x": 4.9}, {"x": 4.8}])
    result = project.run(timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    trials = finished(project)
    assert len(trials) == 16
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert pruned, f"the {pruner['type']} pruner stopped nothing"
    curves = [json.loads(p.read_text()) for p in out.glob("*.json")]
    assert len(curves) == 16
    assert min(c["steps"] for c in curves) < 8  # really stopped early
    for t in pruned:
        assert "error" not in t.user_attrs
        last = max(t.intermediate_values)
        assert t.user_attrs["prune_reason"] == \
            f"stopped by the {pruner['type']} pruner at step {last}"
    assert any(len(t.intermediate_values) < 8 for t in pruned)
    assert f"PRUNED stopped by the {pruner['type']} pruner at step" in result.stdout


def test_manual_should_prune_through_the_decorator_attribute(project: UserProject,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "curves"
    out.mkdir()
    write(project, CURVE_SCRIPT, pruner={"type": "threshold", "upper": 2.0}, epochs=5,
          out=str(out), manual=True, n_trials=4, enqueue=[{"x": 0.0}, {"x": 4.0}])
    assert project.run().returncode == 0
    by_x = {t.params["x"]: t for t in project.trials()}
    assert by_x[0.0].state.name == "COMPLETE" and len(by_x[0.0].intermediate_values) == 5
    assert by_x[4.0].state.name == "PRUNED" and len(by_x[4.0].intermediate_values) == 1


def test_pruned_by_pruner_and_pruned_by_error_are_told_apart(project: UserProject,
                                                              tmp_path: Path) -> None:
    out = tmp_path / "curves"
    out.mkdir()
    script = CURVE_SCRIPT.replace("    steps = 0\n", "    steps = 0\n    if config['x'] < -4: "
                                  "raise RuntimeError('diverged')\n")
    write(project, script, pruner={"type": "threshold", "upper": 2.0}, epochs=3, out=str(out),
          n_trials=3, n_jobs=1, enqueue=[{"x": 0.0}, {"x": 4.5}, {"x": -4.5}])
    result = project.run()
    assert result.returncode == 0, result.stderr
    by_x = {t.params["x"]: t for t in project.trials()}
    assert by_x[4.5].user_attrs["prune_reason"] == "stopped by the threshold pruner at step 0"
    assert by_x[-4.5].user_attrs["error"] == "RuntimeError: diverged"
    assert "PRUNED RuntimeError: diverged" in result.stdout
    assert "PRUNED stopped by the threshold pruner at step 0" in result.stdout


def test_dict_return_with_a_named_metric_stores_the_other_numbers(project: UserProject) -> None:
    write(project, RETURNS_SCRIPT, returns="dict", metric="val_loss", n_trials=3)
    assert project.run().returncode == 0
    for t in project.trials():
        assert t.value == pytest.approx((t.params["x"] - 1) ** 2)
        assert t.user_attrs["metric.acc"] == pytest.approx(1 - abs(t.params["x"]) / 10)
        assert "metric.note" not in t.user_attrs


def test_dict_return_without_metric_is_a_clear_error(project: UserProject) -> None:
    write(project, RETURNS_SCRIPT, returns="dict", n_trials=3)
    result = project.run()
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: metric: train returned a dict (keys: val_loss, acc, note) but the config does "
        "not say which entry to optimise. Add 'metric: <key>' (or 'metrics: [...]' with several "
        "directions).")


@pytest.mark.parametrize("returns, metrics", [("pair", None), ("pair_dict", ["loss", "size"])])
def test_several_objectives(project: UserProject, returns: str, metrics: list | None) -> None:
    extra = {"metrics": metrics} if metrics else {}
    write(project, RETURNS_SCRIPT, returns=returns, directions=["minimize", "maximize"],
          n_trials=6, **extra)
    result = project.run()
    assert result.returncode == 0, result.stderr
    with project.study() as study:
        directions, trials, names = study.directions, study.trials, study.metric_names
        front = {t.number for t in study.best_trials}
    assert [d.name for d in directions] == ["MINIMIZE", "MAXIMIZE"]
    for t in trials:
        assert t.values == pytest.approx([(t.params["x"] - 1) ** 2, abs(t.params["x"])])
    if metrics:
        assert names == metrics
        assert all(t.user_attrs["metric.extra"] == 7 for t in trials)
    assert "Pareto front (minimize, maximize):" in result.stdout
    for number in front:
        assert f"  trial {number}: values=[" in result.stdout


def test_nested_and_conditional_parameters(project: UserProject, tmp_path: Path) -> None:
    out = tmp_path / "configs"
    out.mkdir()
    write(project, RETURNS_SCRIPT, out=str(out), n_trials=16, n_jobs=2, model={"depth": 2},
          sampler={"type": "random"}, seed=0, sweep_parameters={
              "x": SPACE["x"],
              "model.hidden": {"type": "int", "low": 8, "high": 64, "step": 8},
              "optimizer": {"type": "categorical", "choices": ["Adam", "SGD", "Nesterov"]},
              "momentum": {"type": "float", "low": 0.5, "high": 0.99,
                           "when": {"optimizer": ["SGD", "Nesterov"]}},
              "beta1": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optimizer": "Adam"}},
          })
    assert project.run().returncode == 0
    seen = [json.loads(p.read_text()) for p in out.glob("*.json")]
    assert len(seen) == 16
    assert {c["optimizer"] for c in seen} == {"Adam", "SGD", "Nesterov"}
    for c in seen:
        assert c["model"]["depth"] == 2 and 8 <= c["model"]["hidden"] <= 64
        assert "model.hidden" not in c
        if c["optimizer"] == "Adam":
            assert "beta1" in c and "momentum" not in c
        else:
            assert "momentum" in c and "beta1" not in c


def test_grid_covers_every_point_exactly_once_with_several_workers(project: UserProject) -> None:
    write(project, RETURNS_SCRIPT, n_jobs=3, n_trials=None, sampler={"type": "grid"},
          sweep_parameters={"x": {"type": "float", "low": -1.0, "high": 1.0, "step": 0.5},
                            "k": {"type": "int", "low": 1, "high": 3},
                            "opt": {"type": "categorical", "choices": ["a", "b"]}})
    config = project.root / "config" / "config.yaml"
    config.write_text(config.read_text().replace("n_trials: null\n", ""))
    result = project.run()
    assert result.returncode == 0, result.stderr
    points = Counter((t.params["x"], t.params["k"], t.params["opt"]) for t in project.trials())
    assert len(points) == 5 * 3 * 2 and set(points.values()) == {1}
    assert project.states() == {"COMPLETE": 30}
    again = project.run()
    assert "already has 30 finished trials" in again.stdout


def test_enqueued_trials_run_once_each_under_four_workers(project: UserProject) -> None:
    entries = [{"x": float(i)} for i in range(-4, 4)]
    write(project, RETURNS_SCRIPT, n_jobs=4, n_trials=12, enqueue=entries)
    assert project.run().returncode == 0
    trials = project.trials()
    assert len(trials) == 12
    xs = Counter(t.params["x"] for t in trials)
    for entry in entries:
        assert xs[entry["x"]] == 1
    extended = project.run("--set", "n_trials=14")
    assert extended.returncode == 0
    xs = Counter(t.params["x"] for t in project.trials())
    assert all(xs[e["x"]] == 1 for e in entries)  # not enqueued again on resume


def test_dry_run_prints_everything_and_writes_nothing(project: UserProject,
                                                      tmp_path: Path) -> None:
    write(project, RETURNS_SCRIPT, sampler={"type": "grid"}, n_trials=None,
          pruner={"type": "median"},
          sweep_parameters={"x": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.5},
                            "opt": {"type": "categorical", "choices": ["a", "b"]}})
    config = project.root / "config" / "config.yaml"
    config.write_text(config.read_text().replace("n_trials: null\n", ""))
    jsonl = tmp_path / "points.jsonl"
    result = project.run("--dry-run", "--jsonl", str(jsonl), "--set", "lr=0.1")
    assert result.returncode == 0, result.stderr
    assert not project.db().exists() and not (project.root / "optuna_studies").exists()
    out = result.stdout
    assert "x: float [0.0, 1.0] step 0.5" in out and "opt: categorical ['a', 'b']" in out
    assert "Sampler: grid" in out and "Pruner: median" in out
    assert "Grid points (6, run first, each exactly once):" in out
    assert "lr: 0.1" in out
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(lines) == 6
    assert {(c["x"], c["opt"]) for c in lines} == {(x, o) for x in (0.0, 0.5, 1.0)
                                                   for o in ("a", "b")}
    assert all(c["lr"] == 0.1 and c["experiment_name"] == "exp" for c in lines)
