"""No lost work: an interrupted trial is retried with the same parameters in the same folder,
so train resumes from its checkpoint; processes a trial started go with it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import optuna
import pytest

from tests.conftest import (UserProject, kill_group, open_study, pids_alive, read_only_folder,
                            wait_for, worker_pids)

# A 10-epoch train that checkpoints to trial.dir every epoch and records each attempt. It
# hangs in epoch `hang_at` of the first attempt of trial 0 (writing `ready` with its pid), so a
# test can interrupt it there; with `hang_every`, every attempt of the enqueued configuration
# x=0.123 kills its own worker.
SCRIPT = '''
import json, os, signal, subprocess, sys, time
from hparam_search import hparam_search, current_trial, report, save_artifact, stopping


@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    trial = current_trial()
    ckpt = trial.dir / "last.json"
    saved = json.loads(ckpt.read_text()) if ckpt.exists() else {"epoch": -1, "loss": None}
    start = saved["epoch"] + 1
    with open(config["record"], "a") as f:
        f.write(json.dumps({"number": trial.number, "attempt": trial.attempt,
                            "retry_of": trial.retry_of, "first_epoch": start,
                            "params": trial.params, "dir": str(trial.dir),
                            "pid": os.getpid()}) + "\\n")
    if config.get("doomed") and abs(trial.params["x"] - 0.123) < 1e-9:
        os.kill(os.getpid(), signal.SIGKILL)
    if config.get("raise") and abs(trial.params["x"] - 0.123) < 1e-9 and trial.attempt == 1:
        raise {"MemoryError": MemoryError, "ValueError": ValueError}[config["raise"]]("boom")
    if config.get("child"):
        child = subprocess.Popen(["sleep", "600"])
        (trial.dir / "child.pid").write_text(str(child.pid))
        time.sleep(600)
    loss = saved["loss"]  # all epochs may be done already: killed right after the last
    try:
        for epoch in range(start, config["epochs"]):
            if epoch == config.get("hang_at") and trial.number == 0 and trial.attempt == 1:
                open(config["ready"], "w").write(str(os.getpid()))
                time.sleep(600)
            time.sleep(config.get("epoch_s", 0))
            loss = (trial.params["x"] - 1) ** 2 + 1.0 / (epoch + 1)
            ckpt.write_text(json.dumps({"epoch": epoch, "loss": loss}))
            report(loss, epoch)
        if config.get("artifact"):
            out = trial.dir / "model.txt"
            out.write_text(f"weights of trial {trial.number}")
            save_artifact(out)
    finally:
        if stopping():
            (trial.dir / "saved_on_stop").write_text("yes")
    return loss


if __name__ == "__main__":
    train()
'''


def setup(project: UserProject, **config) -> Path:
    record = project.root / "attempts.jsonl"
    project.write_script(body=SCRIPT)
    base = {"experiment_name": "exp", "tag": "t", "n_jobs": 1, "n_trials": 3, "epochs": 10,
            "record": str(record), "ready": str(project.root / "ready"), "fail_fast": 0,
            "n_startup_trials": 3,
            "sweep_parameters": {"x": {"type": "float", "low": -2.0, "high": 2.0}}}
    base.update(config)
    project.write_config(base)
    return record


def attempts(record: Path) -> list[dict]:
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() \
        else []


def ready_pid(project: UserProject) -> int:
    path = project.root / "ready"
    return int(wait_for(lambda: path.exists() and path.read_text().strip(), timeout=60))


def assert_retried_from_checkpoint(project: UserProject, record: Path, n_trials: int = 3
                                   ) -> None:
    """Trial 0 was cut short in epoch 5; its retry has its params and folder, resumes at epoch
    5 or later and completes; the study holds exactly n_trials finished trials."""
    seen = attempts(record)
    first = next(a for a in seen if a["number"] == 0)
    retry = next(a for a in seen if a["retry_of"] == 0)
    assert retry["attempt"] == 2 and retry["number"] != 0
    assert retry["params"] == first["params"] and retry["dir"] == first["dir"]
    assert retry["first_epoch"] >= 5
    trials = {t.number: t for t in project.trials()}
    assert trials[0].state.name == "FAIL"
    again = trials[retry["number"]]
    assert again.state.name == "COMPLETE"
    assert again.params == trials[0].params and again.distributions == trials[0].distributions
    # Optuna's own links, both ways.
    cb = optuna.storages.RetryHeartbeatStaleTrialCallback
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        assert cb.retried_trial_number(again) == 0
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        assert cb.retry_history(again) == [0]
    assert again.user_attrs["trial_dir"] == trials[0].user_attrs["trial_dir"] == first["dir"]
    # One learning curve: the interrupted attempt's values carried over, then its own.
    assert set(trials[0].intermediate_values) <= set(again.intermediate_values)
    assert sorted(again.intermediate_values) == list(range(10))
    states = project.states()
    assert states["COMPLETE"] + states.get("PRUNED", 0) == n_trials
    assert "RUNNING" not in states and "WAITING" not in states


def test_a_killed_worker_s_trial_is_retried_from_its_checkpoint(project: UserProject) -> None:
    record = setup(project, hang_at=5)
    proc = project.popen()
    os.kill(ready_pid(project), signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "trial 0 marked FAIL and will be retried" in out
    assert "RETRY of trial 0 (attempt 2/3" in out
    assert_retried_from_checkpoint(project, record)
    cli = subprocess.run([sys.executable, "-m", "hparam_search.cli", "trial", "exp_t", "0"],
                         cwd=project.root, capture_output=True, text=True, timeout=60,
                         env=project.env())
    retry = next(a for a in attempts(record) if a["retry_of"] == 0)["number"]
    assert f"attempts     0 -> {retry} (this is attempt 1; retried by trial {retry})" in cli.stdout
    shown = subprocess.run([sys.executable, "-m", "hparam_search.cli", "show", "exp_t"],
                           cwd=project.root, capture_output=True, text=True, timeout=60,
                           env=project.env()).stdout
    assert f"retries      1 interrupted configuration re-run: 0 -> {retry}" in shown


@pytest.mark.parametrize("how", ["sigkill_launcher", "ctrl_c", "sigterm_with_grace"])
def test_an_interrupted_search_retries_on_the_next_run(project: UserProject, how: str) -> None:
    record = setup(project, hang_at=5, **({"stop_grace": 5} if how == "sigterm_with_grace"
                                          else {}))
    proc = project.popen()
    worker = ready_pid(project)
    if how == "sigkill_launcher":
        os.kill(proc.pid, signal.SIGKILL)
    elif how == "ctrl_c":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=60)
    wait_for(lambda: not pids_alive([worker]), timeout=15)
    first = next(a for a in attempts(record) if a["number"] == 0)
    if how == "sigterm_with_grace":  # train's finally ran: stopping() was True
        assert (Path(first["dir"]) / "saved_on_stop").read_text() == "yes"
    result = project.run()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "RETRY of trial 0 (attempt 2/3" in result.stdout
    assert_retried_from_checkpoint(project, record)


def test_a_configuration_that_dies_every_time_is_given_up(project: UserProject) -> None:
    record = setup(project, n_trials=4, retries=2, doomed=True, enqueue=[{"x": 0.123}])
    result = project.run(timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    doomed = [t for t in project.trials() if abs(t.params["x"] - 0.123) < 1e-9]
    assert [t.state.name for t in doomed] == ["FAIL"] * 3
    assert [len(t.system_attrs.get("retry_history", [])) + 1 for t in doomed] == [1, 2, 3]
    assert [a["attempt"] for a in attempts(record) if abs(a["params"]["x"] - 0.123) < 1e-9] == \
        [1, 2, 3]
    assert project.states() == {"FAIL": 3, "COMPLETE": 4}


def test_retries_zero_turns_them_off(project: UserProject) -> None:
    setup(project, n_trials=3, retries=0, doomed=True, enqueue=[{"x": 0.123}])
    result = project.run(timeout=180)
    assert result.returncode == 0
    assert "will be retried" not in result.stdout and "RETRY" not in result.stdout
    assert project.states() == {"FAIL": 1, "COMPLETE": 3}


def test_exceptions_and_pruner_stops_are_not_retried_unless_listed(project: UserProject) -> None:
    setup(project, n_trials=4, enqueue=[{"x": 0.123}],
          pruner={"type": "threshold", "upper": 0.5}, **{"raise": "ValueError"})
    assert project.run().returncode == 0
    trials = project.trials()
    assert not any("retry_history" in t.system_attrs for t in trials)
    assert "FAIL" not in project.states()
    assert any(t.state.name == "PRUNED" and "error" in t.user_attrs for t in trials)

    setup(project, n_trials=3, tag="mem", enqueue=[{"x": 0.123}],
          retry_exceptions=["MemoryError"], **{"raise": "MemoryError"})
    result = project.run()
    assert result.returncode == 0, result.stdout + result.stderr
    trials = project.trials("exp_mem")
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(failed) == 1
    assert failed[0].user_attrs["error"].startswith("MemoryError: boom")
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == failed[0].number)
    assert retry.state.name == "COMPLETE" and retry.params == failed[0].params
    assert project.states("exp_mem") == {"FAIL": 1, "COMPLETE": 3}


def test_a_report_at_a_carried_over_step_replaces_it(project: UserProject) -> None:
    record = setup(project, hang_at=5, n_trials=1, epochs=8)
    project.write_script(body=SCRIPT.replace(
        'start = saved["epoch"] + 1', 'start = 3 if ckpt.exists() else 0'))  # the retry redoes epochs 3 and 4
    proc = project.popen()
    os.kill(ready_pid(project), signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "Warning" not in out
    retry = next(t for t in project.trials() if t.state.name == "COMPLETE")
    assert sorted(retry.intermediate_values) == list(range(8))
    assert attempts(record)[-1]["first_epoch"] == 3


# -- several launchers, random kills ---------------------------------------------------------
def test_random_worker_kills_under_two_launchers_retry_each_interruption_once(
        project: UserProject) -> None:
    setup(project, n_trials=40, n_jobs=3, epochs=2, epoch_s=0.15, retries=5)
    launchers = [project.popen(), project.popen()]
    killed = 0
    deadline = time.monotonic() + 60
    while killed < 6 and time.monotonic() < deadline:
        workers = [w for proc in launchers for w in worker_pids(proc.pid)]
        if workers and project.live_count() > 4:
            with contextlib.suppress(ProcessLookupError):  # a worker that just left
                os.kill(workers[killed % len(workers)], signal.SIGKILL)
                killed += 1
        time.sleep(0.4)
    for proc in launchers:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
    assert killed >= 3
    trials = project.trials()
    states = project.states()
    assert states["COMPLETE"] == 40 and "RUNNING" not in states and "WAITING" not in states
    retried = [t.system_attrs["retry_history"][-1] for t in trials
               if t.system_attrs.get("retry_history")]
    assert len(retried) == len(set(retried))  # never twice for one interruption
    failed = {t.number for t in trials if t.state.name == "FAIL"}
    assert set(retried) == failed  # every interruption retried (attempts were left)


# -- processes a trial started ---------------------------------------------------------------
def _child_of_running_trial(project: UserProject, **config) -> tuple[subprocess.Popen, int, int]:
    setup(project, n_trials=2, child=True, retries=0, **config)
    proc = project.popen()
    child_file = project.root / "optuna_studies" / "exp_t" / "trials" / "0" / "child.pid"
    child = int(wait_for(lambda: child_file.exists() and child_file.read_text(), timeout=60))
    worker = wait_for(lambda: worker_pids(proc.pid), timeout=30)[0]
    return proc, child, worker


@pytest.mark.parametrize("how", ["ctrl_c", "sigterm", "sigkill_launcher", "sigkill_worker",
                                 "trial_timeout"])
def test_processes_a_trial_started_are_ended_with_it(project: UserProject, how: str) -> None:
    extra = {"trial_timeout": 3} if how == "trial_timeout" else {}
    proc, child, worker = _child_of_running_trial(project, **extra)
    assert pids_alive([child]) == [child]
    if how == "ctrl_c":
        os.killpg(proc.pid, signal.SIGINT)
    elif how == "sigterm":
        os.kill(proc.pid, signal.SIGTERM)
    elif how == "sigkill_launcher":
        os.kill(proc.pid, signal.SIGKILL)
    elif how == "sigkill_worker":
        os.kill(worker, signal.SIGKILL)
    wait_for(lambda: not pids_alive([child]), timeout=10 + (3 if extra else 0))
    kill_group(proc)
    for pid in worker_pids(proc.pid):
        with contextlib.suppress(ProcessLookupError):  # it may have left on its own
            os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=30)


# -- artifacts -------------------------------------------------------------------------------
def test_artifacts_reach_the_dashboard_and_best_copies_them(project: UserProject,
                                                            tmp_path: Path) -> None:
    setup(project, n_trials=3, n_jobs=2, epochs=2, artifact=True)
    assert project.run().returncode == 0
    with project.study() as study:
        best = study.best_trial
        study_id = study._study_id
    out = tmp_path / "best"
    result = subprocess.run([sys.executable, "-m", "hparam_search.cli", "best", "exp_t",
                             "--yaml", str(out / "best.yaml"), "--artifacts", str(out)],
                            cwd=project.root, env=project.env(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert (out / "model.txt").read_text() == f"weights of trial {best.number}"

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "hparam_search.cli", "dashboard", "exp_t",
                               "--port", str(port)], cwd=project.root, env=project.env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        server.stdout.readline()

        def fetch(path: str) -> bytes | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                    return r.read()
            except OSError:
                return None

        data = json.loads(wait_for(lambda: fetch(f"/api/studies/{study_id}?after=0"),
                                   timeout=60, interval=0.2))
        trial = next(t for t in data["trials"] if t["number"] == best.number)
        assert [a["filename"] for a in trial["artifacts"]] == ["model.txt"]
        artifact = trial["artifacts"][0]["artifact_id"]
        body = fetch(f"/artifacts/{study_id}/{trial['trial_id']}/{artifact}")
        assert body == f"weights of trial {best.number}".encode()
    finally:
        server.terminate()
        server.communicate(timeout=30)


def test_save_artifact_of_a_missing_file_prunes_that_trial(project: UserProject) -> None:
    setup(project, n_trials=2, epochs=1, artifact=True)
    project.write_script(body=SCRIPT.replace("save_artifact(out)",
                                             "save_artifact(trial.dir / 'nope.txt')"))
    result = project.run()
    assert result.returncode == 0
    trials = project.trials()
    assert all(t.state.name == "PRUNED" for t in trials)
    assert trials[0].user_attrs["error"] == \
        f"FileNotFoundError: save_artifact: no file {trials[0].user_attrs['trial_dir']}/nope.txt"


# -- PostgreSQL: a lost launcher's trials are retried by the next one ------------------------
def test_postgres_launcher_killed_with_its_group_is_retried_by_the_next(
        project: UserProject, postgres_url: str) -> None:
    record = setup(project, hang_at=5, storage=postgres_url, tag="pgretry")
    env = {"HPARAM_SEARCH_HEARTBEAT_GRACE": "3"}
    proc = project.popen(env=env)
    worker = ready_pid(project)
    # The launcher's group stopped first: the worker dies before it could see the launcher
    # die and give its trial back, so the next launcher finds it by its heartbeat.
    kill_group(proc, signal.SIGSTOP)
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: not pids_alive([worker]), timeout=10)
    kill_group(proc)
    proc.communicate(timeout=30)
    result = project.run(env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "RETRY of trial 0 (attempt 2/3" in result.stdout
    seen = attempts(record)
    retry = next(a for a in seen if a["retry_of"] == 0)
    assert retry["dir"] == next(a for a in seen if a["number"] == 0)["dir"]
    assert retry["first_epoch"] >= 5
    from hparam_search.storage import resolve_storage

    with open_study(resolve_storage(postgres_url, project.root), "exp_pgretry") as study:
        states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 3 and states.count("FAIL") == 1


def test_postgres_a_lost_host_s_trial_in_the_last_slot_is_retried_by_a_waiting_launcher(
        project: UserProject, postgres_url: str) -> None:
    """The study's last slot is held by a trial of another host that then goes silent: this
    launcher's workers find no room and leave; the launcher, waiting for the slot, fails the
    trial once its heartbeat is stale and retries it, rather than wait forever."""
    from hparam_search.storage import OWNER_ATTR, resolve_storage

    record = setup(project, storage=postgres_url, tag="pglost", n_trials=1, epochs=2)
    env = {"HPARAM_SEARCH_HEARTBEAT_GRACE": "3"}
    assert project.run(env=env).returncode == 0
    url = resolve_storage(postgres_url, project.root)
    with open_study(url, "exp_pglost") as study:
        lost = study.ask()
        lost.suggest_float("x", -2.0, 2.0)
        study._storage.set_trial_system_attr(lost._trial_id, OWNER_ATTR, {
            "host": "another-host", "pid": 4242, "started": None, "rank": 0})
        # A beat now: fresh when the workers look, stale 3 s later.
        with warnings.catch_warnings():  # heartbeat_interval is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(url, heartbeat_interval=1)
        try:
            storage.record_heartbeat(lost._trial_id)
        finally:
            storage.engine.dispose()
    result = project.run("--set", "n_trials=2", env=env, timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"RETRY of trial {lost.number}" in result.stdout
    retry = next(a for a in attempts(record) if a["retry_of"] == lost.number)
    assert retry["params"] == {"x": lost.params["x"]}
    with open_study(url, "exp_pglost") as study:
        states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE", "COMPLETE", "FAIL"]


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("setting, expected", [
    ({"retries": -1}, "retries: must be an integer >= 0 (0 turns retries off) (got -1)."),
    ({"retries": 1.5}, "retries: must be an integer >= 0 (0 turns retries off) (got 1.5)."),
    ({"retry_exceptions": "MemoryError"},
     "retry_exceptions: must be a list of exception class names (got 'MemoryError'). Write "
     "e.g. 'retry_exceptions: [OutOfMemoryError, MemoryError]'."),
    ({"retry_exceptions": ["Out of memory"]},
     "retry_exceptions: must be a list of exception class names (got ['Out of memory']). Write "
     "e.g. 'retry_exceptions: [OutOfMemoryError, MemoryError]'."),
    ({"stop_grace": -5},
     "stop_grace: must be a number of seconds >= 0 (got -5). Write e.g. 'stop_grace: 30' to "
     "give train 30 s to save a checkpoint."),
])
def test_bad_settings_are_one_line(project: UserProject, setting: dict, expected: str) -> None:
    setup(project, **setting)
    result = project.run()
    assert result.returncode == 2
    assert re.fullmatch(r"error: config/config\.yaml:\d+: " + re.escape(expected) + "\n",
                        result.stderr), result.stderr
    assert not project.db().exists()


def test_trial_dir_missing_parent_or_read_only(project: UserProject, tmp_path: Path) -> None:
    setup(project, trial_dir=str(tmp_path / "no" / "such" / "dir"))
    result = project.run()
    assert result.returncode == 2
    assert result.stderr == (
        f"error: config/config.yaml:15: trial_dir: its parent folder {tmp_path / 'no' / 'such'} "
        f"does not exist (got '{tmp_path / 'no' / 'such' / 'dir'}'). Point trial_dir at a "
        "writable folder (on a filesystem every machine of the study shares, when several run "
        "it).\n")
    assert not project.db().exists()
    dry = project.run("--dry-run")  # checked in a dry run too
    assert dry.returncode == 2 and dry.stderr == result.stderr
    with read_only_folder(tmp_path / "ro") as ro:
        setup(project, trial_dir=str(ro / "trials"))
        result = project.run()
        assert result.returncode == 2
        assert f"trial_dir: {ro} is not writable" in result.stderr


def test_trial_dir_moves_the_folders(project: UserProject, tmp_path: Path) -> None:
    record = setup(project, n_trials=2, epochs=1, trial_dir="../shared_runs")
    assert project.run().returncode == 0
    root = (project.root / ".." / "shared_runs").resolve()
    logs = {t.number: t.user_attrs["log_file"] for t in project.trials()}
    for a in attempts(record):
        assert a["dir"] == str(root / "exp_t" / "trials" / str(a["number"]))
        assert (Path(a["dir"]) / "last.json").exists()
        # Its log goes there too (made at its first output; these trials print nothing).
        assert logs[a["number"]] == str(Path(a["dir"]) / f"{a['number']}.log")
    shown = subprocess.run([sys.executable, "-m", "hparam_search.cli", "trial", "exp_t", "0"],
                           cwd=project.root, env=project.env(), capture_output=True, text=True,
                           timeout=120)
    assert f"log file     {logs[0]} (none: it printed nothing)\n" in shown.stdout, shown.stderr


def test_a_train_that_catches_the_stop_and_returns_is_not_counted(project: UserProject) -> None:
    project.write_script(body='''
        import time
        from hparam_search import hparam_search, current_trial, stopping

        @hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
        def train(config):
            if current_trial().attempt == 1 and current_trial().number == 0:
                (current_trial().dir / "started").write_text("yes")
                try:
                    time.sleep(600)
                except BaseException:  # swallows the stop and returns a partial result
                    print("saving on stop:", stopping(), flush=True)
                    return 0.0
            return config["x"] ** 2

        if __name__ == "__main__":
            train()
    ''')
    project.write_config(n_jobs=1, n_trials=2, stop_grace=5)
    proc = project.popen()
    started = project.root / "optuna_studies" / "exp_t" / "trials" / "0" / "started"
    wait_for(lambda: started.exists(), timeout=60)
    os.kill(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, out
    assert "saving on stop: True" in out  # shown on the console while the worker stops
    first = project.trials()[0]
    assert first.state.name == "FAIL" and first.value is None
    result = project.run()
    assert result.returncode == 0, result.stdout + result.stderr
    trials = project.trials()
    assert trials[0].state.name == "FAIL"
    assert any(t.system_attrs.get("failed_trial") == 0 and t.state.name == "COMPLETE"
               for t in trials)
    assert project.states() == {"FAIL": 1, "COMPLETE": 2}
