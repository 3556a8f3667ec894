"""What a new user trips over: thread counts per worker, pipes, pruned trials told apart,
clear errors, and the `hparam-search` command's rough edges."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hparam_search.settings import cpu_count
from tests.conftest import REPO, UserProject, needs_torch

THREADS_SCRIPT = '''
import json, os, sys
from hparam_search import hparam_search, current_trial


@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    seen = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                          "OPENBLAS_NUM_THREADS")}
    if config.get("torch"):
        import torch
        seen["torch"] = torch.get_num_threads()
    with open(os.path.join(config["out"], f"{current_trial().number}.json"), "w") as f:
        json.dump(seen, f)
    return config["x"]


if __name__ == "__main__":
    train()
'''

RAISING = '''
import sys
from hparam_search import hparam_search, report


@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    print("starting", config["x"])
    if config["x"] > 0.5:
        raise ValueError(f"x too large: {config['x']}")
    for step in range(3):
        report(config["x"] * (step + 1) / 3, step)
    return config["x"]


if __name__ == "__main__":
    train()
'''


def cli(*args: str, cwd: Path, **kwargs) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "hparam_search.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, **kwargs)


def seen_threads(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


# -- threads per worker ------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
def test_each_worker_gets_a_fair_share_of_the_cores(project: UserProject, method: str) -> None:
    out = project.root / "seen"
    out.mkdir()
    project.write_script(body=THREADS_SCRIPT)
    project.write_config(n_jobs=2, n_trials=2, out=str(out), start_method=method,
                         sweep_parameters={"x": {"type": "float", "low": 0.0, "high": 1.0}})
    env = {k: "" for k in ()}
    result = project.run(env=env)
    assert result.returncode == 0, result.stderr
    share = str(max(1, cpu_count() // 2))
    for seen in seen_threads(out):
        assert seen == {"OMP_NUM_THREADS": share, "MKL_NUM_THREADS": share,
                        "OPENBLAS_NUM_THREADS": share}
    assert f"threads    {share} per worker (OMP, MKL, OpenBLAS and torch threads)" in result.stdout


@pytest.mark.torch
def test_torch_threads_follow_even_when_the_script_imported_torch_first(
        project: UserProject) -> None:
    needs_torch()
    out = project.root / "seen"
    out.mkdir()
    project.write_script(body="import torch\n" + THREADS_SCRIPT)
    project.write_config(n_jobs=2, n_trials=2, out=str(out), torch=True, start_method="fork",
                         threads_per_worker=1,
                         sweep_parameters={"x": {"type": "float", "low": 0.0, "high": 1.0}})
    result = project.run()
    assert result.returncode == 0, result.stderr
    assert [s["torch"] for s in seen_threads(out)] == [1, 1]


def test_threads_per_worker_setting_zero_and_the_users_own_variable(project: UserProject) -> None:
    out = project.root / "seen"
    out.mkdir()
    project.write_script(body=THREADS_SCRIPT)
    space = {"x": {"type": "float", "low": 0.0, "high": 1.0}}
    project.write_config(n_jobs=1, n_trials=1, out=str(out), threads_per_worker=3,
                         sweep_parameters=space)
    assert project.run().returncode == 0
    assert seen_threads(out)[0]["OMP_NUM_THREADS"] == "3"

    for p in out.glob("*.json"):
        p.unlink()
    project.write_config(n_jobs=1, n_trials=1, out=str(out), threads_per_worker=0,
                         sweep_parameters=space, tag="zero")
    clean = {k: v for k, v in project.env().items() if not k.endswith("_NUM_THREADS")}
    result = subprocess.run(project.command(), cwd=project.root, env=clean, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert seen_threads(out)[0]["OMP_NUM_THREADS"] is None
    assert "threads    as the libraries choose (threads_per_worker: 0)" in result.stdout

    for p in out.glob("*.json"):
        p.unlink()
    project.write_config(n_jobs=1, n_trials=1, out=str(out), sweep_parameters=space, tag="own")
    result = project.run(env={"OMP_NUM_THREADS": "7"})
    assert result.returncode == 0, result.stderr
    seen = seen_threads(out)[0]
    assert seen["OMP_NUM_THREADS"] == "7"  # the user's own variable wins
    assert "OMP_NUM_THREADS=7 (from your environment)" in result.stdout


def test_more_workers_than_cores_is_warned_once(project: UserProject) -> None:
    n_jobs = cpu_count() + 1
    project.write_config(n_jobs=n_jobs, n_trials=n_jobs)
    result = project.run()
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(f"warning: n_jobs ({n_jobs}) is more than the {cpu_count()} CPU "
                               f"cores this process may use") == 1


# -- pruned by the pruner or by an error ----------------------------------------------------
@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> UserProject:
    root = tmp_path_factory.mktemp("mixed") / "proj"
    root.mkdir()
    project = UserProject(root)
    project.write_script(body=RAISING)
    project.write_config({
        "experiment_name": "exp", "tag": "t", "n_jobs": 2, "n_trials": 10, "fail_fast": 0,
        "pruner": {"type": "threshold", "upper": 0.3},
        "enqueue": [{"x": 0.9}, {"x": 0.8}, {"x": 0.1}, {"x": 0.4}, {"x": 0.45}],
        "sweep_parameters": {"x": {"type": "float", "low": 0.0, "high": 1.0}}})
    result = project.run()
    assert result.returncode == 0, result.stdout + result.stderr
    project.last_output = result.stdout  # type: ignore[attr-defined]
    return project


def _kinds(project: UserProject) -> tuple[int, int]:
    trials = [t for t in project.trials() if t.state.name == "PRUNED"]
    errors = sum("error" in t.user_attrs for t in trials)
    return len(trials) - errors, errors


def test_pruned_trials_are_counted_apart_everywhere(mixed: UserProject) -> None:
    by_pruner, by_error = _kinds(mixed)
    assert by_pruner >= 2 and by_error >= 2
    expected = f"PRUNED {by_pruner} (pruner) + {by_error} (error)"
    assert expected in mixed.last_output  # the end-of-run summary
    show = cli("show", "exp_t", cwd=mixed.root)
    assert show.returncode == 0 and expected in show.stdout
    ls = cli("ls", cwd=mixed.root)
    assert f"{by_pruner} (pruner) + {by_error} (error)" in ls.stdout


def test_show_lists_trials_by_state_with_why(mixed: UserProject) -> None:
    result = cli("show", "exp_t", "--state", "pruned", cwd=mixed.root)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("pruned trials (")[1].splitlines()
    assert lines[1].split()[:2] == ["number", "state"] and "why" in lines[1]
    errors = [line for line in lines if "error: ValueError: x too large" in line]
    pruner = [line for line in lines if "pruner: stopped by the threshold pruner" in line]
    assert len(errors) == _kinds(mixed)[1] and len(pruner) == _kinds(mixed)[0]


def test_trial_command_shows_everything_and_the_log_has_the_traceback(mixed: UserProject) -> None:
    failed = next(t for t in mixed.trials() if "error" in t.user_attrs)
    result = cli("trial", "exp_t", str(failed.number), cwd=mixed.root)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"trial {failed.number} of study 'exp_t': PRUNED (error: ValueError: "
                          f"x too large")
    assert f"  x: {failed.params['x']!r}" in out
    assert "config:\n  experiment_name: exp\n" in out
    assert "traceback:\nTraceback (most recent call last):" in out
    log = Path(failed.user_attrs["log_file"])
    assert f"log file     {log}\n" in out  # in full, never cut
    text = log.read_text()
    assert "starting" in text and "Traceback (most recent call last)" in text
    assert "ValueError: x too large" in text
    pruned = next(t for t in mixed.trials() if t.intermediate_values and
                  t.state.name == "PRUNED")
    shown = cli("trial", "exp_t", str(pruned.number), cwd=mixed.root).stdout
    assert "intermediate values:\n  step 0:" in shown
    missing = cli("trial", "exp_t", "999", cwd=mixed.root)
    assert missing.returncode == 1
    assert missing.stderr == "error: study 'exp_t' has no trial 999. Trial numbers run from 0 to 9.\n"


# -- pipes -----------------------------------------------------------------------------------
def _piped(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    producer = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    head = subprocess.run(["head", "-1"], stdin=producer.stdout, capture_output=True, text=True,
                          timeout=120)
    producer.stdout.close()
    err = producer.stderr.read()
    producer.stderr.close()
    return producer.wait(timeout=120), head.stdout, err


def test_output_piped_to_head_ends_quietly(mixed: UserProject, project: UserProject) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    code, first, err = _piped([sys.executable, "-m", "hparam_search.cli", "show", "exp_t"],
                              mixed.root, env)
    assert (code, first, err) == (0, "study        exp_t\n", "")
    code, first, err = _piped(project.command("--dry-run"), project.root, project.env())
    assert code == 0 and first.startswith("hparam_search dry run") and err == ""
    project.write_config(n_jobs=2, n_trials=30, sleep=0.02)
    code, first, err = _piped(project.command(), project.root, project.env())
    assert code == 0 and "Traceback" not in err and err == "", err
    assert project.states() == {"COMPLETE": 30}  # the search went on to the end


# -- the hparam-search command ---------------------------------------------------------------
def test_command_rough_edges(mixed: UserProject, tmp_path: Path) -> None:
    root = mixed.root
    out = tmp_path / "t.csv"
    result = cli("export", "exp_t", "-o", str(out), cwd=root)  # format from the extension
    assert result.returncode == 0 and out.read_text().startswith("number,state,value")
    jsonl = tmp_path / "t.jsonl"
    assert cli("export", "exp_t", "-o", str(jsonl), cwd=root).returncode == 0
    assert len(jsonl.read_text().splitlines()) == 10
    bad = cli("export", "exp_t", "-o", str(tmp_path / "t.xlsx"), cwd=root)
    assert bad.returncode == 1 and "cannot tell the format from the file name t.xlsx" in bad.stderr
    # show NAME.db finds optuna_studies/NAME.db; ls on a project folder looks inside it.
    assert cli("show", "exp_t.db", cwd=root).returncode == 0
    listed = cli("ls", str(root), cwd=tmp_path)
    assert listed.returncode == 0 and "exp_t" in listed.stdout
    # Not a study database.
    junk = tmp_path / "junk.db"
    junk.write_text("hello")
    result = cli("show", str(junk), cwd=root)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: not an Optuna study database: {junk}.")
    # No arguments: help, exit 2.
    result = cli(cwd=root)
    assert result.returncode == 2 and "usage: hparam-search" in result.stdout
    # plot without -o writes to ./plots/<study>/.
    result = cli("plot", "exp_t", cwd=root)
    assert result.returncode == 0, result.stderr
    assert (root / "plots" / "exp_t" / "report.html").is_file()
    assert (root / "plots" / "exp_t" / "intermediate_values.png").is_file()
    # Paths in show are never cut off.
    show = cli("show", "exp_t", cwd=root).stdout
    log = next(t for t in mixed.trials() if t.state.name == "COMPLETE").user_attrs["log_file"]
    assert os.path.relpath(log, root) in show or log in show


def test_history_plot_uses_a_log_axis_for_values_spanning_orders_of_magnitude(
        project: UserProject) -> None:
    pytest.importorskip("matplotlib")
    project.write_script(body=RAISING.replace('return config["x"]', 'return 10 ** config["x"]')
                         .replace("> 0.5", "> 99"))
    project.write_config(n_jobs=1, n_trials=6, sweep_parameters={
        "x": {"type": "float", "low": 0.0, "high": 6.0}},
        enqueue=[{"x": 0.0}, {"x": 6.0}])
    assert project.run().returncode == 0
    from hparam_search.results.plots import load_study, plot
    from hparam_search.storage import close_storage

    study = load_study(f"sqlite:///{project.db()}", "exp_t")
    try:
        import matplotlib.pyplot as plt

        seen = []
        original = plt.Figure.savefig

        def spy(fig, *args, **kwargs):
            seen.append([ax.get_yscale() for ax in fig.axes])
            return original(fig, *args, **kwargs)

        plt.Figure.savefig = spy
        try:
            files = plot(study, project.root / "plots")
        finally:
            plt.Figure.savefig = original
    finally:
        close_storage(study._storage)
    names = [f.stem for f in files]
    assert seen[names.index("optimization_history")][0] == "log"


# -- config mistakes -------------------------------------------------------------------------
def _error(project: UserProject, config: dict | str, *sets: str) -> str:
    project.write_config(config)
    result = project.run(*(["--set", *sets] if sets else []))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and ".." not in result.stderr.replace("'..'", "")
    assert not project.db().exists()
    return result.stderr


BASE = {"experiment_name": "exp", "tag": "t", "n_trials": 2,
        "sweep_parameters": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1,
                                               "log": True},
                             "layers": {"type": "int", "low": 1, "high": 4}}}


def test_set_without_the_sweep_parameters_prefix(project: UserProject) -> None:
    assert _error(project, BASE, "learning_rate.low=0.1") == (
        "error: command line (--set learning_rate.low=0.1): learning_rate.low: learning_rate is "
        "a sweep parameter, so this sets a fixed value beside it. To change its low, write "
        "--set sweep_parameters.learning_rate.low=0.1\n")


def test_quoted_number_and_too_large_step(project: UserProject) -> None:
    text = yaml.safe_dump(BASE, sort_keys=False).replace("low: 0.0001", "low: '1e-3'")
    assert "'1e-3'" in text
    assert _error(project, text).endswith(
        "sweep_parameters.learning_rate.low: must be a finite number (got '1e-3'). Remove the "
        "quotes: YAML reads a quoted value as text.\n")
    stepped = {**BASE, "sweep_parameters": {"layers": {"type": "int", "low": 1, "high": 4,
                                                       "step": 10}}}
    assert _error(project, stepped).endswith(
        "sweep_parameters.layers.step: is larger than the range high - low (3), so only low (1) "
        "could ever be drawn (got 10). Use a smaller step, or widen low/high.\n")


def test_a_name_too_long_for_a_file(project: UserProject) -> None:
    message = _error(project, {**BASE, "tag": "t" * 300})
    assert "tag: name too long: the study's file name" in message
    assert "file names may have at most 255. Use a shorter experiment_name or tag." in message


def test_empty_and_misplaced_sweep_parameters(project: UserProject) -> None:
    empty = "experiment_name: exp\ntag: t\nn_trials: 2\nsweep_parameters:\n"
    assert _error(project, empty) == (
        "error: config/config.yaml:4: sweep_parameters: is empty, so every trial would run the "
        "same config. List the parameters to search under it (indented), e.g. 'lr: {type: "
        "float, low: 1e-5, high: 1e-1}', or remove the key.\n")
    dedented = ("experiment_name: exp\ntag: t\nn_trials: 1\nsweep_parameters:\n"
                "  x: {type: float, low: 0, high: 1}\n"
                "lr: {type: float, low: 0.001, high: 0.1}\n")
    project.write_config(dedented)
    result = project.run()
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        "warning: config/config.yaml:6: lr: looks like a sweep parameter (type: float) but is "
        "not under sweep_parameters, so train receives it as a dict. To search it, indent it "
        "under sweep_parameters.\n")
    project.write_config("experiment_name: exp\ntag: none\nn_trials: 1\nx: 1.0\n")
    result = project.run()
    assert result.returncode == 0
    assert result.stderr == "warning: no sweep parameters, so every trial runs the same config.\n"


def test_fail_fast_message_ends_with_the_traceback(project: UserProject) -> None:
    project.write_config(n_jobs=1, n_trials=10, mode="raise", fail_fast=2)
    result = project.run()
    assert result.returncode == 1
    message = result.stderr
    assert message.startswith("error: the first 2 finished trials all raised an exception, so "
                              "the search stopped early (likely a bug in train). Fix train and "
                              "run again")
    assert "The first failure:\nTraceback (most recent call last):" in message
    assert message.rstrip().endswith("ValueError: bad x " + message.rstrip().rsplit(" ", 1)[1])
    assert ".." not in message


# -- small things ----------------------------------------------------------------------------
def test_dry_run_says_what_a_run_would_add(project: UserProject) -> None:
    project.write_config(n_jobs=2, n_trials=4)
    result = project.run("--dry-run")
    assert "Study: new (a run creates it and runs 4 trials)" in result.stdout
    assert not project.db().exists()
    assert project.run().returncode == 0
    result = project.run("--dry-run", "--set", "n_trials=10")
    assert ("Study: exists with 4 trials (COMPLETE 4); 4 count toward n_trials=10, so a run "
            "would add 6 trials") in result.stdout


def test_help_names_the_config_file_and_the_study(project: UserProject) -> None:
    result = project.run("--help")
    assert result.returncode == 0
    assert "config file: config/config.yaml" in result.stdout
    assert f"study:       exp_t, in {project.db().resolve()}" in result.stdout


def test_summary_suggests_show_and_a_stray_config_is_pointed_out(project: UserProject) -> None:
    project.write_config(n_trials=2)
    result = project.run()
    assert "Inspect:  hparam-search show optuna_studies/exp_t.db" in result.stdout
    (project.root / "config" / "config.yaml").rename(project.root / "config.yaml")
    result = project.run()
    assert result.returncode == 2
    assert result.stderr == (
        "error: config/config.yaml: config file not found. A relative config_path is looked up "
        "in config/ beside your script, and config.yaml lies beside the script itself: move it "
        "into config/, or pass --config config.yaml.\n")
