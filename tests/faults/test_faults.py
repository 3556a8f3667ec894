"""Fault injection: every scenario ends with 0 trials lost, an exact finished count and no trial
stuck RUNNING. "Lost" = a trial the launcher reported COMPLETE that the study does not hold as
COMPLETE at the end."""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import UserProject, pids_alive, wait_for, worker_pids

FAULT_SCRIPT = '''
import ctypes, os, sys, time
from hparam_search import hparam_search


@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    fault, x = config.get("fault"), config["x"]
    time.sleep(config.get("sleep", 0))
    if fault == "segfault" and x > 2:
        ctypes.string_at(0)                      # a real SIGSEGV
    if fault == "hang" and x > 2:
        time.sleep(3600)
    if fault == "exit" and x > 2:
        sys.exit(1)
    if fault == "flood":
        for i in range(config["lines"]):
            print(f"flood {i} " + "x" * 60)
    return (x - 1) ** 2


if __name__ == "__main__":
    train()
'''


def report(project: UserProject, *outputs: str) -> dict[str, int]:
    """The three numbers every fault scenario checks."""
    reported = set()
    for out in outputs:
        reported |= {int(n) for n in re.findall(r"\] trial (\d+) COMPLETE", out)}
    trials = project.trials()
    complete = {t.number for t in trials if t.state.name == "COMPLETE"}
    return {"lost": len(reported - complete),
            "finished": sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials),
            "running": sum(t.state.name == "RUNNING" for t in trials)}


def setup(project: UserProject, **config: object) -> None:
    project.write_script(body=FAULT_SCRIPT)
    base = {"n_jobs": 2, "n_trials": 20, "fail_fast": 0, "n_startup_trials": 5}
    base.update(config)
    project.write_config(**base)


def test_random_sigkills_of_workers_during_a_200_trial_run(project: UserProject) -> None:
    setup(project, n_jobs=3, n_trials=200, sleep=0.03)
    proc = project.popen()
    rng = random.Random(0)
    killed = 0
    deadline = time.monotonic() + 120
    while killed < 6 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.4)
        workers = worker_pids(proc.pid)
        if workers:
            try:
                os.kill(rng.choice(workers), signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert killed >= 3
    assert report(project, out) == {"lost": 0, "finished": 200, "running": 0}
    assert out.count("was killed by SIGKILL") >= 3


def test_sigkill_of_the_launcher_then_resume(project: UserProject) -> None:
    setup(project, n_trials=30, sleep=0.2)
    proc = project.popen()
    first = ""
    wait_for(lambda: project.live_count() >= 4, timeout=60)
    workers = worker_pids(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    first, _ = proc.communicate(timeout=30)
    wait_for(lambda: not pids_alive(workers), timeout=10)
    result = project.run("--set", "sleep=0")
    assert result.returncode == 0, result.stderr
    assert report(project, first, result.stdout) == {"lost": 0, "finished": 30, "running": 0}


def test_sigint_twice_stops_at_once(project: UserProject) -> None:
    setup(project, n_trials=30, sleep=2.0)
    proc = project.popen()
    wait_for(lambda: len(worker_pids(proc.pid)) >= 2, timeout=60)
    wait_for(lambda: project.live_count() >= 2, timeout=60)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.1)
    sent = time.monotonic()
    try:
        os.killpg(proc.pid, signal.SIGINT)
    except ProcessLookupError:
        pass
    out, _ = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 3.0
    assert proc.returncode == 130, out
    assert "Traceback" not in out
    result = project.run("--set", "sleep=0")
    assert result.returncode == 0
    assert report(project, out, result.stdout) == {"lost": 0, "finished": 30, "running": 0}


def test_ctrl_c_pressed_again_and_again_never_ends_in_a_traceback(project: UserProject) -> None:
    """Ctrl-C every 20 ms from the first until the launcher has gone: whichever step of the
    stop (the grace wait, the bookkeeping, the summary, the exit) each one lands in."""
    setup(project, n_trials=30, sleep=2.0)
    proc = project.popen()
    wait_for(lambda: project.live_count() >= 2, timeout=60)
    presses = 0
    while proc.poll() is None and presses < 500:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)  # the launcher's group, as a terminal sends it
        presses += 1
        time.sleep(0.02)
    out, _ = proc.communicate(timeout=30)
    # The third press ends the launcher at once by the signal (a shell shows 130 too), unless
    # the stop was over by then.
    assert presses > 1 and proc.returncode in (130, -signal.SIGINT), out
    assert "Traceback" not in out and "Exception ignored" not in out, out
    assert "Search interrupted (Ctrl-C)" in out or "ends the launcher at once" in out, out
    result = project.run("--set", "sleep=0")
    assert result.returncode == 0
    assert report(project, out, result.stdout) == {"lost": 0, "finished": 30, "running": 0}


