"""GPUs per worker. The plumbing test runs anywhere; the CUDA tests need a GPU and skip
cleanly without one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import UserProject, needs_torch

RECORD = '''
import json, os
from hparam_search import hparam_search, current_trial


@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    info = current_trial()
    with open(os.path.join(config["out"], f"{info.number}.json"), "w") as f:
        json.dump({"rank": info.rank, "gpu": info.gpu,
                   "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}, f)
    return config["x"] ** 2


if __name__ == "__main__":
    train()
'''

CUDA = '''
import os
import torch
from hparam_search import hparam_search, current_trial


@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    assert torch.cuda.device_count() == 1, "a worker must see exactly its own GPU"
    leftover = torch.cuda.memory_allocated()
    if config["x"] > 0.5:  # ask for far more memory than any GPU has
        torch.empty(int(4e13), dtype=torch.uint8, device="cuda")
    a = torch.randn(512, 512, device="cuda")
    return float((a @ a).abs().mean().item()) + leftover


if __name__ == "__main__":
    train()
'''


def test_each_worker_sees_only_its_gpu(project: UserProject, tmp_path: Path) -> None:
    out = tmp_path / "seen"
    out.mkdir()
    project.write_script(body=RECORD)
    project.write_config(n_trials=12, gpus=[0, 1], workers_per_gpu=2, out=str(out))
    result = project.run()
    assert result.returncode == 0, result.stderr
    assert "workers    4 (spawn; GPUs 0, 0, 1, 1)" in result.stdout
    seen = [json.loads(p.read_text()) for p in out.glob("*.json")]
    assert len(seen) == 12
    for item in seen:
        expected = str(item["rank"] // 2)
        assert item["gpu"] == expected and item["visible"] == expected


@pytest.mark.torch
def test_pytorch_cuda_train_with_an_out_of_memory_trial(project: UserProject) -> None:
    torch = needs_torch()
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    project.write_script(body=CUDA)
    project.write_config(n_trials=8, gpus="auto", fail_fast=0,
                         sweep_parameters={"x": {"type": "float", "low": 0.0, "high": 1.0}},
                         enqueue=[{"x": 0.9}, {"x": 0.1}, {"x": 0.2}])
    result = project.run(timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    trials = {t.params["x"]: t for t in project.trials()}
    assert trials[0.9].state.name == "PRUNED"
    assert "OutOfMemoryError" in trials[0.9].user_attrs["error"]
    # The same worker went on, its memory given back: later trials complete from zero.
    assert trials[0.1].state.name == "COMPLETE" and trials[0.2].state.name == "COMPLETE"
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials.values()) == 8
