"""The runnable examples under examples/, run as a user would: each folder copied to a temporary
directory (so no study is left in the repository), `python train.py` there, the study read back
with Optuna."""

from __future__ import annotations

import collections
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from tests.conftest import REPO, kill_group, needs_torch, pids_alive, user_env, wait_for

EXAMPLES = REPO / "examples"


def copy_example(name: str, tmp_path: Path) -> Path:
    folder = tmp_path / name
    shutil.copytree(EXAMPLES / name, folder,
                    ignore=shutil.ignore_patterns("optuna_studies", "__pycache__", "plots"))
    return folder


def run(folder: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], check=False, cwd=folder, env=user_env(),
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def config(folder: Path, name: str = "config.yaml") -> dict[str, Any]:
    return yaml.safe_load((folder / "config" / name).read_text())


def study_name(cfg: dict[str, Any]) -> str:
    return f"{cfg['experiment_name']}_{cfg['tag']}"


def load_trials(folder: Path, study: str) -> tuple[list[optuna.trial.FrozenTrial], Any]:
    """Every trial of the study in the example's own .db, and the Pareto front when it has
    several objectives; the storage's connections are closed before returning."""
    url = f"sqlite:///{folder / 'optuna_studies' / f'{study}.db'}"
    storage = optuna.storages.RDBStorage(url)
    try:
        loaded = optuna.load_study(study_name=study, storage=storage)
        front = loaded.best_trials if len(loaded.directions) > 1 else None
        return loaded.get_trials(deepcopy=False), front
    finally:
        storage.engine.dispose()


# MLflow's own store code (read back here) trips SQLAlchemy 2.1's deprecations.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def states(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    return dict(collections.Counter(t.state.name for t in trials))


# -- PyTorch ---------------------------------------------------------------------------------
# About 15 s each on 2 cores: a dozen trials of a small MLP, plus starting PyTorch per worker.
@pytest.mark.torch
def test_pytorch_example_prunes_checkpoints_and_saves_artifacts(tmp_path: Path) -> None:
    needs_torch()
    import torch

    folder = copy_example("pytorch", tmp_path)
    cfg = config(folder)
    result = run(folder, "train.py", timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    trials, _ = load_trials(folder, study_name(cfg))
    assert len(trials) == cfg["n_trials"]
    assert set(states(trials)) <= {"COMPLETE", "PRUNED"}
    epochs = list(range(cfg["epochs"]))
    warmup = cfg["pruner"]["n_warmup_steps"]
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    for t in pruned:  # by the pruner, never by an exception in train
        assert "error" not in t.user_attrs, t.user_attrs
        assert t.user_attrs["prune_reason"].startswith("stopped by the median pruner at step")
        assert warmup <= max(t.intermediate_values) <= epochs[-1]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert complete
    for t in complete:
        assert sorted(t.intermediate_values) == epochs
        assert t.value == pytest.approx(t.intermediate_values[epochs[-1]])
        assert 0.0 <= t.user_attrs["metric.accuracy"] <= 1.0
        ckpt = Path(t.user_attrs["trial_dir"]) / "last.pt"
        assert torch.load(ckpt)["epoch"] == epochs[-1]
        artifacts = [json.loads(v) for k, v in t.system_attrs.items()
                     if k.startswith("artifacts:")]
        assert [a["filename"] for a in artifacts] == ["last.pt"]
    assert pruned or all(sorted(t.intermediate_values) == epochs for t in trials)
    # MLflow tracking is on: one nested run per trial in the local store.
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{folder / 'optuna_studies' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(study_name(cfg))
    runs = client.search_runs([experiment.experiment_id])
    nested = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(int(r.data.tags["trial"]) for r in nested) == sorted(t.number for t in trials)


@pytest.mark.torch
def test_pytorch_example_retry_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    """Trial 0's worker is killed in epoch 3; the retry (same parameters, same folder) starts
    at epoch 3 from last.pt, and the study still ends with exactly n_trials finished."""
    needs_torch()
    folder = copy_example("pytorch", tmp_path)
    cfg = config(folder)
    pid_file, log = tmp_path / "paused.pid", tmp_path / "out.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "train.py"], cwd=folder, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=user_env({"EXAMPLE_PAUSE_PID_FILE": str(pid_file)}),
                                start_new_session=True)
    worker = None
    try:
        worker = int(wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(),
                              timeout=60))
        os.kill(worker, signal.SIGKILL)
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            kill_group(proc)
            proc.wait(timeout=30)
        if worker is not None and pids_alive([worker]):
            os.kill(worker, signal.SIGKILL)
    output = log.read_text()
    assert proc.returncode == 0, output
    assert "RETRY of trial 0" in output, output

    trials, _ = load_trials(folder, study_name(cfg))
    by_number = {t.number: t for t in trials}
    assert by_number[0].state.name == "FAIL"
    assert sorted(by_number[0].intermediate_values) == [0, 1, 2]
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == 0)
    assert retry.state.name in ("COMPLETE", "PRUNED")
    assert retry.params == by_number[0].params
    assert retry.user_attrs["trial_dir"] == by_number[0].user_attrs["trial_dir"]
    attempts = [json.loads(line) for line in
                (Path(retry.user_attrs["trial_dir"]) / "attempts.jsonl").read_text().splitlines()]
    assert attempts == [{"trial": 0, "attempt": 1, "first_epoch": 0},
                        {"trial": retry.number, "attempt": 2, "first_epoch": 3}]
    assert "resuming from" in (Path(retry.user_attrs["log_file"])).read_text()
    # The learning curve is whole: epochs 0-2 carried over from the killed attempt.
    assert sorted(retry.intermediate_values)[:4] == [0, 1, 2, 3]
    counts = states(trials)
    assert counts.pop("FAIL") == 1
    assert set(counts) <= {"COMPLETE", "PRUNED"} and sum(counts.values()) == cfg["n_trials"]


