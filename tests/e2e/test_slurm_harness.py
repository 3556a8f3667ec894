"""Smoke tests of the real Slurm test cluster (tests/slurm_cluster.py): job arrays, requeue of
a running task, and signalling the batch script. They pin down the Slurm behaviours the
launcher relies on; durations are printed (`pytest -s`) to size later tests' deadlines."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tests import conftest
from tests.slurm_cluster import SlurmCluster

# The fixture comes from conftest once it imports it there; a second definition here would
# start a second session cluster for this module alone.
if not hasattr(conftest, "slurm_cluster"):
    from tests.slurm_cluster import slurm_cluster  # noqa: F401

T = TypeVar("T")

# Writes what the launcher needs to know about a task, atomically (rename) so a reader never
# sees half a file.
ARRAY_TASK = """#!/bin/bash
set -eu
d="$1"; t="$SLURM_ARRAY_TASK_ID"
env | grep -E '^SLURM' | sort > "$d/env.$t"
echo "$SLURM_ARRAY_JOB_ID $SLURM_ARRAY_TASK_ID $SLURMD_NODENAME" > "$d/out.$t.tmp"
mv "$d/out.$t.tmp" "$d/out.$t"
"""

# Task 0 stops on SIGTERM; task 1 ignores it and keeps writing a heartbeat, so its last beat
# shows when SIGKILL came. A counter file tells runs apart; the second run just exits.
REQUEUE_TASK = """#!/bin/bash
d="$1"; t="$SLURM_ARRAY_TASK_ID"
n=$(( $(cat "$d/count.$t" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$d/count.$t"
echo "$n $SLURM_JOB_ID $SLURM_ARRAY_JOB_ID $t ${SLURM_RESTART_COUNT:-unset} $(date +%s.%N)" \
  >> "$d/runs.$t"
[ "$n" -ge 2 ] && exit 0
if [ "$t" = 0 ]; then
  trap 'echo "$(date +%s.%N)" > "$d/term.$t"; kill "$child"; exit 143' TERM
  echo ready > "$d/ready.$t"
  sleep 300 & child=$!
  wait "$child"
else
  trap 'echo "$(date +%s.%N)" > "$d/term.$t"' TERM
  echo ready > "$d/ready.$t"
  # Written aside, then renamed: a SIGKILL between truncating and writing leaves no empty beat.
  while :; do date +%s.%N > "$d/beat.$t.new"; mv "$d/beat.$t.new" "$d/beat.$t"; sleep 0.1; done
fi
"""

# Notes SIGTERM and exits; `sleep & wait` so bash runs the trap at once, not after the sleep.
SIGNAL_TASK = """#!/bin/bash
d="$1"
trap 'echo "$(date +%s.%N)" > "$d/term"; kill "$child"; exit 0' TERM
echo ready > "$d/ready"
sleep 300 & child=$!
wait "$child"
"""


def wait_for(check: Callable[[], T], timeout: float, what: str, cluster: SlurmCluster) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            queue = cluster.run("squeue", "-r", "-h", "-o", "%i %A %T %r", check=False).stdout
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n"
                                 f"squeue:\n{queue}\n{cluster.log_tails(20)}")
        time.sleep(0.1)


def script(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o755)
    return path


def tasks(cluster: SlurmCluster, job: int) -> dict[str, tuple[str, ...]]:
    """`squeue` line per array task: JobArrayID -> (JobID, ArrayJobID, TaskID, State, Reason).
    A finished job id that slurmctld already purged reads as no tasks."""
    res = cluster.run("squeue", "-j", str(job), "-r", "-h", "-o", "%i|%A|%F|%K|%T|%r",
                      check=False)
    rows = [line.split("|") for line in res.stdout.splitlines() if line.strip()]
    return {row[0]: tuple(row[1:]) for row in rows}


def wait_gone(cluster: SlurmCluster, job: int, timeout: float = 60.0) -> None:
    # Free the node's CPUs for the next test; squeue hides finished jobs by default.
    wait_for(lambda: not tasks(cluster, job), timeout, f"job {job} to leave the queue", cluster)


def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_array_job_runs_every_task(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    cluster = slurm_cluster
    task = script(tmp_path, "task.sh", ARRAY_TASK)
    t0 = time.time()
    job = cluster.sbatch("--array=0-2", "--requeue", "--cpus-per-task=1",
                         f"--chdir={tmp_path}", f"--output={tmp_path}/slurm-%A_%a.out",
                         str(task), str(tmp_path))
    outs = [tmp_path / f"out.{i}" for i in range(3)]
    wait_for(lambda: all(p.exists() for p in outs), 60, "all three array tasks", cluster)
    print(f"\n[timing] 3-task array (2 CPUs) submit -> all done: {time.time() - t0:.2f}s")

    for i, out in enumerate(outs):
        assert out.read_text().split() == [str(job), str(i), cluster.node]
    envs = [read_env(tmp_path / f"env.{i}") for i in range(3)]
    for i, env in enumerate(envs):
        assert env["SLURM_ARRAY_JOB_ID"] == str(job)
        assert env["SLURM_ARRAY_TASK_ID"] == str(i)
        assert env["SLURM_CPUS_PER_TASK"] == "1"
        assert env["SLURMD_NODENAME"] == cluster.node
        assert "SLURM_RESTART_COUNT" not in env  # only set once a job has been requeued
    # Each task is its own job with its own SLURM_JOB_ID; one of them reuses the array's id.
    job_ids = {env["SLURM_JOB_ID"] for env in envs}
    assert len(job_ids) == 3 and str(job) in job_ids
    wait_gone(cluster, job)


def test_requeue_restarts_a_running_task(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    cluster = slurm_cluster
    task = script(tmp_path, "task.sh", REQUEUE_TASK)
    job = cluster.sbatch("--array=0-1", "--requeue", "--cpus-per-task=1",
                         f"--chdir={tmp_path}", f"--output={tmp_path}/slurm-%A_%a.out",
                         str(task), str(tmp_path))
    wait_for(lambda: all((tmp_path / f"ready.{t}").exists() for t in (0, 1)), 60,
             "both tasks to run", cluster)
    running = tasks(cluster, job)
    assert {k: v[3] for k, v in running.items()} == {f"{job}_0": "RUNNING",
                                                     f"{job}_1": "RUNNING"}

    requeued_at = {}
    for t in (0, 1):
        requeued_at[t] = time.time()
        cluster.run("scontrol", "requeue", f"{job}_{t}")
    seen_states: set[str] = set()

    def both_ran_twice() -> bool:
        seen_states.update(f"{v[3]}/{v[4]}" for v in tasks(cluster, job).values())
        return all(len(runs(t)) >= 2 for t in (0, 1))

    def runs(t: int) -> list[list[str]]:
        path = tmp_path / f"runs.{t}"
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []

    wait_for(both_ran_twice, 90, "both requeued tasks to run again", cluster)
    kill_wait = cluster.kill_wait
    for t in (0, 1):
        first, second = runs(t)[:2]
        # Same job record: same SLURM_JOB_ID, array id and task id; restart count 1.
        assert first[:4] == ["1", running[f"{job}_{t}"][0], str(job), str(t)]
        assert second[:4] == ["2", first[1], str(job), str(t)]
        assert (first[4], second[4]) == ("unset", "1")
        term = float((tmp_path / f"term.{t}").read_text())
        print(f"\n[timing] task {t}: requeue -> SIGTERM {term - requeued_at[t]:.2f}s, "
              f"requeue -> second run {float(second[5]) - requeued_at[t]:.2f}s")
        assert term - requeued_at[t] < 5
    # Task 1 ignored SIGTERM: SIGKILL came KillWait seconds later (the heartbeat stopped).
    term1 = float((tmp_path / "term.1").read_text())
    last_beat = float((tmp_path / "beat.1").read_text())
    print(f"[timing] task 1 ignoring SIGTERM: killed {last_beat - term1:.2f}s after it "
          f"(KillWait={kill_wait}); states seen while requeued: {sorted(seen_states)}")
    assert kill_wait - 2 <= last_beat - term1 <= kill_wait + 3
    wait_gone(cluster, job)


def test_scancel_signals_the_batch_script(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    cluster = slurm_cluster
    task = script(tmp_path, "task.sh", SIGNAL_TASK)
    job = cluster.sbatch(f"--chdir={tmp_path}", f"--output={tmp_path}/slurm-%j.out",
                         str(task), str(tmp_path))
    wait_for(lambda: (tmp_path / "ready").exists(), 60, "the job to run", cluster)

    # Without --batch, signals other than KILL go to job steps only; a plain batch script
    # has none, so nothing happens.
    cluster.run("scancel", "--signal=TERM", str(job))
    time.sleep(1.5)
    assert not (tmp_path / "term").exists()
    assert tasks(cluster, job)[str(job)][3] == "RUNNING"

    sent = time.time()
    cluster.run("scancel", "--batch", "--signal=TERM", str(job))
    term = float(wait_for(lambda: (tmp_path / "term").exists() and (tmp_path / "term")
                          .read_text().strip(), 30, "SIGTERM in the batch script", cluster))
    print(f"\n[timing] scancel --batch --signal=TERM -> trap ran: {term - sent:.2f}s")
    assert term - sent < 5
    wait_gone(cluster, job)