# train ignores the stop until it is killed; `sleep` is how long a trial takes otherwise.
STUBBORN_SCRIPT = """
    import os, time
    from hparam_search import hparam_search

    @hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
    def train(config):
        open(f"started-{os.getpid()}", "w").close()
        try:
            time.sleep(config["sleep"])
        except BaseException:  # the stop: saved, then hangs until SIGKILL
            open(f"stopped-{os.getpid()}", "w").close()
            time.sleep(600)
        return config["x"] ** 2

    if __name__ == "__main__":
        train()
"""


def _stop_stubborn_search(project: UserProject) -> subprocess.Popen[str]:
    """Two workers hang on after the first Ctrl-C; the launcher waits its 120 s grace."""
    project.write_script(body=STUBBORN_SCRIPT)
    project.write_config(n_jobs=2, n_trials=4, sleep=600, stop_grace=120)
    proc = project.popen()
    wait_for(lambda: len(list(project.root.glob("started-*"))) == 2, timeout=60)
    os.killpg(proc.pid, signal.SIGINT)
    wait_for(lambda: len(list(project.root.glob("stopped-*"))) == 2, timeout=30)
    return proc


def test_a_second_ctrl_c_cuts_the_grace_wait_short(project: UserProject) -> None:
    proc = _stop_stubborn_search(project)
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 15, "waited out the grace period"
    assert proc.returncode == 130, out
    assert "Search interrupted (Ctrl-C)" in out and "Resume or extend:" in out, out
    assert "Stopping without waiting for the workers" in out and "Traceback" not in out, out
    assert project.states() == {"FAIL": 2}  # recorded by the launcher itself


