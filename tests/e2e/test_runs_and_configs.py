"""Every trial keeps the config it ran with: `best` reproduces the best trial after runs with
other fixed values, a changed config is announced, and a search space the stored study cannot
take is refused before anything runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, UserProject

SCRIPT = '''
from hparam_search import hparam_search


@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    penalty = {"Adam": 0.0, "RMSprop": 0.5, "SGD": 1.0}[config["optimizer"]]
    return (config["x"] - 1.0) ** 2 + config["hidden_layers"] + penalty


if __name__ == "__main__":
    train()
'''

CONFIG = {
    "experiment_name": "exp", "tag": "t", "n_jobs": 2, "n_trials": 6, "n_startup_trials": 3,
    "hidden_layers": 8,
    "sweep_parameters": {"x": {"type": "float", "low": -5.0, "high": 5.0},
                         "optimizer": {"type": "categorical",
                                       "choices": ["Adam", "RMSprop", "SGD"]}},
}


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "hparam_search.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def proj(project: UserProject) -> UserProject:
    project.write_script(body=SCRIPT)
    project.write_config(CONFIG)
    return project


def test_best_reproduces_the_best_trial_after_a_run_with_other_fixed_values(
        proj: UserProject) -> None:
    assert proj.run("--set", "tag=b", "n_trials=6").returncode == 0
    second = proj.run("--set", "tag=b", "n_trials=10", "hidden_layers=100")
    assert second.returncode == 0, second.stderr
    trials = proj.trials("exp_b")
    best = min(trials, key=lambda t: t.value)
    assert best.value < 100  # the best trial ran with hidden_layers 8, in the first run
    out = proj.root / "best.yaml"
    result = cli("best", str(proj.db("exp_b")), "--yaml", str(out), cwd=proj.root)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(out.read_text())
    assert config["hidden_layers"] == 8
    check = proj.write_script(name="check.py", body=(
        "import sys, yaml\nfrom script import train\n"
        "print(repr(train(yaml.safe_load(open(sys.argv[1])))))\n"))
    rerun = proj.run(str(out), script=check)
    assert rerun.returncode == 0, rerun.stderr
    assert float(rerun.stdout.strip()) == pytest.approx(best.value)

    # export and show tell the runs apart: the run id and the fixed value that changed.
    csv = proj.root / "trials.csv"
    assert cli("export", str(proj.db("exp_b")), "--format", "csv", "-o", str(csv),
               cwd=proj.root).returncode == 0
    import pandas as pd

    frame = pd.read_csv(csv)
    assert sorted(frame["run"].unique()) == [0, 1]
    by_run = frame.groupby("run")["config.hidden_layers"].unique()
    assert list(by_run[0]) == [8] and list(by_run[1]) == [100]
    shown = cli("show", str(proj.db("exp_b")), cwd=proj.root)
    assert shown.returncode == 0, shown.stderr
    assert "config.hidden_layers" in shown.stdout


def test_a_changed_fixed_value_is_announced_with_old_and_new(proj: UserProject) -> None:
    assert proj.run("--set", "n_trials=4").returncode == 0
    result = proj.run("--set", "n_trials=6", "hidden_layers=100", "model.bias=false",
                      "sweep_parameters.x.high=3.0")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "notice: this config differs from the previous run of study 'exp_t'" in out
    assert "  hidden_layers: 8 -> 100" in out
    assert "  model.bias: (absent) -> false" in out
    assert "  sweep_parameters.x.high: 5.0 -> 3.0" in out
    assert "--set tag=NEW_TAG" in out
    assert "n_trials:" not in out.split("notice:")[1].split("hparam_search: study")[0]
    # The same config again: no notice.
    again = proj.run("--set", "n_trials=7", "hidden_layers=100", "model.bias=false",
                     "sweep_parameters.x.high=3.0")
    assert again.returncode == 0 and "notice:" not in again.stdout


def test_notice_also_on_a_finished_study(proj: UserProject) -> None:
    assert proj.run("--set", "n_trials=2").returncode == 0
    result = proj.run("--set", "n_trials=2", "model.first_layer.bias=False")
    assert result.returncode == 0
    assert "model.first_layer.bias: (absent) -> false" in result.stdout
    assert "nothing to do" in result.stdout


@pytest.mark.parametrize("dry", [False, True])
def test_changed_categorical_choices_are_refused_before_any_trial(proj: UserProject,
                                                                  dry: bool) -> None:
    assert proj.run("--set", "n_trials=3").returncode == 0
    before = proj.dump()
    args = ["--set", "n_trials=6", "sweep_parameters.optimizer.choices=[Adam, SGD]"]
    result = proj.run(*args, *(["--dry-run"] if dry else []))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == (
        "error: command line (--set sweep_parameters.optimizer.choices=[Adam, SGD]): "
        "sweep_parameters.optimizer.choices: study 'exp_t' already has trials with choices "
        "['Adam', 'RMSprop', 'SGD'], and Optuna cannot change a categorical parameter's "
        "choices within a study (got ['Adam', 'SGD']). Start a separate study with "
        "--set tag=NEW_TAG, or keep the old choices.\n")
    assert "Traceback" not in result.stdout + result.stderr
    assert "storage" not in result.stderr
    assert proj.dump() == before
    assert len(proj.trials()) == 3


def test_changed_parameter_type_in_the_yaml_names_the_line(proj: UserProject) -> None:
    assert proj.run("--set", "n_trials=2").returncode == 0
    config = dict(CONFIG, n_trials=4)
    config["sweep_parameters"] = dict(CONFIG["sweep_parameters"],
                                      x={"type": "int", "low": -5, "high": 5})
    proj.write_config(config)
    result = proj.run()
    assert result.returncode == 2
    assert result.stderr.startswith("error: config/config.yaml:")
    assert ("sweep_parameters.x.type: study 'exp_t' already has trials where this parameter is "
            "float, and Optuna cannot change a parameter's type within a study (got 'int'). "
            "Start a separate study with --set tag=NEW_TAG, or keep type: float.") in result.stderr
