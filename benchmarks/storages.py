"""Throughput of this launcher per storage: SQLite and PostgreSQL (and any URL given).

Each point is one launch as a user runs it (trivial objective), timed from spawn to exit; the
study is read back to check the exact count. PostgreSQL needs a server: pass its URL with
--postgres (e.g. one started as in tests/conftest.py's postgres_url fixture).

    python benchmarks/storages.py --postgres postgresql://postgres@127.0.0.1:5432/hs \
        --n-jobs 1,2 --trials 300 --out benchmarks/results/storages.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import optuna
import yaml

REPO = Path(__file__).resolve().parent.parent
SCRIPT = '''
from hparam_search import hparam_search


@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    return config["x"] ** 2


if __name__ == "__main__":
    train()
'''


def one(root: Path, storage: str | None, n_jobs: int, trials: int, tag: str) -> dict:
    config = {"experiment_name": "bench", "tag": tag, "n_jobs": n_jobs, "n_trials": trials,
              "trial_logs": False,
              "sweep_parameters": {"x": {"type": "float", "low": -10.0, "high": 10.0}}}
    if storage:
        config["storage"] = storage
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    start = time.perf_counter()
    subprocess.run([sys.executable, "train.py"], cwd=root, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    url = storage or f"sqlite:///{root / 'optuna_studies' / f'bench_{tag}.db'}"
    if url.startswith("postgresql://"):
        from hparam_search.storage import resolve_storage

        url = resolve_storage(url, root)
    rdb = optuna.storages.RDBStorage(url)
    try:
        states = [t.state.name for t in optuna.load_study(study_name=f"bench_{tag}",
                                                          storage=rdb).trials]
    finally:
        rdb.engine.dispose()
    return {"wall_s": wall, "trials_per_s": trials / wall, "recorded": len(states),
            "complete": states.count("COMPLETE")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--postgres", help="a PostgreSQL URL (a fresh database is best)")
    ap.add_argument("--n-jobs", default="1,2")
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "storages.json"))
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "config").mkdir()
        (root / "train.py").write_text(textwrap.dedent(SCRIPT))
        for n_jobs in [int(n) for n in args.n_jobs.split(",")]:
            for name, storage in (("sqlite", None), ("postgresql", args.postgres)):
                if name == "postgresql" and not storage:
                    continue
                row = {"storage": name, "n_jobs": n_jobs, "trials": args.trials,
                       **one(root, storage, n_jobs, args.trials, f"{name}{n_jobs}")}
                print(row, flush=True)
                results.append(row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
