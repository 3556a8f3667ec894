"""The `hparam-search` reading commands on a large study, against plain Optuna, side by side,
as whole processes from spawn to exit, on SQLite and PostgreSQL.

The study (``--size`` trials, 3 float parameters, 5 reported steps each) is made to look like
one the launcher wrote: the launcher runs ``--seed-trials`` trials first (so it has a run record
and trials with their owner, run, folder and log attributes), then the rest is bulk-added by SQL
through the launcher's own storage with the same attributes (seconds, not hours).

Timed, each ``--repeats`` times (median), interleaved:
  show      hparam-search show STUDY
  best      hparam-search best STUDY
  export    hparam-search export STUDY -o x.parquet
  df        optuna.load_study(...).trials_dataframe() written to parquet (plain Optuna, URL)
  best_raw  print(optuna.load_study(...).best_trial)
  ls        hparam-search ls DIR on ``--ls-copies`` copies of the SQLite study (renamed), against
            ls_raw: optuna.get_all_study_summaries(url) for each file of a folder of only
            ``--ls-raw-copies`` of them (it reads every trial of every study: minutes for 20)

    python benchmarks/large_study.py                            # 50,000 trials, ~3 min
    python benchmarks/large_study.py --repeats 3 --ls-raw-copies 1   # median of 3, ~5.5 min
    python benchmarks/large_study.py --size 5000 --storages sqlite   # a quick check

`hparam-search` is run as ``python -m hparam_search.cli``: what the installed command runs,
without the version manager's shell shim in front of it.

Targets: show, best, export each <= 10 s; show and export >= 5x faster than df; best no slower
than best_raw; ls on 20 studies <= 5 s.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _bench import (RESULTS, TRAIN_SCRIPT, bulk_add_trials, check_bulk_trial, driver_url,
                    env_with_repo, launcher_config, machine, make_project, markdown_table,
                    postgres, timed, write_config, write_json)

DF_SCRIPT = '''
import sys
import optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name=sys.argv[2], storage=sys.argv[1])
df = study.trials_dataframe()
df.to_parquet(sys.argv[3])
print(len(df))
'''

BEST_SCRIPT = '''
import sys
import optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
print(optuna.load_study(study_name=sys.argv[2], storage=sys.argv[1]).best_trial)
'''

LS_SCRIPT = '''
import pathlib, sys
import optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.db")):
    for s in optuna.get_all_study_summaries(f"sqlite:///{path}", include_best_trial=True):
        print(s.study_name, s.n_trials, s.best_trial.value if s.best_trial else None)
'''

CLI = [sys.executable, "-m", "hparam_search.cli"]
PARAMS = ("x", "y", "z")
STEPS = 5


def build(root: Path, storage: str, url: str | None, size: int, seed_trials: int
          ) -> tuple[str, str, dict[str, Any]]:
    """The large study: (its URL, its name, how long each part took)."""
    import hparam_search
    from hparam_search.storage import close_storage

    tag = storage
    name = f"large_{tag}"
    write_config(root, launcher_config(tag, seed_trials, n_jobs=1, storage=url, params=PARAMS,
                                       experiment="large", steps=STEPS))
    res = timed([sys.executable, "train.py"], root, env_with_repo(), root / f"seed_{tag}.out")
    if res["rc"] != 0:
        raise SystemExit(f"the seeding launch failed:\n{res['output'][-3000:]}")
    url = url or f"sqlite:///{root / 'optuna_studies' / f'{name}.db'}"
    st = hparam_search.open_storage(url)
    sid = st.get_study_id_from_name(name)
    template = max(st.get_all_trials(sid, deepcopy=False), key=lambda t: t.number)
    took = bulk_add_trials(st, name, size - seed_trials, params=PARAMS, steps=STEPS,
                           user_attrs=template.user_attrs, system_attrs=template.system_attrs,
                           template_number=template.number)
    close_storage(st)  # its own connections and SQLAlchemy's
    check_bulk_trial(url, name, size - 1, PARAMS, STEPS)
    return url, name, {"seed_launch_s": res["wall_s"], "bulk_s": took}


def commands(root: Path, url: str, name: str, storage: str) -> dict[str, list[str]]:
    study = url.removeprefix("sqlite:///") if storage == "sqlite" else f"{url}#{name}"
    raw_url = driver_url(url)
    return {
        "show": [*CLI, "show", study],
        "df": [sys.executable, "df.py", raw_url, name, str(root / f"df_{storage}.parquet")],
        "export": [*CLI, "export", study, "-o", str(root / f"export_{storage}.parquet")],
        "best": [*CLI, "best", study],
        "best_raw": [sys.executable, "best.py", raw_url, name],
    }


def ls_folder(root: Path, db: Path, copies: int, name: str) -> Path:
    folder = root / name
    folder.mkdir(exist_ok=True)
    with contextlib.closing(sqlite3.connect(db)) as conn:  # one whole file to copy
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for i in range(copies):
        target = folder / f"study_{i:02d}.db"
        shutil.copy(db, target)
        with contextlib.closing(sqlite3.connect(target)) as conn:
            conn.execute("UPDATE studies SET study_name = ?", (f"study_{i:02d}",))
            conn.commit()
    return folder


def parquet_rows(path: Path) -> int | None:
    try:
        import pyarrow.parquet as pq

        return pq.read_metadata(path).num_rows
    except Exception:  # noqa: BLE001 - reported as missing
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=50000)
    ap.add_argument("--seed-trials", type=int, default=5)
    ap.add_argument("--storages", default="sqlite,postgresql")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--ls-copies", type=int, default=20)
    ap.add_argument("--ls-raw-copies", type=int, default=2, help="0 skips ls_raw")
    ap.add_argument("--postgres", help="an existing server's URL (default: start one)")
    ap.add_argument("--out", default=str(RESULTS / "large_study.json"))
    args = ap.parse_args()
    info = machine()  # before the runs: the load average they start under
    storages = args.storages.split(",")
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    builds: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        root = make_project(Path(tmp), TRAIN_SCRIPT)
        for name, text in (("df.py", DF_SCRIPT), ("best.py", BEST_SCRIPT), ("ls.py", LS_SCRIPT)):
            (root / name).write_text(text)
        server = stack.enter_context(postgres(args.postgres)) if "postgresql" in storages \
            else None
        env = env_with_repo()
        for storage in storages:
            url = server.fresh_db("hsb_large") if storage == "postgresql" and server else None
            url, name, builds[storage] = build(root, storage, url, args.size, args.seed_trials)
            print(f"built {storage}: {builds[storage]}", flush=True)
            cmds = commands(root, url, name, storage)
            if storage == "sqlite":
                db = Path(url.removeprefix("sqlite:///"))
                cmds["ls"] = [*CLI, "ls", str(ls_folder(root, db, args.ls_copies, "many"))]
                if args.ls_raw_copies:
                    few = ls_folder(root, db, args.ls_raw_copies, "few")
                    cmds["ls_raw"] = [sys.executable, "ls.py", str(few)]
            for rep in range(args.repeats):
                for what, cmd in cmds.items():
                    res = timed(cmd, root, env, root / f"{storage}_{what}_{rep}.out")
                    row = {"storage": storage, "what": what, "repeat": rep, "rc": res["rc"],
                           "wall_s": res["wall_s"]}
                    if what in ("export", "df"):  # the parquet file is the last argument
                        row["rows"] = parquet_rows(Path(cmd[-1]))
                    if res["rc"] != 0:
                        row["output_tail"] = res["output"][-3000:]
                    print({k: v for k, v in row.items() if k != "output_tail"}, flush=True)
                    rows.append(row)

    def med(storage: str, what: str) -> float | None:
        walls = [r["wall_s"] for r in rows if (r["storage"], r["what"]) == (storage, what)
                 and r["rc"] == 0]
        return statistics.median(walls) if walls else None

    table = []
    for storage in storages:
        m = {w: med(storage, w) for w in ("show", "best", "export", "df", "best_raw", "ls",
                                          "ls_raw")}

        def verdict(ok: bool | None) -> str:
            return "?" if ok is None else ("met" if ok else "not met")

        def within(x: float | None, limit: float) -> bool | None:
            return None if x is None else x <= limit

        def faster(a: float | None, b: float | None, times: float) -> bool | None:
            return None if a is None or b is None else b / a >= times

        table.append({"storage": storage, **{f"{k} s": v for k, v in m.items() if v},
                      "df/show": m["df"] / m["show"] if m["df"] and m["show"] else None,
                      "df/export": m["df"] / m["export"] if m["df"] and m["export"] else None,
                      "all <= 10 s": verdict(all(within(m[k], 10) for k in ("show", "best",
                                                                            "export"))),
                      ">= 5x df": verdict(faster(m["show"], m["df"], 5) and
                                          faster(m["export"], m["df"], 5)),
                      "best <= best_raw": verdict(None if not m["best"] or not m["best_raw"]
                                                  else m["best"] <= m["best_raw"]),
                      **({"ls <= 5 s": verdict(within(m["ls"], 5))} if m["ls"] else {})})
    print(f"\n{args.size} trials, median of {args.repeats}:\n")
    print(markdown_table(table, list(dict.fromkeys(k for t in table for k in t))))
    elapsed = time.perf_counter() - started
    print(f"\n(total {elapsed:.0f} s)")
    write_json(args.out, {"machine": info, "args": vars(args), "builds": builds,
                          "runs": rows, "table": table, "elapsed_s": elapsed})


if __name__ == "__main__":
    main()
