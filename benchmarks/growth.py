"""Per-trial cost as a study grows, and resuming a large study: this launcher and raw Optuna
side by side, on SQLite and PostgreSQL.

Studies of each size (0 and 20,000 FINISHED trials by default: 3 float parameters and 5
intermediate values each) are built in seconds by bulk SQL through the launcher's own storage
(``hparam_search.open_storage``), once per storage and size, then copied for every run (a file
copy for SQLite, ``CREATE DATABASE ... TEMPLATE`` for PostgreSQL). Each run adds ``--add``
trivial trials with one worker: the launcher as a user runs it, or raw Optuna (one process,
``RDBStorage(url)`` at its defaults, ``study.optimize(n_trials=...)``). ms/trial is the spacing
of the new trials' completion times in the study (first to last completion: start-up
excluded). "Resume" runs a few trials on a ``--resume-size`` study and times launch -> first
trial start (train writes a timestamp) and launch -> exit.

    python benchmarks/growth.py                                   # full sizes, ~7 min
    python benchmarks/growth.py --sizes 0,2000 --add 50 --resume-size 5000   # a quick check
    python benchmarks/growth.py --storages sqlite --samplers random --peers launcher

Targets: at 20,000 trials <= 1.5x the empty study's ms/trial (random sampler: the storage's
own cost; TPE reported for its own cost); resume of 50,000 trials -> first trial <= 2 s
(random sampler).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna

from _bench import (RESULTS, PgServer, TRAIN_SCRIPT, bulk_add_trials, check_bulk_trial,
                    completion_times, env_with_repo, launcher_config, machine, make_project,
                    markdown_table, postgres, timed, write_config, write_json)

RAW_SCRIPT = '''
import os, sys, time
import optuna

URL, NAME, N_TRIALS, SAMPLER = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]


def objective(trial):
    with open(os.environ["STAMP_FILE"], "a") as f:
        f.write(f"{time.time()}\\n")
    return sum(trial.suggest_float(k, -10.0, 10.0) ** 2 for k in ("x", "y", "z"))


if __name__ == "__main__":
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = (optuna.samplers.RandomSampler() if SAMPLER == "random"
               else optuna.samplers.TPESampler())
    study = optuna.load_study(study_name=NAME, storage=optuna.storages.RDBStorage(URL),
                              sampler=sampler)
    study.optimize(objective, n_trials=N_TRIALS)
'''

PARAMS = ("x", "y", "z")
STEPS = 5


class Studies:
    """Template studies per (storage, size), and copies of them under a given name."""

    def __init__(self, root: Path, server: PgServer | None) -> None:
        self.root, self.server = root, server
        self.built: dict[tuple[str, int], Any] = {}
        self.build_s: dict[str, float] = {}

    def template(self, storage: str, size: int) -> Any:
        key = (storage, size)
        if key in self.built:
            return self.built[key]
        import hparam_search
        from hparam_search.storage import close_storage

        if storage == "sqlite":
            path = self.root / "templates" / f"t{size}.db"
            path.parent.mkdir(exist_ok=True)
            url = f"sqlite:///{path}"
            where: Any = path
        else:
            assert self.server is not None
            url = self.server.fresh_db(f"hsb_tmpl_{size}")
            where = f"hsb_tmpl_{size}"
        st = hparam_search.open_storage(url)
        optuna.create_study(study_name="tmpl", storage=st, direction="minimize")
        took = bulk_add_trials(st, "tmpl", size, params=PARAMS, steps=STEPS) if size else 0.0
        close_storage(st)  # its own connections and SQLAlchemy's
        if storage == "sqlite":  # fold the WAL into the file that is copied
            with contextlib.closing(sqlite3.connect(path)) as conn:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if size:
            check_bulk_trial(url, "tmpl", size - 1, PARAMS, STEPS)
        self.build_s[f"{storage}:{size}"] = took
        print(f"built {storage} study of {size} trials in {took:.1f} s", flush=True)
        self.built[key] = where
        return where

    def copy(self, storage: str, size: int, name: str, sqlite_path: Path) -> str:
        """A copy of the template as study ``name``; its URL."""
        where = self.template(storage, size)
        if storage == "sqlite":
            sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            for suffix in ("", "-wal", "-shm", ".lock"):
                Path(f"{sqlite_path}{suffix}").unlink(missing_ok=True)
            shutil.copy(where, sqlite_path)
            with contextlib.closing(sqlite3.connect(sqlite_path)) as conn:
                conn.execute("UPDATE studies SET study_name = ?", (name,))
                conn.commit()
            return f"sqlite:///{sqlite_path}"
        assert self.server is not None
        db = f"hsb_{name}".lower()
        with self.server.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{db}" TEMPLATE "{where}"')
        self.server._made.append(db)
        url = self.server.url(db)
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE studies SET study_name = %s", (name,))
        return url


def spacing_ms(times: list[float]) -> tuple[float | None, float | None]:
    """(mean, median) ms between consecutive completions."""
    if len(times) < 3:
        return None, None
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return 1000 * (times[-1] - times[0]) / (len(times) - 1), 1000 * statistics.median(gaps)


def one(studies: Studies, root: Path, peer: str, storage: str, size: int, sampler: str,
        add: int, n_jobs: int, kind: str) -> dict[str, Any]:
    tag = f"{kind}_{storage}_{size}_{sampler}_{peer}"
    name = f"grow_{tag}"
    url = studies.copy(storage, size, name, root / "optuna_studies" / f"{name}.db")
    stamp = root / f"{tag}.stamps"
    env = env_with_repo(STAMP_FILE=str(stamp))
    if peer == "launcher":
        write_config(root, launcher_config(
            tag, size + add, n_jobs=n_jobs, storage=None if storage == "sqlite" else url,
            params=PARAMS, sampler=sampler, experiment="grow"))
        cmd = [sys.executable, "train.py"]
    else:
        raw_url = url.replace("postgresql://", "postgresql+psycopg://", 1)
        cmd = [sys.executable, "raw.py", raw_url, name, str(add), sampler]
    res = timed(cmd, root, env, root / f"{tag}.out")
    starts = sorted(float(x) for x in stamp.read_text().split()) if stamp.exists() else []
    done = completion_times(url, name, size)
    mean, median = spacing_ms(done)
    row = {"kind": kind, "peer": peer, "storage": storage, "sampler": sampler, "size": size,
           "added": len(done), "rc": res["rc"], "wall_s": res["wall_s"],
           "first_trial_s": starts[0] - res["start_epoch"] if starts else None,
           "ms_per_trial": mean, "ms_per_trial_median": median}
    if res["rc"] != 0:
        row["output_tail"] = res["output"][-3000:]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="0,20000")
    ap.add_argument("--add", type=int, default=200, help="trials added per run")
    ap.add_argument("--samplers", default="random,tpe")
    ap.add_argument("--storages", default="sqlite,postgresql")
    ap.add_argument("--peers", default="launcher,raw")
    ap.add_argument("--n-jobs", type=int, default=1)
    ap.add_argument("--resume-size", type=int, default=50000, help="0 skips the resume runs")
    ap.add_argument("--resume-trials", type=int, default=3)
    ap.add_argument("--postgres", help="an existing server's URL (default: start one)")
    ap.add_argument("--out", default=str(RESULTS / "growth.json"))
    args = ap.parse_args()
    info = machine()  # before the runs: the load average they start under
    storages = args.storages.split(",")
    peers = args.peers.split(",")
    samplers = args.samplers.split(",")
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        root = make_project(Path(tmp) / "project", TRAIN_SCRIPT)
        (root / "raw.py").write_text(RAW_SCRIPT)
        server = stack.enter_context(postgres(args.postgres)) if "postgresql" in storages \
            else None
        studies = Studies(Path(tmp), server)
        plan = [("growth", s, size, smp, args.add) for s in storages
                for size in map(int, args.sizes.split(",")) for smp in samplers]
        if args.resume_size:
            plan += [("resume", s, args.resume_size, smp, args.resume_trials)
                     for s in storages for smp in samplers]
        for kind, storage, size, sampler, add in plan:
            for peer in peers:  # interleaved: the two peers back to back on equal copies
                row = one(studies, root, peer, storage, size, sampler, add, args.n_jobs, kind)
                print({k: v for k, v in row.items() if k != "output_tail"}, flush=True)
                rows.append(row)
            if server is not None:  # keep only the templates
                server.drop_all(keep="hsb_tmpl_")
        build_s = studies.build_s

    growth = [r for r in rows if r["kind"] == "growth"]
    sizes = sorted({r["size"] for r in growth})
    table = []
    for peer in peers:
        for storage in storages:
            for sampler in samplers:
                by_size = {r["size"]: r for r in growth if (r["peer"], r["storage"],
                                                            r["sampler"]) == (peer, storage,
                                                                               sampler)}
                line: dict[str, Any] = {"peer": peer, "storage": storage, "sampler": sampler}
                for size in sizes:
                    line[f"ms/trial @{size}"] = by_size.get(size, {}).get("ms_per_trial")
                lo, hi = by_size.get(sizes[0], {}), by_size.get(sizes[-1], {})
                if lo.get("ms_per_trial") and hi.get("ms_per_trial") and len(sizes) > 1:
                    ratio = hi["ms_per_trial"] / lo["ms_per_trial"]
                    line["ratio"] = ratio
                    # The target is the launcher's storage cost; TPE's own cost grows with
                    # the study (it models every trial), so it is reported, not judged.
                    if peer == "launcher":
                        line["<= 1.5x"] = ("met" if ratio <= 1.5 else "not met") \
                            if sampler == "random" else "(sampler's cost)"
                table.append(line)
    resume = [{k: r[k] for k in ("peer", "storage", "sampler", "size", "first_trial_s",
                                 "wall_s", "rc")} for r in rows if r["kind"] == "resume"]
    for r in resume:
        if r["peer"] == "launcher" and r["sampler"] == "random":
            r["<= 2 s"] = "met" if (r["first_trial_s"] or 99) <= 2 else "not met"
    print(f"\nPer-trial cost, +{args.add} trivial trials, n_jobs {args.n_jobs}:\n")
    print(markdown_table(table, list(dict.fromkeys(k for t in table for k in t))))
    if resume:
        print(f"\nResume a {args.resume_size}-trial study ({args.resume_trials} more trials):\n")
        print(markdown_table(resume, list(dict.fromkeys(k for r in resume for k in r))))
    elapsed = time.perf_counter() - started
    print(f"\n(total {elapsed:.0f} s; bulk builds: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in build_s.items()) + ")")
    write_json(args.out, {"machine": info, "args": vars(args), "runs": rows,
                          "table": table, "resume": resume, "build_s": build_s,
                          "elapsed_s": elapsed})


if __name__ == "__main__":
    main()
