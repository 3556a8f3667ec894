"""Signals, killed processes and load: nothing lost, nothing left running, exact counts."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import time

import pytest

from tests.conftest import UserProject, children_of, kill_group, pids_alive, wait_for, worker_pids


def db_states(project: UserProject) -> dict[str, int]:
    """Trial states read straight from the file while a search runs (WAL allows it)."""
    if not project.db().exists():
        return {}
    try:
        with contextlib.closing(sqlite3.connect(project.db(), timeout=5)) as conn:
            return dict(conn.execute("SELECT state, COUNT(*) FROM trials GROUP BY state"))
    except sqlite3.OperationalError:  # tables not created yet
        return {}


def start_slow_search(project: UserProject, n_trials: int = 20, sleep: float = 0.4,
                      n_jobs: int = 2, **extra: object):
    project.write_config(n_jobs=n_jobs, n_trials=n_trials, sleep=sleep, **extra)
    proc = project.popen()
    wait_for(lambda: db_states(project).get("COMPLETE", 0) >= 2, timeout=60)
    workers = wait_for(lambda: worker_pids(proc.pid) if len(worker_pids(proc.pid)) >= n_jobs
                       else None, timeout=30)
    return proc, workers


def finish(proc) -> tuple[int, str, float]:
    start = time.monotonic()
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out, time.monotonic() - start


@pytest.mark.parametrize("sig, code, headline", [
    (signal.SIGINT, 130, "Search interrupted (Ctrl-C)"),
    (signal.SIGTERM, 143, "Search terminated (SIGTERM)"),
])
def test_signal_stops_every_worker_quickly_and_resume_completes(
        project: UserProject, sig: int, code: int, headline: str) -> None:
    proc, workers = start_slow_search(project, sleep=1.0)
    everything = children_of(proc.pid)
    sent = time.monotonic()
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # what a terminal's Ctrl-C does
    else:
        os.kill(proc.pid, sig)  # what a scheduler does to the main process
    rc, out, _ = finish(proc)
    elapsed = time.monotonic() - sent
    assert rc == code, out
    assert elapsed < 3.0, f"took {elapsed:.2f}s to stop"
    assert pids_alive(workers) == []
    # multiprocessing's resource tracker leaves as soon as the launcher has gone.
    wait_for(lambda: not pids_alive(everything), timeout=2)
    assert headline in out and "Resume or extend:  python" in out
    assert "Traceback" not in out
    states = db_states(project)
    assert "RUNNING" not in states
    assert states.get("FAIL", 0) >= 1  # the trials cut short: not counted

    result = project.run("--set", "sleep=0")
    assert result.returncode == 0, result.stdout + result.stderr
    states = project.states()
    assert states["COMPLETE"] == 20 and "RUNNING" not in states


def test_sigkill_of_every_process_then_resume(project: UserProject) -> None:
    proc, workers = start_slow_search(project, sleep=1.0)
    # Stopped first, the launcher's group (launcher, fork server) cannot react to the workers'
    # deaths, nor the workers to theirs (a worker gives its trial back when the launcher dies).
    kill_group(proc, signal.SIGSTOP)
    for worker in workers:
        os.kill(worker, signal.SIGKILL)
    wait_for(lambda: not pids_alive(workers), timeout=10)
    kill_group(proc, signal.SIGKILL)
    proc.communicate(timeout=30)
    after_kill = db_states(project)
    left_running = after_kill.get("RUNNING", 0)
    assert left_running >= 1 and "FAIL" not in after_kill  # nobody was alive to clean up

    result = project.run("--set", "sleep=0")
    assert result.returncode == 0, result.stderr
    assert "were left RUNNING by processes that died; marked FAIL" in result.stdout
    states = project.states()
    assert states["COMPLETE"] == 20
    assert states["FAIL"] == left_running and "RUNNING" not in states


def test_sigkill_of_the_launcher_alone_stops_its_workers(project: UserProject) -> None:
    proc, workers = start_slow_search(project, sleep=5.0, n_trials=10)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    wait_for(lambda: not pids_alive(workers), timeout=5)
    # The workers gave their trials back on the way out.
    wait_for(lambda: "RUNNING" not in db_states(project), timeout=5)

    result = project.run("--set", "sleep=0")
    assert result.returncode == 0, result.stderr
    assert project.states()["COMPLETE"] == 10


def test_a_worker_killed_mid_trial_is_replaced_and_its_slot_rerun(project: UserProject) -> None:
    record = project.root / "seen"
    proc, workers = start_slow_search(project, sleep=1.0, n_trials=12, record_dir=str(record))
    # A worker that has just started a trial (it records its pid first, then sleeps 1 s).
    started = len(list(record.glob("*.json")))

    def newest_pid() -> int | None:
        files = list(record.glob("*.json"))
        if len(files) <= started:
            return None
        try:  # the file exists a moment before its content
            return json.loads(max(files, key=lambda p: p.stat().st_mtime).read_text())["pid"]
        except ValueError:
            return None

    victim = wait_for(newest_pid, timeout=30)
    os.kill(victim, signal.SIGKILL)
    rc, out, _ = finish(proc)
    assert rc == 0, out
    assert f"(pid {victim}) was killed by SIGKILL" in out
    assert "starting a replacement" in out
    trials = project.trials()
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 12
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(failed) == 1, out
    assert failed[0].system_attrs["fail_reason"] == "its worker process was killed by SIGKILL"
    assert failed[0].system_attrs["hparam_search:owner"]["pid"] == victim


def test_stress_8_workers_400_trials(project: UserProject) -> None:
    project.write_config(n_jobs=8, n_trials=400, n_startup_trials=10)
    result = project.run(timeout=600)
    assert result.returncode == 0, result.stderr
    trials = project.trials()
    assert len(trials) == 400
    assert project.states() == {"COMPLETE": 400}
    assert sorted(t.number for t in trials) == list(range(400))
    assert "locked" not in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
