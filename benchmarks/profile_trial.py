"""What one trial costs on SQLite: SQL statements and transactions per trial, and a cProfile of
the worker process, for this launcher and for raw Optuna side by side.

Both run as users run them (the launcher on a throwaway project; raw Optuna as a parent that
creates the study and forks one worker that calls ``study.optimize`` with ``RDBStorage``),
with a ``sitecustomize`` put first on PYTHONPATH that

  * with HS_TRACE_DIR set, wraps ``sqlite3.connect`` so that every connection traces its
    statements (``set_trace_callback``) to ``<dir>/<pid>.sql``, written unbuffered so that
    nothing is lost when a worker leaves with ``os._exit``;
  * with HS_PROFILE_DIR set, starts ``cProfile`` in every process forked from a Python process
    (the launcher's workers come from its fork server, raw Optuna's from its parent) and dumps
    ``<dir>/<pid>.prof`` when the process leaves, through ``os._exit`` or normally.

Worker processes are every traced process except the one started here (the launcher, or the
raw parent); statements per trial = their statements / trials recorded.

    python benchmarks/profile_trial.py                      # 300 trials, TPE, ~35 s
    python benchmarks/profile_trial.py --trials 100 --sampler random --top 15
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import pstats
import re
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

from _bench import (REPO, RESULTS, env_with_repo, launcher_config, machine, make_project,
                    markdown_table, spawn, state_counts, write_config, write_json)

SITECUSTOMIZE = '''
import os

_trace_dir = os.environ.get("HS_TRACE_DIR")
_prof_dir = os.environ.get("HS_PROFILE_DIR")

if _trace_dir:
    import sqlite3
    import sqlite3.dbapi2 as _dbapi2

    _connect = sqlite3.connect
    _fds = {}

    def _trace(statement):
        pid = os.getpid()
        fd = _fds.get(pid)
        if fd is None:
            fd = _fds[pid] = os.open(os.path.join(_trace_dir, f"{pid}.sql"),
                                     os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(fd, (" ".join(statement.split()) + "\\n").encode())

    def connect(*args, **kwargs):
        conn = _connect(*args, **kwargs)
        conn.set_trace_callback(_trace)
        return conn

    sqlite3.connect = _dbapi2.connect = connect

if _prof_dir:
    import atexit
    import cProfile

    _profile = [None]

    def _start():
        _profile[0] = cProfile.Profile()
        _profile[0].enable()

    def _dump():
        prof, _profile[0] = _profile[0], None
        if prof is not None:
            prof.disable()
            prof.dump_stats(os.path.join(_prof_dir, f"{os.getpid()}.prof"))

    _exit = os._exit

    def _exit_with_stats(code):
        _dump()
        _exit(code)

    os.register_at_fork(after_in_child=_start)
    os._exit = _exit_with_stats
    atexit.register(_dump)
'''

RAW_SCRIPT = '''
import multiprocessing, sys
import optuna
from optuna.study import MaxTrialsCallback

URL, N_TRIALS, SAMPLER = sys.argv[1], int(sys.argv[2]), sys.argv[3]


def objective(trial):
    return trial.suggest_float("x", -10.0, 10.0) ** 2


def work():
    sampler = (optuna.samplers.RandomSampler(seed=0) if SAMPLER == "random"
               else optuna.samplers.TPESampler(seed=0))
    study = optuna.load_study(study_name="raw", storage=optuna.storages.RDBStorage(
        URL, engine_kwargs={"connect_args": {"timeout": 60}}), sampler=sampler)
    study.optimize(objective, callbacks=[MaxTrialsCallback(N_TRIALS, states=None)])


if __name__ == "__main__":
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name="raw", storage=URL)
    p = multiprocessing.get_context("fork").Process(target=work)
    p.start()
    p.join()
    sys.exit(p.exitcode)
'''

_LITERALS = re.compile(r"'(?:[^']|'')*'|-?\b\d+(?:\.\d+)?(?:e[-+]?\d+)?\b", re.IGNORECASE)
# Frames that only wrap the worker's work (process start-up, context managers): left out of the
# printed top entries, kept in the JSON.
_WRAPPERS = ("multiprocessing", "contextlib.py", "builtins.next", "raw.py")


def shape(statement: str) -> str:
    """A statement with its literals replaced by ?, and long IN lists folded."""
    text = _LITERALS.sub("?", statement)
    return re.sub(r"\(\?(?:, ?\?)+\)", "(?, ...)", text)


def kind(statement: str) -> str:
    word = statement.split(None, 1)[0].upper() if statement.strip() else ""
    return word if word in ("SELECT", "INSERT", "UPDATE", "DELETE", "BEGIN", "COMMIT",
                            "ROLLBACK", "PRAGMA") else "other"


def read_traces(folder: Path, main_pid: int) -> tuple[list[str], list[str]]:
    """(statements of worker processes, statements of the process started here)."""
    workers: list[str] = []
    main: list[str] = []
    for path in folder.glob("*.sql"):
        lines = path.read_text(errors="replace").splitlines()
        (main if int(path.stem) == main_pid else workers).extend(lines)
    return workers, main


def profile_top(folder: Path, main_pid: int, top: int) -> tuple[str, list[dict[str, Any]]]:
    files = [str(p) for p in folder.glob("*.prof") if int(p.stem) != main_pid]
    if not files:
        return "(no worker profile written)", []
    stats = pstats.Stats(*files, stream=io.StringIO())
    stats.sort_stats("cumulative")
    text = io.StringIO()
    stats.stream = text
    stats.print_stats(top)
    entries = []
    table = stats.stats  # type: ignore[attr-defined]
    for func, (_cc, nc, tt, ct, _callers) in sorted(table.items(),
                                                    key=lambda kv: -kv[1][3])[:top]:
        entries.append({"function": f"{Path(func[0]).name}:{func[1]}({func[2]})",
                        "file": without_prefixes(func[0]), "ncalls": nc, "tottime_s": tt,
                        "cumtime_s": ct})
    return without_prefixes(text.getvalue()), entries


def without_prefixes(text: str) -> str:
    """Paths as ``site-packages/...``, ``hparam_search/...`` or relative to the standard library,
    so saved results carry no machine's folders."""
    for prefix, short in ((sysconfig.get_paths()["purelib"] + os.sep, "site-packages/"),
                          (sysconfig.get_paths()["stdlib"] + os.sep, ""),
                          (str(REPO) + os.sep, ""), (tempfile.gettempdir() + os.sep, "<tmp>/")):
        text = text.replace(prefix, short)
    return text