# -- several objectives ----------------------------------------------------------------------
def test_multi_objective_example_has_a_pareto_front_that_show_lists(tmp_path: Path) -> None:
    folder = copy_example("multi_objective", tmp_path)
    cfg = config(folder)
    result = run(folder, "train.py")
    assert result.returncode == 0, result.stdout + result.stderr
    trials, front = load_trials(folder, study_name(cfg))
    assert states(trials) == {"COMPLETE": cfg["n_trials"]}
    assert front
    for t in trials:
        assert 0.0 <= t.values[0] <= 1.0 and t.values[1] >= 10  # accuracy, parameter count
    db = f"optuna_studies/{study_name(cfg)}.db"
    shown = run(folder, "-m", "hparam_search.cli", "show", db, timeout=60)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    start = lines.index(f"pareto front ({len(front)} trials):")
    rows = list(itertools.takewhile(str.strip, lines[start + 2:]))  # after the header row
    assert sorted(int(row.split()[0]) for row in rows) == sorted(t.number for t in front)

    plotted = run(folder, "-m", "hparam_search.cli", "plot", db, "-o", "plots", timeout=90)
    assert plotted.returncode == 0, plotted.stderr
    assert (folder / "plots" / "pareto_front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- grids and lists -------------------------------------------------------------------------
def grid_axis(spec: dict[str, Any]) -> list[Any]:
    if spec["type"] == "categorical":
        return list(spec["choices"])
    return list(range(spec["low"], spec["high"] + 1, spec.get("step", 1)))


def test_grid_and_lists_example_runs_each_point_and_row_once(tmp_path: Path) -> None:
    folder = copy_example("grid_and_lists", tmp_path)
    grid_cfg, zip_cfg = config(folder), config(folder, "zip.yaml")
    assert study_name(grid_cfg) != study_name(zip_cfg)

    result = run(folder, "train.py")
    assert result.returncode == 0, result.stdout + result.stderr
    names = list(grid_cfg["sweep_parameters"])
    grid = collections.Counter(itertools.product(
        *(grid_axis(grid_cfg["sweep_parameters"][n]) for n in names)))
    assert len(grid) == 18
    trials, _ = load_trials(folder, study_name(grid_cfg))
    assert states(trials) == {"COMPLETE": len(grid)}
    assert collections.Counter(tuple(t.params[n] for n in names) for t in trials) == grid

    result = run(folder, "train.py", "--config", "zip.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = zip_cfg["enqueue"]
    assert zip_cfg["n_trials"] == len(rows)
    names = list(zip_cfg["sweep_parameters"])
    trials, _ = load_trials(folder, study_name(zip_cfg))
    assert states(trials) == {"COMPLETE": len(rows)}
    assert collections.Counter(tuple(t.params[n] for n in names) for t in trials) == \
        collections.Counter(tuple(row[n] for n in names) for row in rows)
    # The second study did not touch the first.
    assert len(load_trials(folder, study_name(grid_cfg))[0]) == len(grid)
