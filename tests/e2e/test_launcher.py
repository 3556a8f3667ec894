"""The real launcher, run as a user runs it: `python script.py` in a subprocess."""

from __future__ import annotations

import contextlib
import json
import math
import socket
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import UserProject


def configs_seen(record_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(record_dir.glob("*.json"))]


def test_exact_trial_count_when_n_trials_is_not_a_multiple_of_n_jobs(project: UserProject) -> None:
    project.write_config(n_jobs=3, n_trials=10)
    result = project.run()
    assert result.returncode == 0, result.stderr
    trials = project.trials()
    assert len(trials) == 10
    assert sorted(t.number for t in trials) == list(range(10))
    assert project.states() == {"COMPLETE": 10}
    assert "Traceback" not in result.stdout + result.stderr


def test_more_workers_than_trials_still_gives_exactly_n_trials(project: UserProject) -> None:
    project.write_config(n_jobs=4, n_trials=2)
    result = project.run()
    assert result.returncode == 0, result.stderr
    assert project.states() == {"COMPLETE": 2}


def test_banner_trial_lines_and_summary(project: UserProject) -> None:
    project.write_config(n_jobs=2, n_trials=4)
    result = project.run()
    out = result.stdout
    db = project.db().resolve()
    assert f"database   {db}" in out
    assert f"optuna-dashboard sqlite:///{db}" in out
    assert "4 to run, 4 in all" in out
    trial_lines = [line for line in out.splitlines() if " trial " in line and "COMPLETE" in line]
    assert len(trial_lines) == 4
    assert all("worker" in line and "x=" in line and "value=" in line for line in trial_lines)
    assert "[4/4]" in out
    assert "Search finished in" in out and "COMPLETE 4" in out
    best = min(project.trials(), key=lambda t: t.value)
    assert f"Best trial {best.number} (minimize)" in out
    assert "Resume or extend:  python" in out


def test_train_receives_fixed_values_sampled_values_and_overrides(project: UserProject) -> None:
    record = project.root / "seen"
    project.write_config(n_jobs=2, n_trials=3, hidden_layers=8, record_dir=str(record))
    result = project.run("--set", "model.first_layer.bias=False", "lr=1e-3")
    assert result.returncode == 0, result.stderr
    seen = configs_seen(record)
    assert len(seen) == 3
    for item in seen:
        config = item["config"]
        assert config["hidden_layers"] == 8
        assert config["model"] == {"first_layer": {"bias": False}}
        assert config["lr"] == 0.001
        assert -5 <= config["x"] <= 5
        assert "sweep_parameters" not in config
        assert config["experiment_name"] == "exp" and config["n_trials"] == 3
    by_number = {item["info"]["number"]: item for item in seen}
    for t in project.trials():
        assert by_number[t.number]["config"]["x"] == t.params["x"]
        info = by_number[t.number]["info"]
        assert info["n_jobs"] == 2 and info["study"] == "exp_t" and info["rank"] in (0, 1)
        assert info["storage"] == f"sqlite:///{project.db().resolve()}"


def test_yaml_file_is_not_rewritten_by_set(project: UserProject) -> None:
    path = project.write_config(n_trials=2)
    before = path.read_bytes()
    assert project.run("--set", "n_trials=3", "tag=other").returncode == 0
    assert path.read_bytes() == before
    assert len(project.trials("exp_other")) == 3


