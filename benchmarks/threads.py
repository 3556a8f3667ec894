"""Threads per worker: the PyTorch digits MLP (examples/pytorch) with the default fair share of
cores per worker, against the same search with ``threads_per_worker: 0`` (every worker's
libraries take all cores, as they do by default), side by side, in alternating pairs.

Each run is a whole process, `python train.py` in a fresh copy of the example (no study to
resume), with MLflow tracking off so that only training is timed. Both arms run the same
trials (same seed, same sampler); only the thread counts differ.

    python benchmarks/threads.py                 # 3 pairs, n_jobs 2 (~5-10 min on 2 cores)
    python benchmarks/threads.py --pairs 1 --n-trials 4
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import REPO, RESULTS, env_with_repo, machine, markdown_table, state_counts, write_json

ARMS = {"fair share (default)": [], "threads_per_worker: 0": ["threads_per_worker=0"]}


def one_run(root: Path, label: str, overrides: list[str], args: argparse.Namespace) -> dict:
    folder = root / f"run-{time.monotonic_ns()}"
    shutil.copytree(REPO / "examples" / "pytorch", folder,
                    ignore=shutil.ignore_patterns("optuna_studies", "__pycache__"))
    sets = ["tracking=null", f"n_jobs={args.n_jobs}", f"n_trials={args.n_trials}", *overrides]
    cmd = [sys.executable, "train.py", "--set", *sets]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=folder, env=env_with_repo(), capture_output=True, text=True,
                          timeout=args.timeout)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{label}: exit {done.returncode}\n{done.stdout[-2000:]}"
                         f"{done.stderr[-2000:]}")
    threads = next((line.strip() for line in done.stdout.splitlines()
                    if line.strip().startswith("threads ")), "?")
    db = next((folder / "optuna_studies").glob("*.db"))
    counts = state_counts(f"sqlite:///{db}")
    shutil.rmtree(folder, ignore_errors=True)
    return {"arm": label, "wall_s": round(wall, 2), "banner": threads,
            "finished": counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--n-trials", type=int, default=12)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for pair in range(args.pairs):
            # Alternate which arm goes first, so that a drift in the machine hits both.
            order = list(ARMS.items()) if pair % 2 == 0 else list(ARMS.items())[::-1]
            for label, overrides in order:
                run = one_run(Path(tmp), label, overrides, args)
                run["pair"] = pair
                runs.append(run)
                print(f"pair {pair}: {label:<22} {run['wall_s']:>7.1f} s  ({run['banner']})",
                      flush=True)
    summary = []
    for label in ARMS:
        walls = [r["wall_s"] for r in runs if r["arm"] == label]
        summary.append({"arm": label, "runs": len(walls),
                        "median_s": round(statistics.median(walls), 1),
                        "min_s": min(walls), "max_s": max(walls),
                        "finished": sorted({r["finished"] for r in runs if r["arm"] == label})})
    print(markdown_table(summary, ["arm", "runs", "median_s", "min_s", "max_s", "finished"]))
    write_json(RESULTS / "threads.json", {"machine": machine(), "args": vars(args),
                                          "runs": runs, "summary": summary})


if __name__ == "__main__":
    main()
