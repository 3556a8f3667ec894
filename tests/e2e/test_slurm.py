"""One study as a Slurm job array, on a real single-node Slurm (tests/slurm_cluster.py) and a
real PostgreSQL server: exact counts across array tasks, requeue and cancel losing nothing,
and every bad input's message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy

from hparam_search import storage as st
from tests.conftest import REPO, UserProject, open_study, wait_for
from tests.slurm_cluster import SlurmCluster

SCRIPT = '''
import json, os, time
from hparam_search import hparam_search, current_trial


@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    trial = current_trial()
    with open(config["record"], "a") as f:
        f.write(json.dumps({"number": trial.number, "attempt": trial.attempt,
                            "retry_of": trial.retry_of, "params": trial.params,
                            "dir": str(trial.dir), "task": os.environ.get("SLURM_ARRAY_TASK_ID"),
                            "restart": os.environ.get("SLURM_RESTART_COUNT")}) + "\\n")
    if config.get("hang") and trial.number == 0 and trial.attempt == 1:
        (trial.dir / "started").write_text(os.environ.get("SLURM_ARRAY_TASK_ID", ""))
        time.sleep(600)
    time.sleep(config.get("sleep", 0.3))
    return (config["x"] - 1) ** 2


if __name__ == "__main__":
    train()
'''


@pytest.fixture
def database(postgres_url: str, tmp_path: Path) -> str:
    """A fresh database on the test server for one study."""
    server = sqlalchemy.make_url(st.resolve_storage(postgres_url, tmp_path))
    name = f"hs_slurm_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(server, isolation_level="AUTOCOMMIT",
                                     poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return postgres_url.rsplit("/", 1)[0] + "/" + name


def make(project: UserProject, storage: str, **config) -> Path:
    record = project.root / "attempts.jsonl"
    project.write_script(body=SCRIPT)
    base = {"experiment_name": "exp", "tag": "t", "n_trials": 6, "storage": storage,
            "record": str(record), "n_startup_trials": 3,
            "slurm": {"tasks": 3, "cpus_per_task": 1, "time": "00:10:00"},
            "sweep_parameters": {"x": {"type": "float", "low": -2.0, "high": 2.0}}}
    base.update(config)
    project.write_config(base)
    return record


def hs(project: UserProject, cluster: SlurmCluster, *args: str, env: dict | None = None
       ) -> subprocess.CompletedProcess[str]:
    full = dict(cluster.env, PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run([sys.executable, "-m", "hparam_search.cli", "slurm", *args],
                          cwd=project.root, env=full, capture_output=True, text=True,
                          timeout=300)


def job_of(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.split("submitted job ", 1)[1].split(":", 1)[0]


def queued(cluster: SlurmCluster, job: str) -> list[str]:
    out = cluster.run("squeue", "-h", "-r", "-j", job, "-o", "%K|%T", check=False).stdout
    return [line for line in out.splitlines() if line.strip()]


def wait_done(cluster: SlurmCluster, job: str, timeout: float = 180) -> None:
    wait_for(lambda: not queued(cluster, job), timeout=timeout, interval=0.5)


def trials(storage: str, project: UserProject) -> list:
    with open_study(st.resolve_storage(storage, project.root), "exp_t") as study:
        return study.trials


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_an_array_of_three_tasks_runs_exactly_n_trials(
        project: UserProject, slurm_cluster: SlurmCluster, database: str) -> None:
    make(project, database)
    result = hs(project, slurm_cluster, "submit", "script.py")
    job = job_of(result)
    script = next((project.root / "optuna_studies" / "exp_t" / "slurm").glob("*.sbatch"))
    text = script.read_text()
    for line in ("#SBATCH --array=0-2", "#SBATCH --requeue", "#SBATCH --signal=B:TERM@60",
                 "#SBATCH --cpus-per-task=1", "#SBATCH --time=00:10:00",
                 f"#SBATCH --output={script.parent}/%A_%a.out"):
        assert line in text
    wait_done(slurm_cluster, job)
    done = trials(database, project)
    assert sorted(t.state.name for t in done) == ["COMPLETE"] * 6
    owners = [t.system_attrs[st.OWNER_ATTR]["slurm"] for t in done]
    assert {o["job"] for o in owners} == {job}
    assert {o["task"] for o in owners} <= {0, 1, 2} and len({o["task"] for o in owners}) >= 2
    status = hs(project, slurm_cluster, "status", "script.py")
    assert status.returncode == 0
    assert "trials   6: COMPLETE 6" in status.stdout
    assert f"job {job} (submitted" in status.stdout
    export = subprocess.run([sys.executable, "-m", "hparam_search.cli", "export",
                             st.resolve_storage(database, project.root) + "#exp_t", "-o",
                             str(project.root / "t.csv")], cwd=project.root,
                            env=project.env(), capture_output=True, text=True, timeout=120)
    assert export.returncode == 0, export.stderr
    header = (project.root / "t.csv").read_text().splitlines()[0].split(",")
    assert {"slurm_job", "slurm_task", "slurm_node"} <= set(header)
    shown = subprocess.run([sys.executable, "-m", "hparam_search.cli", "show",
                            st.resolve_storage(database, project.root) + "#exp_t"],
                           cwd=project.root, env=project.env(), capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0, shown.stderr
    table = shown.stdout.split("\ntop ", 1)[1].splitlines()
    assert table[1].split()[-4:-1] == ["slurm_job", "slurm_task", "slurm_node"]
    assert all(f" {job} " in row for row in table[2:] if row.strip())
    # The budget is spent: a second submission's tasks exit at once, exit code 0.
    again = job_of(hs(project, slurm_cluster, "submit", "script.py"))
    wait_done(slurm_cluster, again)
    assert len(trials(database, project)) == 6
    log = (script.parent / f"{again}_0.out").read_text()
    assert "nothing to do" in log


def test_a_requeued_task_s_trial_is_retried_with_its_parameters_and_folder(
        project: UserProject, slurm_cluster: SlurmCluster, database: str) -> None:
    record = make(project, database, hang=True, n_trials=5)
    job = job_of(hs(project, slurm_cluster, "submit", "script.py"))
    started = project.root / "optuna_studies" / "exp_t" / "trials" / "0" / "started"
    task = wait_for(lambda: started.exists() and started.read_text(), timeout=120)
    slurm_cluster.run("scontrol", "requeue", f"{job}_{task}")
    wait_done(slurm_cluster, job, timeout=240)
    seen = records(record)
    first = next(r for r in seen if r["number"] == 0)
    retry = next(r for r in seen if r["retry_of"] == 0)
    assert retry["params"] == first["params"] and retry["dir"] == first["dir"]
    done = trials(database, project)
    states = sorted(t.state.name for t in done)
    assert states.count("COMPLETE") == 5 and states.count("FAIL") == 1
    assert "RUNNING" not in states
    # The requeued task itself ran its launcher again (its log continues across the requeue):
    # it retried the trial, or found the others had taken every slot.
    log = (project.root / "optuna_studies" / "exp_t" / "slurm" / f"{job}_{task}.out").read_text()
    assert log.count("hparam_search: study 'exp_t'") == 2, log
    assert "Search terminated (SIGTERM)" in log


def test_cancel_mid_search_then_submit_again_resumes(
        project: UserProject, slurm_cluster: SlurmCluster, database: str) -> None:
    make(project, database, n_trials=12, sleep=1.0)
    job = job_of(hs(project, slurm_cluster, "submit", "script.py"))
    wait_for(lambda: sum(t.state.name == "COMPLETE" for t in trials(database, project)) >= 2,
             timeout=120, interval=0.5)
    cancelled = hs(project, slurm_cluster, "cancel", "script.py")
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"job {job}: " in cancelled.stdout and "cancelled" in cancelled.stdout
    assert not queued(slurm_cluster, job)
    mid = trials(database, project)
    assert "RUNNING" not in {t.state.name for t in mid}
    assert sum(t.state.name == "COMPLETE" for t in mid) < 12
    again = job_of(hs(project, slurm_cluster, "submit", "script.py"))
    wait_done(slurm_cluster, again)
    final = trials(database, project)
    assert sum(t.state.name == "COMPLETE" for t in final) == 12
    assert "RUNNING" not in {t.state.name for t in final}


def test_dry_run_prints_the_script_and_submits_nothing(
        project: UserProject, slurm_cluster: SlurmCluster, database: str) -> None:
    make(project, database, slurm={"tasks": 8, "partition": "debug", "time": "04:00:00",
                                   "gpus_per_task": 4, "cpus_per_task": 16,
                                   "sbatch": ["--account=lab", "--qos=normal"]})
    result = hs(project, slurm_cluster, "submit", "script.py", "--set", "n_trials=40",
                "--dry-run")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for line in ("#SBATCH --array=0-7", "#SBATCH --partition=debug", "#SBATCH --time=04:00:00",
                 "#SBATCH --gpus-per-task=4", "#SBATCH --cpus-per-task=16",
                 "#SBATCH --account=lab", "#SBATCH --qos=normal"):
        assert line in out
    assert out.rstrip().endswith(f"{project.script} --set n_trials=40")
    assert not (project.root / "optuna_studies").exists()
    assert slurm_cluster.run("squeue", "-h").stdout.strip() == ""


def test_inside_a_task_workers_follow_the_allocation(project: UserProject) -> None:
    """Without a cluster: the environment Slurm gives a task is enough to check the rule."""
    out = project.root / "seen"
    project.write_script(body="""
        import json, os
        from hparam_search import hparam_search, current_trial

        @hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
        def train(config):
            info = current_trial()
            with open(os.path.join(config["out"], f"{info.number}.json"), "w") as f:
                json.dump({"n_jobs": info.n_jobs, "gpu": info.gpu}, f)
            return config["x"]

        if __name__ == "__main__":
            train()
    """)
    out.mkdir()
    project.write_config(n_jobs=1, n_trials=3, out=str(out),
                         slurm={"tasks": 2, "nodes_share_sqlite": True})
    job = {"SLURM_JOB_ID": "77", "SLURM_ARRAY_JOB_ID": "70", "SLURM_ARRAY_TASK_ID": "1",
           "SLURMD_NODENAME": "node7"}
    result = project.run(env={**job, "SLURM_CPUS_PER_TASK": "3"})
    assert result.returncode == 0, result.stderr
    assert "workers    3 (forkserver)" in result.stdout
    assert "slurm      job 70 task 1 on node7" in result.stdout
    owners = [t.system_attrs[st.OWNER_ATTR]["slurm"] for t in project.trials()]
    assert owners == [{"job": "70", "task": 1, "node": "node7"}] * 3
    for p in out.glob("*.json"):
        p.unlink()
    project.write_config(n_jobs=1, n_trials=2, out=str(out), tag="gpu", workers_per_gpu=1,
                         slurm={"tasks": 2, "nodes_share_sqlite": True})
    result = project.run(env={**job, "SLURM_GPUS_ON_NODE": "2", "CUDA_VISIBLE_DEVICES": "4,5"})
    assert result.returncode == 0, result.stderr
    seen = [json.loads(p.read_text()) for p in out.glob("*.json")]
    assert {s["n_jobs"] for s in seen} == {2} and {s["gpu"] for s in seen} <= {"4", "5"}
    # Without nodes_share_sqlite, a task refuses the SQLite file before anything runs.
    project.write_config(n_trials=2, tag="nfs", slurm={"tasks": 2})
    result = project.run(env=job)
    assert result.returncode == 2 and "a Slurm array needs a storage every node" in result.stderr


def test_bad_input(project: UserProject, slurm_cluster: SlurmCluster, database: str,
                   tmp_path: Path) -> None:
    def error(config: dict, *extra: str, env: dict | None = None) -> tuple[int, str]:
        make(project, config.pop("storage", database), **config)
        result = hs(project, slurm_cluster, "submit", "script.py", *extra, env=env)
        assert "Traceback" not in result.stderr
        return result.returncode, result.stderr

    code, err = error({"storage": None})
    assert code == 2
    assert err.endswith(
        "storage: a Slurm array needs a storage every node "
        "reaches, and a SQLite file is not one (SQLite over NFS corrupts). Set 'storage: "
        "postgresql://user:password@db-host/db' (or 'storage: journal:PATH' on a shared "
        "filesystem); on a single-node partition, 'slurm: {nodes_share_sqlite: true}' keeps "
        "the SQLite file.\n")
    code, err = error({"slurm": {"taks": 3}})
    assert code == 2 and err.endswith("slurm.taks: unknown Slurm setting. Did you mean "
                                      "'tasks'?\n"), err
    code, err = error({"slurm": {"tasks": 0}})
    assert code == 2 and "slurm.tasks: must be an integer >= 1 (the number of array tasks) " \
        "(got 0)." in err
    code, err = error({"slurm": {"tasks": 2, "time": "4 hours"}})
    assert code == 2 and "slurm.time: is not a Slurm time limit (got '4 hours')." in err
    code, err = error({"slurm": {"tasks": 2, "sbatch": "--account=lab"}})
    assert code == 2 and "slurm.sbatch: must be a list of sbatch options, as strings (got " \
        "'--account=lab')." in err
    code, err = error({}, env={"PATH": os.path.dirname(sys.executable)})
    assert code == 1 and err == ("error: sbatch is not on PATH. Run this on a Slurm login node "
                                 "(or load Slurm's module).\n")
    code, err = error({"slurm": {"tasks": 2, "partition": "nosuch"}})
    assert code == 1, err
    assert err.startswith("error: sbatch refused the job: sbatch: error: ") and \
        "invalid partition" in err.lower()
    assert err.count("\n") == 1
    # Nothing of the refused submission is kept: no script, not even the study.
    assert not list((project.root / "optuna_studies").rglob("*.sbatch"))
    import optuna

    storage = optuna.storages.RDBStorage(st.resolve_storage(database, project.root))
    try:
        assert optuna.get_all_study_names(storage) == []
    finally:
        storage.engine.dispose()


def test_the_slurm_example_runs_as_its_readme_says(
        slurm_cluster: SlurmCluster, database: str, tmp_path: Path) -> None:
    """examples/slurm, copied away and submitted with its storage set on the command line."""
    import shutil

    folder = tmp_path / "slurm"
    shutil.copytree(REPO / "examples" / "slurm", folder,
                    ignore=shutil.ignore_patterns("optuna_studies", "__pycache__"))
    small = ["--set", f"storage={database}", "--set", "n_trials=6", "--set", "epochs=6",
             "--set", "slurm.tasks=2", "--set", "slurm.cpus_per_task=1"]
    env = dict(slurm_cluster.env, PYTHONPATH=str(REPO))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hparam_search.cli", "slurm", *args],
                              cwd=folder, env=env, capture_output=True, text=True, timeout=300)

    dry = cli("submit", "train.py", "--dry-run", *small)
    assert dry.returncode == 0, dry.stderr
    assert "#SBATCH --array=0-1" in dry.stdout and "#SBATCH --time=00:30:00" in dry.stdout
    job = job_of(cli("submit", "train.py", *small))
    wait_done(slurm_cluster, job)
    with open_study(st.resolve_storage(database, folder), "logistic_slurm") as study:
        states = [t.state.name for t in study.trials]
        tasks = {t.system_attrs[st.OWNER_ATTR]["slurm"]["task"] for t in study.trials}
    assert len(states) == 6 and set(states) <= {"COMPLETE", "PRUNED"}, states
    assert tasks <= {0, 1}
    # status names the study's counts; the trials' checkpoints are in their folders.
    shown = cli("status", "train.py", *small[:2])
    assert shown.returncode == 0, shown.stderr
    assert "trials   6:" in shown.stdout and f"job {job} (submitted" in shown.stdout
    assert len(list((folder / "optuna_studies" / "logistic_slurm" / "trials").glob(
        "*/last.npz"))) == 6