def test_a_third_ctrl_c_ends_a_launcher_stuck_on_its_database(project: UserProject) -> None:
    proc = _stop_stubborn_search(project)
    workers = worker_pids(proc.pid)
    # Another process holds the database's write lock: the launcher cannot record the stop.
    with contextlib.closing(sqlite3.connect(project.db(), timeout=30,
                                            isolation_level=None)) as blocker:
        blocker.execute("BEGIN EXCLUSIVE")
        os.killpg(proc.pid, signal.SIGINT)  # the second: the workers are killed
        wait_for(lambda: not pids_alive(workers), timeout=30)
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # the third
        out, _ = proc.communicate(timeout=60)
        assert time.monotonic() - sent < 10
        blocker.execute("ROLLBACK")
    assert proc.returncode == -signal.SIGINT, out  # the signal's default action
    assert "one more Ctrl-C or SIGTERM ends the launcher at once" in out, out
    assert "Traceback" not in out and "Search interrupted" not in out, out
    result = project.run("--set", "sleep=0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "were left RUNNING by processes that died; marked FAIL" in result.stdout
    assert project.states() == {"FAIL": 2, "COMPLETE": 4}


def test_a_train_that_segfaults(project: UserProject) -> None:
    # Random sampling: TPE ignores FAIL trials, so it could keep proposing the crashing region
    # (that is what fail_fast's limit on consecutive crashes is for, tested below).
    setup(project, n_trials=16, fault="segfault", sampler={"type": "random"}, seed=0)
    result = project.run(timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    counts = report(project, result.stdout)
    assert counts == {"lost": 0, "finished": 16, "running": 0}
    failed = [t for t in project.trials() if t.state.name == "FAIL"]
    assert failed and all(t.system_attrs["fail_reason"] ==
                          "its worker process was killed by SIGSEGV" for t in failed)
    assert all(t.params["x"] > 2 for t in failed)


def test_crashing_every_time_stops_after_fail_fast_plus_n_jobs_crashes(
        project: UserProject) -> None:
    setup(project, n_trials=16, fault="segfault", fail_fast=3,
          sweep_parameters={"x": {"type": "float", "low": 3.0, "high": 5.0}})
    result = project.run(timeout=300)
    assert result.returncode == 1
    assert "error: worker processes died 5 times in a row without a trial completing; the " \
           "last one was killed by SIGSEGV" in result.stderr
    assert report(project, result.stdout)["running"] == 0


def test_a_train_that_hangs_past_trial_timeout(project: UserProject) -> None:
    setup(project, n_trials=8, fault="hang", trial_timeout=1)
    start = time.monotonic()
    result = project.run(timeout=300)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - start < 60
    assert report(project, result.stdout) == {"lost": 0, "finished": 8, "running": 0}
    hung = [t for t in project.trials() if t.params["x"] > 2]
    assert hung and all(t.state.name == "PRUNED" and t.user_attrs["prune_reason"] ==
                        "timeout: still running after 1s" for t in hung)


def test_a_train_that_calls_sys_exit(project: UserProject) -> None:
    setup(project, n_trials=10, fault="exit")
    result = project.run()
    assert result.returncode == 0
    assert report(project, result.stdout) == {"lost": 0, "finished": 10, "running": 0}


def test_a_train_that_floods_stdout(project: UserProject) -> None:
    setup(project, n_trials=6, fault="flood", lines=20000)
    result = project.run(timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert report(project, result.stdout) == {"lost": 0, "finished": 6, "running": 0}
    assert result.stdout.count(" flood 19999 ") == 6
    for t in project.trials():
        assert Path(t.user_attrs["log_file"]).read_text().count("\n") == 20000


def test_two_launchers_started_at_the_same_moment_on_a_fresh_study(project: UserProject) -> None:
    setup(project, n_trials=40, sleep=0.02)
    first, second = project.popen(), project.popen()
    out1, _ = first.communicate(timeout=300)
    out2, _ = second.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, out1 + out2
    assert report(project, out1, out2) == {"lost": 0, "finished": 40, "running": 0}
    assert len(project.trials()) == 40


@pytest.fixture
def small_mount(tmp_path: Path):
    """A tiny tmpfs (needs root); skipped where mounting is not allowed."""
    target = tmp_path / "mnt"
    target.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(target)],
                          capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {made.stderr.decode().strip()}")
    yield target
    subprocess.run(["umount", "-l", str(target)], capture_output=True)


def test_a_read_only_study_file(project: UserProject, small_mount: Path) -> None:
    setup(project, n_trials=3)
    project.write_script(body=FAULT_SCRIPT.replace("./optuna_studies", str(small_mount)))
    assert project.run().returncode == 0
    before = _count(small_mount / "exp_t.db")
    # Processes of the finished run (the fork server) may take a moment to let go of the files.
    wait_for(lambda: subprocess.run(["mount", "-o", "remount,ro", str(small_mount)],
                                    capture_output=True).returncode == 0, timeout=20, interval=0.2)
    result = project.run("--set", "n_trials=6")
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.startswith("error: ")
    assert result.stderr == (f"error: {small_mount / 'exp_t.db'}: the study's folder is on a "
                             "read-only filesystem. The search needs a writable folder with free "
                             "space (save_db_directory).\n")
    assert _count(small_mount / "exp_t.db", read_only=True) == before


def _count(db: Path, read_only: bool = False) -> int:
    uri = f"file:{db}?mode=ro&immutable=1" if read_only else f"file:{db}"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        return conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0]


def test_a_full_disk(project: UserProject, small_mount: Path) -> None:
    setup(project, n_trials=400, fault="flood", lines=30)
    project.write_script(body=FAULT_SCRIPT.replace("./optuna_studies", str(small_mount)))
    filler = small_mount / "filler"
    with open(filler, "wb") as f:  # leave ~400 KiB: room for some trials, not 400 with logs
        f.write(b"\0" * (shutil.disk_usage(small_mount).free - 400 * 1024))
    result = project.run(timeout=300)
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "full" in result.stderr.lower() or "no space" in result.stderr.lower()
    # Free the space; the study resumes and ends clean.
    filler.unlink()
    done = sum(t.state.name in ("COMPLETE", "PRUNED") for t in _trials(small_mount))
    again = project.run("--set", f"n_trials={done + 2}", timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    trials = _trials(small_mount)
    reported = {int(n) for n in re.findall(r"\] trial (\d+) COMPLETE",
                                           result.stdout + again.stdout)}
    complete = {t.number for t in trials if t.state.name == "COMPLETE"}
    assert reported - complete == set()  # nothing committed was lost
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == done + 2
    assert not [t for t in trials if t.state.name == "RUNNING"]


def _trials(folder: Path) -> list:
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{folder / 'exp_t.db'}")
    try:
        return optuna.load_study(study_name="exp_t", storage=storage).trials
    finally:
        storage.engine.dispose()


def test_search_timeout_starts_no_new_trial_after_the_deadline(project: UserProject) -> None:
    setup(project, n_trials=100, sleep=0.5, timeout=2)
    start = time.monotonic()
    result = project.run(timeout=120)
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    assert "Search stopped at its timeout (2s)" in result.stdout
    trials = project.trials()
    assert 2 <= len(trials) < 100 and elapsed < 15
    deadline_passed = min(t.datetime_start for t in trials).timestamp() + 2 + 0.5
    assert all(t.datetime_start.timestamp() < deadline_passed for t in trials)
    assert report(project, result.stdout)["running"] == 0


def test_isolate_trials_runs_every_trial_in_a_new_process(project: UserProject) -> None:
    setup(project, n_trials=6, isolate_trials=True)
    result = project.run()
    assert result.returncode == 0, result.stderr
    pids = [t.system_attrs["hparam_search:owner"]["pid"] for t in project.trials()]
    assert len(set(pids)) == 6
    assert report(project, result.stdout) == {"lost": 0, "finished": 6, "running": 0}
