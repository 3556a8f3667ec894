"""Launch -> first trial start, and Ctrl-C -> exit, for this launcher and for raw Optuna.

Both run as fresh subprocesses on a fresh SQLite study with the same trivial objective; the
objective writes a timestamp when it starts, so "first trial" is measured where the user's code
runs. Raw Optuna is the hand-written pattern: the parent creates the study, forks n_jobs
processes, each loads it and calls optimize.

    python benchmarks/latency.py --repeats 5 --out benchmarks/results/latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent

PROJECT_SCRIPT = '''
import os, time
from hparam_search import hparam_search


@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    with open(os.environ["STAMP_FILE"], "a") as f:
        f.write(f"{time.time()}\\n")
    time.sleep(config["sleep"])
    return config["x"] ** 2


if __name__ == "__main__":
    train()
'''

RAW_SCRIPT = '''
import multiprocessing, os, sys, time
import optuna

URL, N_JOBS, N_TRIALS, SLEEP = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])


def objective(trial):
    x = trial.suggest_float("x", -1, 1)
    with open(os.environ["STAMP_FILE"], "a") as f:
        f.write(f"{time.time()}\\n")
    time.sleep(SLEEP)
    return x ** 2


def work(rank):
    storage = optuna.storages.RDBStorage(URL, engine_kwargs={"connect_args": {"timeout": 60}})
    study = optuna.load_study(study_name="raw", storage=storage,
                              sampler=optuna.samplers.TPESampler(seed=rank, constant_liar=True))
    study.optimize(objective, callbacks=[optuna.study.MaxTrialsCallback(N_TRIALS, states=None)],
                   catch=(Exception,))


if __name__ == "__main__":
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name="raw", storage=URL)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=work, args=(r,)) for r in range(N_JOBS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
'''


def first_trial(cmd: list[str], cwd: Path, stamp: Path, env: dict) -> float:
    stamp.unlink(missing_ok=True)
    start = time.time()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
    return min(float(x) for x in stamp.read_text().split()) - start


def stop_time(cmd: list[str], cwd: Path, stamp: Path, env: dict) -> float:
    """Start a search of slow trials, wait until trials run, Ctrl-C the group, time the exit."""
    stamp.unlink(missing_ok=True)
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (stamp.exists() and len(stamp.read_text().split()) >= 2):
        time.sleep(0.02)
    time.sleep(0.3)
    sent = time.time()
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return float("inf")
    return time.time() - sent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "latency.json"))
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    out: dict = {"n_jobs": args.n_jobs, "repeats": args.repeats}
    rows: dict[str, dict[str, list[float]]] = {"project": {"first": [], "stop": []},
                                               "raw-optuna-sqlite": {"first": [], "stop": []}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        stamp = root / "stamps"
        env["STAMP_FILE"] = str(stamp)
        (root / "config").mkdir()
        (root / "train.py").write_text(textwrap.dedent(PROJECT_SCRIPT))
        (root / "raw.py").write_text(textwrap.dedent(RAW_SCRIPT))
        for i in range(args.repeats):
            for kind, trials, sleep, key in (("first", 2, 0.0, "first"), ("stop", 50, 2.0, "stop")):
                tag = f"{kind}{i}"
                (root / "config" / "config.yaml").write_text(yaml.safe_dump({
                    "experiment_name": "lat", "tag": tag, "n_jobs": args.n_jobs,
                    "n_trials": trials, "sleep": sleep,
                    "sweep_parameters": {"x": {"type": "float", "low": -1, "high": 1}}}))
                project = [sys.executable, "train.py"]
                raw = [sys.executable, "raw.py", f"sqlite:///{root / f'raw_{tag}.db'}",
                       str(args.n_jobs), str(trials), str(sleep)]
                measure = first_trial if kind == "first" else stop_time
                rows["project"][key].append(measure(project, root, stamp, env))
                rows["raw-optuna-sqlite"][key].append(measure(raw, root, stamp, env))
    for peer, data in rows.items():
        out[peer] = {k: {"median": statistics.median(v), "all": v} for k, v in data.items()}
        print(peer, {k: round(statistics.median(v), 3) for k, v in data.items()})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
