"""Trials in MLflow and TensorBoard, read back with their own readers: one run per trial with
its parameters, reported steps, final values, tags and end status; a tracking store that is
down never stops a search."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import FIRST_TO_CLAIM, UserProject

mlflow = pytest.importorskip("mlflow")
# MLflow's own store code (read back here) trips SQLAlchemy 2.1's deprecations.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SCRIPT = FIRST_TO_CLAIM + '''
import os, signal, time
from hparam_search import hparam_search, report, current_trial


@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    x = config["x"]
    if x > 1.5:
        raise ValueError("x too large")
    if x == config.get("hang_x"):  # stopped by trial_timeout
        time.sleep(600)
    for step in range(3):
        report((x - 1) ** 2 + 1.0 / (step + 1), step)
    marker = config.get("die_marker")
    if marker and current_trial().attempt == 1 and first_to_claim(marker):
        os.kill(os.getpid(), signal.SIGKILL)
    if config.get("break_store") and current_trial().number == 2:
        with open(config["break_store"], "wb") as f:  # the tracking store stops working
            f.write(b"not a database any more" * 100)
    time.sleep(config.get("sleep", 0))
    return {"loss": (x - 1) ** 2, "acc": 1 - abs(x) / 2}


if __name__ == "__main__":
    train()
'''


def make(project: UserProject, **config) -> None:
    project.write_script(body=SCRIPT)
    base = {"experiment_name": "exp", "tag": "t", "n_jobs": 2, "n_trials": 10, "fail_fast": 0,
            "metric": "loss", "model": {"hidden": 8}, "n_startup_trials": 10,
            "pruner": {"type": "threshold", "upper": 3.0},
            "enqueue": [{"x": 1.8}, {"x": -1.9}, {"x": 1.0}, {"x": 0.5}],
            "tracking": {"mlflow": {}},
            "sweep_parameters": {"x": {"type": "float", "low": -2.0, "high": 2.0}}}
    base.update(config)
    project.write_config(base)


def mlflow_runs(project: UserProject, experiment: str = "exp_t") -> tuple[object, list]:
    client = mlflow.MlflowClient(f"sqlite:///{project.root / 'optuna_studies' / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    return client, client.search_runs([found.experiment_id], max_results=1000)


def test_every_trial_is_a_nested_mlflow_run(project: UserProject) -> None:
    make(project, die_marker=str(project.root / "died"), hang_x=0.25, trial_timeout=6,
         enqueue=[{"x": 1.8}, {"x": -1.9}, {"x": 1.0}, {"x": 0.5}, {"x": 0.25}])
    result = project.run(timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in result.stdout + result.stderr
    client, runs = mlflow_runs(project)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = {int(r.data.tags["trial"]): r for r in runs if r not in parents}
    trials = {t.number: t for t in project.trials()}
    assert set(children) == set(trials)
    expected_status = {"COMPLETE": {"FINISHED"}, "PRUNED": {"KILLED", "FAILED"},
                       "FAIL": {"KILLED"}}
    for number, trial in trials.items():
        run = children[number]
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        assert tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.info.status in expected_status[trial.state.name]
        assert tags["state"] == trial.state.name
        assert tags["worker"] in ("0", "1") and tags["host"]
        assert tags["storage"] == f"sqlite:///{project.db().resolve()}"
        assert params["x"] == str(trial.params["x"]) and params["model.hidden"] == "8"
        assert params["experiment_name"] == "exp"
        history = client.get_metric_history(run.info.run_id, "loss")
        for step, value in trial.intermediate_values.items():  # every report, at its step
            assert any(m.step == step and m.value == pytest.approx(value) for m in history)
        if trial.state.name == "COMPLETE":
            assert metrics["loss"] == pytest.approx(trial.value)
            assert metrics["acc"] == pytest.approx(trial.user_attrs["metric.acc"])
        if "error" in trial.user_attrs:
            assert run.info.status == "FAILED" and "x too large" in tags["reason"]
        if trial.user_attrs.get("prune_reason", "").startswith("stopped by"):
            assert run.info.status == "KILLED"
    # The trial stopped by trial_timeout: the launcher ended its run KILLED, with the reason.
    timed_out = next(t for t in trials.values() if t.params["x"] == 0.25)
    assert timed_out.state.name == "PRUNED"
    run = children[timed_out.number]
    assert run.info.status == "KILLED" and run.data.tags["state"] == "PRUNED"
    assert run.data.tags["reason"] == "timeout: still running after 6s"
    # The trial whose worker was killed: its run was ended KILLED; its retry says so.
    killed = next(t for t in trials.values() if t.state.name == "FAIL")
    assert children[killed.number].info.status == "KILLED"
    retry = next(r for r in children.values() if r.data.tags.get("retry_of") ==
                 str(killed.number))
    assert retry.data.tags["attempt"] == "2"


def test_two_launchers_share_one_parent_run(project: UserProject) -> None:
    make(project, n_trials=12, enqueue=[], sleep=0.1)
    first, second = project.popen(), project.popen()
    for proc in (first, second):
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
    _, runs = mlflow_runs(project)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    children = [r for r in runs if r not in parents]
    assert sorted(int(r.data.tags["trial"]) for r in children) == list(range(12))
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}


def test_a_broken_tracking_store_never_stops_the_search(project: UserProject) -> None:
    store = project.root / "optuna_studies" / "mlflow.db"
    make(project, n_trials=8, enqueue=[{"x": 0.1}, {"x": 0.2}, {"x": 0.3}],
         break_store=str(store), sleep=0.2)
    result = project.run(timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in project.trials()) == 8
    warnings = [line for line in (result.stdout + result.stderr).splitlines()
                if "warning: MLflow tracking failed" in line]
    assert 1 <= len(warnings) <= 3  # once per process that met it (workers, launcher)
    assert "Traceback" not in result.stdout + result.stderr


def test_an_unreachable_tracking_server_is_one_warning_line(project: UserProject) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    make(project, n_trials=3, enqueue=[],
         tracking={"mlflow": {"tracking_uri": f"http://127.0.0.1:{port}"}})
    result = project.run(timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("warning: MLflow")]
    assert len(lines) == 1 and f"http://127.0.0.1:{port} is unreachable" in lines[0]
    assert lines[0].endswith("the search runs without it")
    assert sum(project.states().get(s, 0) for s in ("COMPLETE", "PRUNED")) == 3


def test_tensorboard_runs_scalars_and_hparams(project: UserProject) -> None:
    pytest.importorskip("tensorboardX")
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    make(project, n_trials=5, tracking={"tensorboard": {}}, enqueue=[{"x": 1.9}])
    result = project.run(timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    folder = project.root / "optuna_studies" / "exp_t" / "tensorboard"
    trials = {t.number: t for t in project.trials()}
    assert sorted(p.name for p in folder.iterdir()) == [f"trial-{n}" for n in sorted(trials)]
    for number, trial in trials.items():
        acc = event_accumulator.EventAccumulator(str(folder / f"trial-{number}"))
        acc.Reload()
        scalars = {e.step: e.value for e in acc.Scalars("loss")} if "loss" in \
            acc.Tags()["scalars"] else {}
        assert scalars == pytest.approx(trial.intermediate_values)
        plugins = acc.PluginTagToContent("hparams")
        assert "_hparams_/session_start_info" in plugins
        from tensorboard.plugins.hparams import plugin_data_pb2

        start = plugin_data_pb2.HParamsPluginData.FromString(
            plugins["_hparams_/session_start_info"]).session_start_info
        assert start.hparams["x"].number_value == pytest.approx(trial.params["x"])
        assert start.hparams["state"].string_value == trial.state.name
        if trial.state.name == "COMPLETE":
            assert acc.Scalars("final/loss")[-1].value == pytest.approx(trial.value)


@pytest.mark.parametrize("tracking, expected", [
    ({"mlfow": {}}, "tracking.mlfow: unknown tracking sink. Did you mean 'mlflow'?"),
    ({"mlflow": {"experimnet": "x"}},
     "tracking.mlflow.experimnet: not an option of mlflow tracking. Did you mean "
     "'experiment'?"),
    ({"tensorboard": {"log_dir": 3}},
     "tracking.tensorboard.log_dir: must be a non-empty string (got 3)."),
])
def test_tracking_mistakes(project: UserProject, tracking: dict, expected: str) -> None:
    make(project, tracking=tracking)
    result = project.run()
    assert result.returncode == 2
    assert result.stderr.startswith("error: config/config.yaml:")
    assert result.stderr.rstrip().endswith(expected), result.stderr


def test_a_missing_extra_is_one_line_with_the_pip_command(project: UserProject,
                                                          tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "mlflow"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no mlflow here')\n")
    make(project)
    result = project.run(env={"PYTHONPATH": os.pathsep.join([str(tmp_path / "shadow"),
                                                             project.env()["PYTHONPATH"]])})
    assert result.returncode == 2
    assert result.stderr.endswith(
        "tracking.mlflow: mlflow tracking needs the mlflow package, which is not installed. "
        "pip install 'hparam-search[mlflow]'\n")
    assert not project.db().exists()