def run(root: Path, peer: str, mode: str, trials: int, sampler: str, n_jobs: int
        ) -> dict[str, Any]:
    tag = f"{peer}_{mode}"
    folder = root / tag
    folder.mkdir()
    env = env_with_repo()
    env["PYTHONPATH"] = f"{root / 'site'}:{env['PYTHONPATH']}"
    env["HS_TRACE_DIR" if mode == "trace" else "HS_PROFILE_DIR"] = str(folder)
    if peer == "launcher":
        write_config(root, launcher_config(tag, trials, n_jobs=n_jobs, sampler=sampler))
        url = f"sqlite:///{root / 'optuna_studies' / f'bench_{tag}.db'}"
        cmd = [sys.executable, "train.py"]
    else:
        url = f"sqlite:///{root / f'raw_{tag}.db'}"
        cmd = [sys.executable, "raw.py", url, str(trials), sampler]
    r = spawn(cmd, root, env, root / f"{tag}.out")
    res = r.finish()
    main_pid = r.proc.pid
    counts = state_counts(url)
    n = sum(counts.values())
    row: dict[str, Any] = {"peer": peer, "mode": mode, "trials": n, "states": counts,
                           "rc": res["rc"], "wall_s": res["wall_s"]}
    if res["rc"] != 0:
        row["output_tail"] = r.output()[-3000:]
    if mode == "trace":
        workers, main = read_traces(folder, main_pid)
        kinds = collections.Counter(kind(s) for s in workers)
        row["worker_statements_per_trial"] = len(workers) / n
        row["per_trial_by_kind"] = {k: v / n for k, v in kinds.most_common()}
        row["main_process_statements"] = len(main)
        shapes = collections.Counter(shape(s) for s in workers)
        row["top_shapes_per_trial"] = [{"per_trial": c / n, "statement": s[:160]}
                                       for s, c in shapes.most_common(25)]
    else:
        text, entries = profile_top(folder, main_pid, 40)
        row["profile_text"] = text
        row["profile_top"] = entries
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--sampler", default="tpe", choices=("tpe", "random"))
    ap.add_argument("--n-jobs", type=int, default=1, help="launcher workers (raw: always 1)")
    ap.add_argument("--top", type=int, default=20, help="profile entries printed")
    ap.add_argument("--out", default=str(RESULTS / "profile_trial.json"))
    args = ap.parse_args()
    info = machine()  # before the runs: the load average they start under
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = make_project(Path(tmp))
        (root / "site").mkdir()
        (root / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
        (root / "raw.py").write_text(RAW_SCRIPT)
        for mode in ("trace", "profile"):
            for peer in ("launcher", "raw"):
                row = run(root, peer, mode, args.trials, args.sampler, args.n_jobs)
                print({k: v for k, v in row.items() if k in ("peer", "mode", "trials", "rc",
                                                             "wall_s")}, flush=True)
                rows.append(row)

    traces = [r for r in rows if r["mode"] == "trace"]
    kinds = list(dict.fromkeys(k for r in traces for k in r.get("per_trial_by_kind", {})))
    table = [{"peer": r["peer"], "trials": r["trials"],
              "statements/trial": r.get("worker_statements_per_trial"),
              **{k: r.get("per_trial_by_kind", {}).get(k, 0.0) for k in kinds},
              "launcher/parent statements": r.get("main_process_statements")} for r in traces]
    print(f"\nSQL per trial in the worker process, SQLite, {args.sampler}, {args.trials} trials:"
          "\n")
    print(markdown_table(table, list(table[0])))
    for r in traces:
        print(f"\nMost frequent statements per trial ({r['peer']}):\n")
        print(markdown_table(r["top_shapes_per_trial"][:12], ["per_trial", "statement"]))
    for r in (r for r in rows if r["mode"] == "profile"):
        per_trial = None
        if r["profile_top"]:  # the whole worker process, from fork to exit
            per_trial = 1000 * r["profile_top"][0]["cumtime_s"] / max(r["trials"], 1)
        print(f"\ncProfile of the worker ({r['peer']}), top {args.top} by cumulative time "
              f"(~{per_trial or 0:.1f} ms of profiled time per trial):\n")
        shown = [e for e in r["profile_top"]
                 if not any(w in e["file"] + e["function"] for w in _WRAPPERS)]
        print(markdown_table(shown[:args.top], ["function", "ncalls", "tottime_s",
                                                "cumtime_s"]))
    elapsed = time.perf_counter() - started
    print(f"\n(total {elapsed:.0f} s)")
    write_json(args.out, {"machine": info, "args": vars(args), "runs": rows,
                          "table": table, "elapsed_s": elapsed})


if __name__ == "__main__":
    main()