def test_calling_train_with_a_dict_runs_it_once_directly(project: UserProject) -> None:
    script = project.write_script(name="direct.py", body="""
        from script import train
        print("value", train({"x": 3.0}))
    """)
    result = project.run(script=script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "value 4.0"
    assert not project.db().exists()


def test_resume_adds_nothing_when_done_and_extends_with_set(project: UserProject) -> None:
    project.write_config(n_jobs=2, n_trials=5)
    assert project.run().returncode == 0
    again = project.run()
    assert again.returncode == 0
    assert "already has 5 finished trials" in again.stdout and "nothing to do" in again.stdout
    assert len(project.trials()) == 5
    extended = project.run("--set", "n_trials=8")
    assert extended.returncode == 0, extended.stderr
    assert "3 to run, 8 in all (resuming: 5 already finished)" in extended.stdout
    assert project.states() == {"COMPLETE": 8}


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_start_method_set_by_the_user_script(project: UserProject, method: str) -> None:
    project.write_script(body=f"""
        import multiprocessing
        from hparam_search import hparam_search

        @hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
        def train(config):
            return config["x"] ** 2

        if __name__ == "__main__":
            multiprocessing.set_start_method("{method}")
            train()
    """)
    project.write_config(n_jobs=2, n_trials=4)
    result = project.run()
    assert result.returncode == 0, result.stderr
    assert f"2 ({method})" in result.stdout
    assert project.states() == {"COMPLETE": 4}


def test_start_method_from_yaml_and_default_is_forkserver_on_linux(project: UserProject) -> None:
    project.write_config(n_jobs=2, n_trials=2)
    default = "forkserver" if sys.platform.startswith("linux") else "spawn"
    assert f"2 ({default})" in project.run().stdout
    assert "2 (fork)" in project.run("--set", "start_method=fork", "tag=f").stdout
    assert len(project.trials("exp_f")) == 2


def test_paths_are_relative_to_the_script_not_the_working_directory(project: UserProject,
                                                                      tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    project.write_config(n_trials=2)
    result = project.run(cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert project.db().exists()
    assert not (elsewhere / "optuna_studies").exists()
    # --config: a path relative to the working directory, then a name in config/.
    other = project.write_config(name="other.yaml", tag="other", n_trials=1)
    assert project.run("--config", str(other), cwd=elsewhere).returncode == 0
    assert project.run("--config", "other.yaml", "--set", "tag=byname", cwd=elsewhere
                       ).returncode == 0
    assert len(project.trials("exp_other")) == 1 and len(project.trials("exp_byname")) == 1


def test_absolute_config_and_db_paths(project: UserProject, tmp_path: Path) -> None:
    cfg = tmp_path / "abs.yaml"
    cfg.write_text((project.root / "config" / "config.yaml").read_text())
    dbdir = tmp_path / "dbs"
    project.write_script(config_path=str(cfg), save_db_directory=str(dbdir))
    result = project.run("--set", "n_trials=1")
    assert result.returncode == 0, result.stderr
    assert (dbdir / "exp_t.db").exists()


def test_exception_in_train_prunes_the_trial_and_records_it(project: UserProject) -> None:
    project.write_config(n_jobs=2, n_trials=8, mode="raise_negative", fail_fast=0,
                         n_startup_trials=8)
    result = project.run()
    assert result.returncode == 0, result.stderr
    trials = project.trials()
    assert len(trials) == 8
    for t in trials:
        if t.params["x"] < 0:
            assert t.state.name == "PRUNED"
            assert t.user_attrs["error"] == f"ValueError: bad x {t.params['x']}"
            assert "Traceback" in t.user_attrs["traceback"]
            assert "raise ValueError" in t.user_attrs["traceback"]
            assert f"trial {t.number} PRUNED ValueError: bad x" in result.stdout
        else:
            assert t.state.name == "COMPLETE"


def test_nan_return_prunes_with_reason(project: UserProject) -> None:
    project.write_config(n_jobs=1, n_trials=2, mode="nan")
    result = project.run()
    assert result.returncode == 0
    assert [t.state.name for t in project.trials()] == ["PRUNED", "PRUNED"]
    assert all(t.user_attrs["prune_reason"] == "train returned nan" for t in project.trials())
    assert "PRUNED train returned nan" in result.stdout


def test_sys_exit_in_train_prunes_and_goes_on(project: UserProject) -> None:
    project.write_config(n_jobs=1, n_trials=2, mode="exit", fail_fast=0)
    result = project.run()
    assert result.returncode == 0, result.stderr
    assert project.states() == {"PRUNED": 2}
    assert project.trials()[0].user_attrs["error"] == "train called sys.exit(3)"


def test_non_numeric_return_is_a_clear_error(project: UserProject) -> None:
    project.write_config(n_jobs=1, n_trials=3, mode="string")
    result = project.run()
    assert result.returncode == 1
    assert "error: train: train returned str 'not a number', not a number. Return the metric " \
           "to optimise as a float" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert project.trials()[0].state.name == "FAIL"


def test_fail_fast_stops_a_search_whose_every_trial_raises(project: UserProject) -> None:
    project.write_config(n_jobs=2, n_trials=50, mode="raise")
    result = project.run()
    assert result.returncode == 1
    assert "error: the first 5 finished trials all raised an exception" in result.stderr
    assert "raise ValueError(f\"bad x" in result.stderr  # the first failure's traceback
    finished = [t for t in project.trials() if t.state.name in ("COMPLETE", "PRUNED")]
    assert 5 <= len(finished) < 50
    assert "RUNNING" not in project.states()


def test_fail_fast_zero_searches_on(project: UserProject) -> None:
    project.write_config(n_jobs=2, n_trials=7, mode="raise", fail_fast=0)
    result = project.run()
    assert result.returncode == 0
    assert project.states() == {"PRUNED": 7}


def test_direction_mismatch_with_existing_study(project: UserProject) -> None:
    project.write_config(n_trials=2)
    assert project.run().returncode == 0
    before = project.dump()
    result = project.run("--set", "direction=maximize", "n_trials=4")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: direction: the study 'exp_t' already exists with direction minimize (got "
        "'maximize'). Use the same direction, or pick a new tag (--set tag=...) for a new study.")
    assert len(project.trials()) == 2
    assert project.dump() == before


@pytest.mark.parametrize("args, text, message", [
    ((), "experiment_name: exp\ntag: t\nn_trials: 3\nn_jobs: 0\n",
     "error: config/config.yaml:4: n_jobs: must be an integer >= 1 (or -1 for one worker per "
     "CPU core) (got 0)."),
    ((), "experiment_name: exp\ntag: t\nn_trails: 3\n",
     "error: config/config.yaml:3: n_trails: unknown study setting. Did you mean 'n_trials'?"),
    (("--set", "n_trials=abc"), None,
     "error: command line (--set n_trials=abc): n_trials: must be an integer >= 1 (got 'abc')."),
    (("--set", "tag.y=1"), None,
     "error: command line: --set tag.y=1: tag is a str, not a mapping, so it has no key 'y'. Set "
     "tag itself, e.g. --set tag=..."),
])
def test_bad_input_is_one_clear_line_and_leaves_the_study_alone(
        project: UserProject, args: tuple, text: str | None, message: str) -> None:
    assert project.run("--set", "n_trials=2").returncode == 0
    before = project.dump()
    if text:
        project.write_config(text)
    result = project.run(*args, cwd=project.root)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == message
    assert project.dump() == before


def test_debug_env_shows_the_traceback(project: UserProject) -> None:
    project.write_config("experiment_name: exp\ntag: t\nn_trials: 0\n")
    result = project.run(env={"HPARAM_SEARCH_DEBUG": "1"})
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "HparamSearchError" in result.stderr


def test_missing_config_file_names_what_is_there(project: UserProject) -> None:
    project.write_config(name="other.yaml")
    (project.root / "config" / "config.yaml").unlink()
    result = project.run()
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: config/config.yaml: config file not found. A relative config_path is looked up "
        "in config/ beside your script; it holds: other.yaml. Pick one with --config NAME.")


def test_unguarded_train_call_is_explained(project: UserProject) -> None:
    project.write_script(body="""
        from hparam_search import hparam_search

        @hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
        def train(config):
            return 1.0

        train()
    """)
    project.write_config(n_jobs=2, n_trials=1)
    result = project.run(timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        "error: script.py:8: train() is called at the top level of the script, so every worker "
        "process that imports the script would start another search. Call it under "
        "'if __name__ == \"__main__\":'.\n")
    assert not (project.root / "optuna_studies").exists()


def test_seeded_sequential_runs_reproduce_and_parallel_workers_differ(
        project: UserProject) -> None:
    project.write_config(n_jobs=1, n_trials=6, seed=42, n_startup_trials=3)
    assert project.run("--set", "tag=a").returncode == 0
    assert project.run("--set", "tag=b").returncode == 0
    xs_a = [t.params["x"] for t in sorted(project.trials("exp_a"), key=lambda t: t.number)]
    xs_b = [t.params["x"] for t in sorted(project.trials("exp_b"), key=lambda t: t.number)]
    assert xs_a == xs_b
    assert project.run("--set", "tag=p", "n_jobs=2", "n_trials=8", "n_startup_trials=8"
                       ).returncode == 0
    xs = [t.params["x"] for t in project.trials("exp_p")]
    assert len(set(xs)) == len(xs) == 8


def test_trials_record_host_pid_and_rank(project: UserProject) -> None:
    project.write_config(n_jobs=2, n_trials=4)
    assert project.run().returncode == 0
    for t in project.trials():
        owner = t.system_attrs["hparam_search:owner"]
        assert owner["host"] == socket.gethostname()
        assert owner["rank"] in (0, 1) and owner["pid"] > 0


def test_sqlite_is_tuned_for_concurrent_readers(project: UserProject) -> None:
    project.write_config(n_trials=1)
    assert project.run().returncode == 0
    with contextlib.closing(sqlite3.connect(project.db())) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_values_stored_match_what_train_returned(project: UserProject) -> None:
    project.write_config(n_jobs=2, n_trials=4)
    assert project.run().returncode == 0
    for t in project.trials():
        assert math.isclose(t.value, (t.params["x"] - 1.0) ** 2)


FORK_SERVER_SCRIPT = '''
import json, os, signal, sys, threading, time
{prelude}
from hparam_search import hparam_search, current_trial
from hparam_search.launch.fork_server import TRACKER_NAME

TOP_LEVEL_RAN_IN = os.getpid()  # the script's top level, run again by every worker


def signal_masks(pid):
    """SigIgn, SigCgt and SigBlk of a process: sets of signal numbers."""
    with open(f"/proc/{{pid}}/status") as f:
        masks = dict(line.split(":") for line in f if line.startswith(("SigIgn", "SigCgt",
                                                                      "SigBlk")))
    return {{key: sorted(n for n in range(1, 65) if int(value, 16) >> (n - 1) & 1)
             for key, value in masks.items()}}


def fd_targets(pid):
    return {{int(fd): os.readlink(f"/proc/{{pid}}/fd/{{fd}}") for fd in os.listdir(f"/proc/{{pid}}/fd")}}


@hparam_search()
def train(config: dict) -> float:
    server = os.getppid()
    with open(f"/proc/{{server}}/cmdline", "rb") as f:
        cmdline = f.read().split(b"\\0")
    with open(f"/proc/{{server}}/comm") as f:
        name = f.read().strip()
    with open(f"/proc/{{server}}/stat") as f:
        server_parent = int(f.read().rsplit(")", 1)[1].split()[1])
    server_signals = signal_masks(server)
    trackers = []  # multiprocessing's resource tracker: a child of the launcher, not the server
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{{pid}}/stat") as f:
                stat = f.read()
            with open(f"/proc/{{pid}}/cmdline", "rb") as f:
                tracker_cmdline = f.read()
            with open(f"/proc/{{pid}}/comm") as f:
                tracker_name = f.read().strip()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == server_parent and int(pid) != server and (
                b"resource_tracker" in tracker_cmdline or tracker_name == TRACKER_NAME):
            signals = signal_masks(pid)
            deadline = time.monotonic() + 10  # a tracker just forked has yet to reach its loop
            while not {{2, 15}} <= set(signals["SigIgn"]) and time.monotonic() < deadline:
                time.sleep(0.01)
                signals = signal_masks(pid)
            fds = fd_targets(pid)
            own = [target for fd, target in fds.items() if fd > 2]
            trackers.append({{"name": tracker_name, "own_fds": own, "signals": signals,
                              "exec": b"resource_tracker" in tracker_cmdline}})
    with open(os.path.join(config["record_dir"], f"{{current_trial().number}}.json"), "w") as f:
        json.dump({{"cmdline": [a.decode() for a in cmdline if a], "name": name, "server": server,
                   "server_catches_sigterm": signal.SIGTERM in server_signals["SigCgt"],
                   "server_ignores_sigpipe": signal.SIGPIPE in server_signals["SigIgn"],
                   "server_parent": server_parent, "trackers": trackers,
                   "top_level_here": TOP_LEVEL_RAN_IN ==
                   os.getpid(), "threads": {{v: os.environ.get(v) for v in
                   ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}}}, f)
    return config["x"] ** 2


if __name__ == "__main__":
    train()
    print("launcher pid", os.getpid(), "OMP after:", os.environ.get("OMP_NUM_THREADS"))
    # What Python 3.12.10+ and 3.13.3+ do at exit: close the resource tracker's pipe and wait
    # for the tracker, which ends once no process holds the pipe (the fork server must not).
    from multiprocessing import resource_tracker
    resource_tracker._resource_tracker._stop()
    print("tracker stopped")
'''


@pytest.mark.parametrize("prelude, forked", [
    ("", True),
    ("threading.Thread(target=threading.Event().wait, daemon=True).start()", False),
    ("import numpy", False),
    ("from hparam_search import hparam_search\nKEEP = open(os.devnull)", False),
    ("import signal\nsignal.signal(signal.SIGTERM, lambda *a: None)", True),
    ("import signal\nsignal.signal(signal.SIGPIPE, signal.SIG_DFL)", True),
    ("from multiprocessing import resource_tracker\nresource_tracker.ensure_running()", False),
])
@pytest.mark.skipif(not sys.platform.startswith("linux") or sys.version_info >= (3, 14),
                    reason="the launcher forks its fork server on Linux, Python 3.10 to 3.13")
def test_the_fork_server_is_a_fork_of_the_launcher_only_while_that_is_clean(
        project: UserProject, tmp_path: Path, prelude: str, forked: bool) -> None:
    """A launcher that has started no thread and not imported numpy forks its fork server after
    importing Optuna (one interpreter start, one import); otherwise the server is a new
    interpreter, as multiprocessing starts it: also when the script opened a file after
    importing the package, or started multiprocessing's resource tracker (before importing
    it), either of which the server would hold open. Either way each worker runs the
    script's top level itself, under the workers' thread variables; the launcher's own
    variables come back after the search; the server holds neither the script's signal
    handlers nor multiprocessing's resource tracker (a launcher waiting for the tracker at
    exit would wait forever), and it is gone once the launcher has exited."""
    import os
    import signal

    from hparam_search.launch.fork_server import SERVER_NAME, TRACKER_NAME

    record = tmp_path / "record"
    record.mkdir()
    project.write_script(FORK_SERVER_SCRIPT.format(prelude=prelude))
    project.write_config(n_jobs=2, n_trials=4, threads_per_worker=3, record_dir=str(record),
                         isolate_trials=True)  # each trial in a worker forked when it starts
    result = project.run(timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tracker stopped" in result.stdout
    launcher_pid = int(result.stdout.split("launcher pid ")[1].split()[0])
    assert f"OMP after: {os.environ.get('OMP_NUM_THREADS')}" in result.stdout
    seen = configs_seen(record)
    assert len(seen) == 4
    for trial in seen:
        assert trial["server_parent"] == launcher_pid
        assert trial["server_catches_sigterm"] is False
        assert trial["server_ignores_sigpipe"] is True  # as Python starts, whatever the script set
        assert trial["top_level_here"] is True
        assert trial["threads"] == {v: os.environ.get(v, "3") for v in trial["threads"]}
        if forked:
            assert trial["name"] == SERVER_NAME
            assert trial["cmdline"][1:] == [str(project.script)]
            # The tracker too is a fork: beside the standard streams it holds its own pipe
            # only (the server may hold the other end for a moment, passing it to a worker
            # it forks), ignores Ctrl-C, SIGTERM and SIGPIPE, and catches and blocks nothing.
            [tracker] = trial["trackers"]
            assert tracker["name"] == TRACKER_NAME and not tracker["exec"]
            [pipe] = tracker["own_fds"]
            assert pipe.startswith("pipe:"), tracker
            ignored = {signal.SIGINT, signal.SIGTERM, signal.SIGPIPE}
            assert ignored <= set(tracker["signals"]["SigIgn"]), tracker
            # (32 and up: real-time signals, 32 and 33 the C library's own for its threads)
            standard = {key: [n for n in numbers if n < 32]
                        for key, numbers in tracker["signals"].items()}
            assert standard["SigCgt"] == standard["SigBlk"] == [], tracker
        else:
            assert trial["name"] != SERVER_NAME
            assert any("multiprocessing.forkserver" in a for a in trial["cmdline"])
            assert [t["exec"] for t in trial["trackers"]] == [True]
    servers = {trial["server"] for trial in seen}
    assert len(servers) == 1
    server = Path(f"/proc/{servers.pop()}/stat")
    deadline = time.monotonic() + 10
    while server.exists() and server.read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the fork server outlived its launcher"
        time.sleep(0.05)


def test_a_search_run_from_another_module_gets_a_new_interpreter_as_fork_server(
        project: UserProject, tmp_path: Path) -> None:
    """Only a search run from the script itself forks its server from the launcher: a program
    that calls an imported ``train()`` goes on afterwards, and its numpy would otherwise keep
    the workers' thread count."""
    record = tmp_path / "record"
    record.mkdir()
    project.write_script(FORK_SERVER_SCRIPT.format(prelude=""), name="search.py")
    runner = project.write_script("import os, search\nif __name__ == '__main__':\n"
                                  "    search.train()\n    print('launcher pid', os.getpid())\n",
                                  name="runner.py")
    project.write_config(n_jobs=1, n_trials=2, record_dir=str(record))
    result = project.run(script=runner, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    launcher_pid = int(result.stdout.split("launcher pid ")[1].split()[0])
    seen = configs_seen(record)
    assert len(seen) == 2
    for trial in seen:
        assert trial["server_parent"] == launcher_pid
        assert any("multiprocessing.forkserver" in a for a in trial["cmdline"])


LEAKING_SCRIPT = '''
import os, signal, threading
{prelude}
from multiprocessing import shared_memory
from hparam_search import hparam_search


@hparam_search()
def train(config: dict) -> float:
    marker = os.path.join(config["record_dir"], "killed")
    if not os.path.exists(marker):  # the first trial: a segment, then a death that frees nothing
        launcher = int(open(f"/proc/{{os.getppid()}}/stat").read().rsplit(")", 1)[1].split()[1])
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                stat = open(f"/proc/{{pid}}/stat").read()
                forked = open(f"/proc/{{pid}}/comm").read().strip() == "hparam-tracker"
                new = b"resource_tracker" in open(f"/proc/{{pid}}/cmdline", "rb").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == launcher and (forked or new):
                with open(os.path.join(config["record_dir"], "tracker"), "w") as f:
                    f.write("forked" if forked else "new interpreter")
        shared_memory.SharedMemory(name=config["segment"], create=True, size=64)
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return config["x"] ** 2


if __name__ == "__main__":
    train()
'''


@pytest.mark.parametrize("prelude, forked", [
    ("", True),
    ("threading.Thread(target=threading.Event().wait, daemon=True).start()", False),
])
@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_shared_memory_of_a_killed_worker_is_removed_when_the_search_ends(
        project: UserProject, tmp_path: Path, prelude: str, forked: bool) -> None:
    """multiprocessing's resource tracker, forked or not, removes what a killed worker left."""
    import uuid

    segment = f"hs-test-{uuid.uuid4().hex[:12]}"
    record = tmp_path / "record"
    record.mkdir()
    project.write_script(LEAKING_SCRIPT.format(prelude=prelude))
    project.write_config(n_jobs=1, n_trials=2, record_dir=str(record), segment=segment)
    try:
        result = project.run(timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert (record / "killed").exists()
        # The launcher has exited; the tracker leaves once no process holds its pipe.
        deadline = time.monotonic() + 10
        while Path("/dev/shm", segment).exists():
            assert time.monotonic() < deadline, "the killed worker's segment is still there"
            time.sleep(0.05)
        assert "leaked shared_memory" in result.stderr
        assert "relaunching" not in result.stderr  # the tracker that was there all along
        assert (record / "tracker").read_text() == ("forked" if forked else "new interpreter")
    finally:
        Path("/dev/shm", segment).unlink(missing_ok=True)
