"""The `hparam-search` command, live progress, per-trial logs and study metadata, on studies
made by the real launcher."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image

from tests.conftest import FIRST_TO_CLAIM, UserProject, two_studies

# Prints to both streams; a marker file makes one trial kill its own worker (a FAIL trial).
SCRIPT = FIRST_TO_CLAIM + '''
import os, signal, sys, time
from hparam_search import hparam_search


@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    print(f"training x={config['x']:.4f}")
    print("a warning line", file=sys.stderr)
    time.sleep(config.get("sleep", 0))
    if config.get("die_marker") and first_to_claim(config["die_marker"]):
        time.sleep(0.3)  # what a trial printed reaches its log within moments
        os.kill(os.getpid(), signal.SIGKILL)
    if config["x"] > 4:
        raise ValueError("x too large")
    if config.get("two"):
        return (config["x"] - 1) ** 2, abs(config["x"] * config["y"])
    return (config["x"] - 1) ** 2 + config["y"]


if __name__ == "__main__":
    train()
'''


def cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(__file__).resolve().parents[2]), full_env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "hparam_search.cli", *args], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> UserProject:
    """One single-objective study with COMPLETE, PRUNED (error) and FAIL trials, and one with
    two objectives, in a git repository."""
    root = tmp_path_factory.mktemp("results") / "proj"
    root.mkdir()
    project = two_studies(root, SCRIPT, 12)
    return project


def test_the_single_objective_study_has_every_state(made: UserProject) -> None:
    states = made.states()
    assert states["COMPLETE"] >= 1 and states["PRUNED"] >= 1 and states["FAIL"] == 1


def test_ls_lists_every_study_with_counts(made: UserProject) -> None:
    result = cli("ls", cwd=made.root)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:6] == ["study", "file", "COMPLETE", "PRUNED", "FAIL", "RUNNING"]
    row = next(line for line in lines if line.startswith("exp_t "))
    states = made.states()
    # The enqueued x=4.5 raises: its PRUNED trials are counted as errors, apart from the pruner.
    assert row.split()[1:7] == ["optuna_studies/exp_t.db", str(states.get("COMPLETE", 0)),
                                str(states.get("PRUNED", 0)), "(error)", "1", "0"]
    assert any(line.startswith("exp_two ") and "on the Pareto front" in line for line in lines)


def test_show_summary_config_and_top_n(made: UserProject) -> None:
    result = cli("show", "exp_t", "-n", "3", cwd=made.root)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    import optuna

    with made.study() as study:
        best_trial, complete = study.best_trial, study.get_trials(
            states=(optuna.trial.TrialState.COMPLETE,))
    assert f"best         trial {best_trial.number}: value={best_trial.value:.6g}" in out
    assert "directions   minimize" in out and "FAIL 1" in out
    assert f"script       {made.script}" in out
    assert f"git          {_head(made.root)}" in out
    assert "  experiment_name: exp" in out and "  n_trials: 12" in out  # the resolved config
    top = out.split("top 3 trials:\n")[1].splitlines()
    assert len(top) == 4  # header + 3
    best_numbers = [t.number for t in sorted(complete, key=lambda t: t.value)[:3]]
    assert [int(line.split()[0]) for line in top[1:]] == best_numbers
    two = cli("show", str(made.db("exp_two")), cwd=made.root)
    assert "directions   minimize, minimize" in two.stdout and "pareto front" in two.stdout


def test_study_metadata_is_stored(made: UserProject) -> None:
    import optuna

    with made.study() as study:
        run = study.user_attrs["hparam_search.run"]
    assert run["command"].startswith("python ") and run["script"] == str(made.script)
    assert run["python"] == sys.version.split()[0]
    assert run["versions"]["optuna"] == optuna.__version__
    assert yaml.safe_load(run["config"])["n_trials"] == 12
    # The script and config were never committed: the run was made from a changed tree.
    assert run["git"] == {"commit": _head(made.root), "dirty": True}
    assert run["host"]


def _head(repo: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                          text=True, check=True).stdout.strip()


def test_best_writes_a_config_train_can_run(made: UserProject, tmp_path: Path) -> None:
    out = tmp_path / "best.yaml"
    result = cli("best", "exp_t", "--yaml", str(out), cwd=made.root)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(out.read_text())
    with made.study() as study:
        best = study.best_trial
    assert config["x"] == best.params["x"] and config["y"] == best.params["y"]
    assert config["experiment_name"] == "exp" and "sweep_parameters" not in config
    runner = made.write_script(name="single.py", body=f"""
        import yaml
        from script import train
        print(train(yaml.safe_load(open({str(out)!r}))))
    """)
    single = made.run(script=runner)
    assert single.returncode == 0, single.stderr
    assert float(single.stdout.strip().splitlines()[-1]) == pytest.approx(best.value)


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl", "parquet"])
def test_export_round_trips_cell_by_cell(made: UserProject, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"trials.{fmt}"
    result = cli("export", "exp_t", "--format", fmt, "-o", str(out), cwd=made.root)
    assert result.returncode == 0, result.stderr
    frame = {"csv": pd.read_csv, "json": pd.read_json, "parquet": pd.read_parquet,
             "jsonl": lambda p: pd.read_json(p, lines=True)}[fmt](out)
    trials = made.trials()
    assert len(frame) == len(trials)
    for t in trials:
        row = frame[frame["number"] == t.number].iloc[0]
        assert row["state"] == t.state.name
        if t.value is None:
            assert pd.isna(row["value"])
        else:
            assert row["value"] == pytest.approx(t.value)
        for name in ("x", "y"):
            if name in t.params:
                assert row[name] == pytest.approx(t.params[name])
        owner = t.system_attrs["hparam_search:owner"]
        assert row["worker"] == owner["rank"]
        error = t.user_attrs.get("error") or t.system_attrs.get("fail_reason")
        assert (pd.isna(row["error"]) if error is None else row["error"] == error)
        assert row["log_file"] == t.user_attrs["log_file"]
        if t.datetime_complete:
            expected = (t.datetime_complete - t.datetime_start).total_seconds()
            assert row["duration_s"] == pytest.approx(expected)


def test_export_of_two_objectives_names_the_metric_columns(made: UserProject,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "two.csv"
    assert cli("export", "exp_two", "--format", "csv", "-o", str(out), cwd=made.root
               ).returncode == 0
    frame = pd.read_csv(out)
    trials = {t.number: t for t in made.trials("exp_two")}
    for _, row in frame.iterrows():
        t = trials[row["number"]]
        if t.state.name == "COMPLETE":
            assert [row["loss"], row["size"]] == pytest.approx(t.values)


def test_plot_writes_pngs_and_a_report(made: UserProject, tmp_path: Path) -> None:
    for study, expected in (("exp_t", {"optimization_history", "param_importances", "slice_x",
                                       "slice_y", "parallel_coordinate", "contour"}),
                            ("exp_two", {"pareto_front", "optimization_history"})):
        out = tmp_path / study
        result = cli("plot", study, "-o", str(out), cwd=made.root)
        assert result.returncode == 0, result.stderr
        pngs = {p.stem: p for p in out.glob("*.png")}
        assert expected <= set(pngs)
        for png in pngs.values():
            with Image.open(png) as image:
                image.load()
                assert image.width >= 300 and image.height >= 200
        html = (out / "report.html").read_text()
        assert html.count("<script") >= 1 and "plotly" in html.lower()
        for name in pngs:
            assert f'id="plot-{name}"' in html


def test_trial_logs_hold_each_trials_output(made: UserProject) -> None:
    for t in made.trials():
        if t.state.name == "FAIL":  # killed with SIGKILL after printing
            assert "training x=" in Path(t.user_attrs["log_file"]).read_text()
            continue
        log = Path(t.user_attrs["log_file"])
        first = t.system_attrs.get("failed_trial", t.number)  # a retry shares the folder
        folder = made.root / "optuna_studies" / "exp_t" / "trials" / str(first)
        assert Path(t.user_attrs["trial_dir"]) == folder
        assert log == folder / f"{t.number}.log"
        text = log.read_text()
        assert f"training x={t.params['x']:.4f}" in text and "a warning line" in text
        assert text.count("training x=") == 1, text  # its own output only


def test_errors_are_one_line(made: UserProject, tmp_path: Path) -> None:
    result = cli("show", "nope", cwd=made.root)
    assert result.returncode == 1
    assert result.stderr == "error: no study 'nope'. Studies in optuna_studies/: exp_t, exp_two.\n"
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'empty.db'}")
    optuna.create_study(study_name="empty", storage=storage)
    storage.engine.dispose()
    result = cli("export", str(tmp_path / "empty.db"), "--format", "csv", "-o", "x.csv",
                 cwd=tmp_path)
    assert result.stderr == "error: study 'empty' has no trials yet.\n"
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "plotly.py").write_text("raise ImportError('no plotly here')\n")
    result = cli("plot", "exp_t", "-o", str(tmp_path / "p"), cwd=made.root,
                 env={"PYTHONPATH": str(shadow)})
    assert result.returncode == 1
    assert result.stderr == ("error: plots need matplotlib and plotly (plotly is missing). "
                             "pip install 'hparam-search[plot]'\n")
    assert "Traceback" not in result.stderr


def test_every_subcommand_has_help(made: UserProject) -> None:
    for command in ("ls", "show", "best", "export", "plot", "dashboard"):
        result = cli(command, "--help", cwd=made.root)
        assert result.returncode == 0 and "usage: hparam-search " + command in result.stdout


def test_plain_progress_lines_when_not_a_terminal(project: UserProject) -> None:
    project.write_script(body=SCRIPT)
    project.write_config(n_jobs=2, n_trials=6, sleep=0.3, progress_interval=0.2,
                         sweep_parameters={"x": {"type": "float", "low": -3.0, "high": 3.0},
                                           "y": {"type": "int", "low": 0, "high": 1}})
    result = project.run()
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stdout.splitlines() if line.startswith("progress: ")]
    assert progress and "/6 done" in progress[-1] and "trials/min" in progress[-1]
    assert "\x1b[" not in result.stdout  # no control characters in a log file
    assert any(line.startswith("[trial 0 w") and "training x=" in line
               for line in result.stdout.splitlines())


def test_live_progress_on_a_terminal(project: UserProject) -> None:
    project.write_script(body=SCRIPT)
    project.write_config(n_jobs=2, n_trials=6, sleep=0.3,
                         sweep_parameters={"x": {"type": "float", "low": -3.0, "high": 3.0},
                                           "y": {"type": "int", "low": 0, "high": 1}})
    pid, fd = pty.fork()
    if pid == 0:  # the child: run the user's script on the terminal
        os.chdir(project.root)
        env = project.env({"TERM": "xterm", "COLUMNS": "160"})
        os.execve(sys.executable, [sys.executable, str(project.script)], env)
    chunks = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    _, status = os.waitpid(pid, 0)
    out = b"".join(chunks).decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, out
    assert "\x1b[" in out  # the live display redraws in place
    assert "/6 done" in out and "running" in out and "trials/min" in out
    assert "Search finished" in out and "[6/6] trial" in out
