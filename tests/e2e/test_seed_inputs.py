"""The neighbouring tools' inputs as they are: sweeps as JSON lines (ours and params-proto's),
a results file superparams users read with pandas, and -D/--define overrides."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, UserProject, read_only_folder, wait_for

SPACE = {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
         "optimizer": {"type": "categorical", "choices": ["Adam", "SGD"]},
         "x": {"type": "float", "low": -5.0, "high": 5.0}}


def write(project: UserProject, **config) -> None:
    base = {"experiment_name": "exp", "tag": "t", "n_jobs": 2, "n_trials": 6,
            "n_startup_trials": 3, "sweep_parameters": SPACE}
    base.update(config)
    project.write_config(base)


def explicit(project: UserProject, study: str = "exp_t") -> list[dict]:
    return [t.system_attrs["fixed_params"] for t in sorted(project.trials(study),
                                                            key=lambda t: t.number)
            if "fixed_params" in t.system_attrs]


def test_a_sweep_written_by_dry_run_jsonl_is_run_first(project: UserProject) -> None:
    listed = [{"lr": 0.01, "optimizer": "Adam", "x": 1.0},
              {"lr": 0.001, "optimizer": "SGD"}, {"x": -2.5}]
    write(project, enqueue=listed, tag="source")
    out = project.root / "sweep.jsonl"
    result = project.run("--dry-run", "--jsonl", str(out))
    assert result.returncode == 0, result.stderr
    write(project, enqueue_file="sweep.jsonl")  # relative to the script's folder
    result = project.run()
    assert result.returncode == 0, result.stdout + result.stderr
    assert explicit(project) == listed
    assert len(project.trials()) == 6
    # Resumed: the file's configurations are not run again.
    assert project.run("--set", "n_trials=8").returncode == 0
    assert explicit(project) == listed


def test_a_params_proto_sweep_file(project: UserProject) -> None:
    (project.root / "pp.jsonl").write_text(
        '{"Args.lr": 0.02, "Args.optimizer": "SGD"}\n\n{"Args.x": 3.5, "Args.lr": 0.05}\n')
    write(project, enqueue_file="pp.jsonl", enqueue=[{"x": 0.0}])
    result = project.run()
    assert result.returncode == 0, result.stdout + result.stderr
    assert explicit(project) == [{"x": 0.0}, {"lr": 0.02, "optimizer": "SGD"},
                                 {"x": 3.5, "lr": 0.05}]


@pytest.mark.parametrize("lines, space, expected", [
    ('{"lr": 0.01}\nnot json\n', SPACE,
     "sweep.jsonl:2: not a JSON object (Expecting value). Write one JSON object of parameter "
     'values per line, e.g. {"lr": 0.01, "optimizer": "Adam"}.'),
    ('{"lr": 0.01, "depth": 3}\n', SPACE,
     "sweep.jsonl:1: depth: is not a sweep parameter. Sweep parameters: lr, optimizer, x."),
    ('{"x": 9.0}\n', SPACE,
     "sweep.jsonl:1: x: outside the search space (float [-5.0, 5.0]) (got 9.0)."),
    ('{"Args.lr": 0.01}\n', {"model.lr": SPACE["lr"], "head.lr": SPACE["lr"]},
     "sweep.jsonl:1: Args.lr: 'Args.lr' could be any of head.lr, model.lr. Write the sweep "
     "parameter's full (dotted) name as the key."),
])
def test_sweep_file_mistakes_name_the_file_and_line(project: UserProject, lines: str,
                                                    space: dict, expected: str) -> None:
    (project.root / "sweep.jsonl").write_text(lines)
    write(project, enqueue_file="sweep.jsonl", sweep_parameters=space)
    result = project.run()
    assert result.returncode == 2
    assert result.stderr == f"error: {expected}\n"
    assert not project.db().exists()


def test_a_missing_sweep_file(project: UserProject) -> None:
    write(project, enqueue_file="nope.jsonl")
    result = project.run()
    assert result.returncode == 2
    assert result.stderr.startswith("error: config/config.yaml:")
    assert result.stderr.endswith(
        f"enqueue_file: enqueue_file: no such file (got '{project.root / 'nope.jsonl'}'). "
        "Relative paths are taken from the script's folder.\n")


@pytest.mark.parametrize("suffix", ["parquet", "csv", "jsonl"])
def test_results_file_equals_the_export(project: UserProject, suffix: str) -> None:
    write(project, results_file=f"results.{suffix}")
    result = project.run()
    assert result.returncode == 0, result.stdout + result.stderr
    exported = project.root / f"export.{suffix}"
    cli = subprocess.run([sys.executable, "-m", "hparam_search.cli", "export", "exp_t", "-o",
                          str(exported)], cwd=project.root, env=project.env(),
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    read = {"parquet": pd.read_parquet, "csv": pd.read_csv,
            "jsonl": lambda p: pd.read_json(p, lines=True)}[suffix]
    ours, theirs = read(project.root / f"results.{suffix}"), read(exported)
    assert list(ours.columns) == list(theirs.columns)
    pd.testing.assert_frame_equal(ours, theirs)
    assert len(ours) == 6


def test_results_file_is_rewritten_while_the_search_runs(project: UserProject) -> None:
    project.write_config(n_jobs=1, n_trials=12, sleep=0.3, progress_interval=0.5,
                         results_file="live.csv")
    proc = project.popen()
    target = project.root / "live.csv"
    early = wait_for(lambda: target.exists() and len(pd.read_csv(target)), timeout=60,
                     interval=0.1)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert early < 12 and len(pd.read_csv(target)) == 12


def test_results_file_mistakes_are_found_before_anything_runs(project: UserProject,
                                                              tmp_path: Path) -> None:
    write(project, results_file="results.xlsx")
    result = project.run()
    assert result.returncode == 2 and result.stderr.endswith(
        "results_file: has an extension that names no results format (got 'results.xlsx'). "
        "Use a file ending in .parquet, .csv, .jsonl.\n")
    write(project, results_file=str(tmp_path / "missing" / "r.csv"))
    result = project.run()
    assert result.returncode == 2 and f"its folder {tmp_path / 'missing'} does not exist" in \
        result.stderr
    with read_only_folder(tmp_path / "ro") as ro:
        write(project, results_file=str(ro / "r.csv"))
        result = project.run()
        assert result.returncode == 2 and f"its folder {ro} is not writable" in result.stderr
    assert not project.db().exists()


def test_define_is_the_same_as_set(project: UserProject) -> None:
    record = project.root / "seen"
    project.write_config(n_trials=2, record_dir=str(record))
    result = project.run("-D", "tag=d", "model.depth=3", "--define", "n_trials=3")
    assert result.returncode == 0, result.stderr
    seen = [json.loads(p.read_text())["config"] for p in record.glob("*.json")]
    assert len(seen) == 3 and all(c["model"] == {"depth": 3} and c["tag"] == "d" for c in seen)
    bad = project.run("-D", "n_jobs=0")
    assert bad.returncode == 2 and bad.stderr.startswith(
        "error: command line (--set n_jobs=0): n_jobs: must be an integer >= 1")
    usage = project.run("--help").stdout
    assert "-D KEY=VALUE" in usage.replace("--set KEY=VALUE [KEY=VALUE ...], -D", "-D") or \
        "--define" in usage
    assert yaml.safe_load((project.root / "config" / "config.yaml").read_text())["n_trials"] == 2


def test_the_cli_reads_a_study_the_same_way_with_define(project: UserProject) -> None:
    """`hparam-search slurm submit` passes -D through like --set (a dry run, no cluster)."""
    write(project, slurm={"tasks": 2, "nodes_share_sqlite": True})
    result = subprocess.run([sys.executable, "-m", "hparam_search.cli", "slurm", "submit",
                             "script.py", "--set", "n_trials=9", "--dry-run"],
                            cwd=project.root, env=dict(project.env(), PYTHONPATH=str(REPO)),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("--set n_trials=9")
