"""enqueue_file lines matched to sweep parameters: exact names, params-proto prefixes, and the
keys of fixed values left alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hparam_search.errors import HparamSearchError
from hparam_search.space import parse_sweep
from hparam_search.sweep_file import read_sweep_file

PARAMS = parse_sweep({"lr": {"type": "float", "low": 1e-4, "high": 1.0},
                      "model.depth": {"type": "int", "low": 1, "high": 8}},
                     lambda key: ("config.yaml", None))
FIXED = {"scheduler": {"lr": 0.5, "gamma": 0.9}, "epochs": 3}


def read(tmp_path: Path, *rows: dict) -> tuple[dict, ...]:
    path = tmp_path / "sweep.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return read_sweep_file(path, PARAMS, FIXED, ("config.yaml", 3))


def test_a_whole_config_keeps_fixed_keys_out(tmp_path: Path) -> None:
    # scheduler.lr is a fixed value that ends like the sweep parameter lr: never taken for it.
    row = {"lr": 0.01, "model": {"depth": 4}, "scheduler": {"lr": 0.5, "gamma": 0.9},
           "epochs": 3, "n_trials": 10}
    assert read(tmp_path, row) == ({"lr": 0.01, "model.depth": 4},)


def test_params_proto_prefixes_match_by_the_last_part(tmp_path: Path) -> None:
    assert read(tmp_path, {"Args.lr": 0.1, "Model.depth": 2}) == (
        {"lr": 0.1, "model.depth": 2},)


def test_an_unreadable_file_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "sweep.jsonl"
    path.write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(HparamSearchError, match="enqueue_file: cannot be read"):
        read_sweep_file(path, PARAMS, FIXED, ("config.yaml", 3))
