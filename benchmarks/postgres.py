"""This launcher against raw Optuna on PostgreSQL, side by side, whole processes from spawn to
exit, trivial objective (x ** 2).

Raw Optuna is the hand-written pattern: a parent creates the study, forks N workers, each
``optuna.load_study`` with ``optuna.storages.RDBStorage(url)`` at its default settings and
``study.optimize(obj, callbacks=[MaxTrialsCallback(n_trials, states=None)])``, TPE with
``constant_liar=True`` and a seed per worker. "AxB" is A processes started together on one
study, each with B workers (A launchers, or A raw parents). Every run gets a fresh database.

    python benchmarks/postgres.py                         # 1, 2, 4 workers, 2x2: ~1 min
    python benchmarks/postgres.py --many                  # + 4x16, 640 trials: ~5 min
    python benchmarks/postgres.py --scenarios 1,2x2 --trials 100 --repeats 2 \
        --postgres postgresql://postgres@127.0.0.1:55432/dev   # an existing server

By default it starts its own server (Debian's binaries, as tests/conftest.py does);
``--many`` always runs on a server of its own with ``--max-connections`` (100).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _bench import (RESULTS, PgServer, completion_times, env_with_repo, first_start,
                    launcher_config, machine, make_project, markdown_table, postgres,
                    run_together, state_counts, write_config, write_json)

RAW_SCRIPT = '''
import multiprocessing, sys, time
import optuna
from optuna.study import MaxTrialsCallback

URL, NAME, N_JOBS, N_TRIALS, SEED0 = (sys.argv[1], sys.argv[2], int(sys.argv[3]),
                                      int(sys.argv[4]), int(sys.argv[5]))


def objective(trial):
    x = trial.suggest_float("x", -10.0, 10.0)
    return x ** 2


def work(rank):
    study = optuna.load_study(study_name=NAME, storage=optuna.storages.RDBStorage(URL),
                              sampler=optuna.samplers.TPESampler(constant_liar=True,
                                                                 seed=SEED0 + rank))
    study.optimize(objective, callbacks=[MaxTrialsCallback(N_TRIALS, states=None)])


if __name__ == "__main__":
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for attempt in range(5):  # parents started together race to create the tables
        try:
            optuna.create_study(study_name=NAME, storage=URL, load_if_exists=True)
            break
        except Exception as exc:
            print(f"create_study attempt {attempt}: {type(exc).__name__}: {exc}", flush=True)
            time.sleep(0.2)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=work, args=(r,)) for r in range(N_JOBS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        print(f"raw: {len(bad)} worker(s) exited non-zero: {bad}", file=sys.stderr)
        sys.exit(1)
'''

TOO_MANY = ("too many clients", "remaining connection slots are reserved")


def parse_scenario(text: str) -> tuple[int, int]:
    """'4' -> (1 process, 4 workers); '2x2' -> (2, 2)."""
    if "x" in text:
        a, b = text.split("x")
        return int(a), int(b)
    return 1, int(text)


class ConnectionWatch:
    """Polls the server's connection count every ``interval`` s from its own connection."""

    def __init__(self, server: PgServer, interval: float = 0.1) -> None:
        self.server, self.interval = server, interval
        self.peak_all = self.peak_clients = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ConnectionWatch:
        self._conn = self.server.admin()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            row = self._conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE backend_type = 'client backend' AND "
                "pid <> pg_backend_pid()) FROM pg_stat_activity").fetchone()
            self.peak_all = max(self.peak_all, row[0])
            self.peak_clients = max(self.peak_clients, row[1])
            self.samples += 1
            self._stop.wait(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._conn.close()


def one(server: PgServer, root: Path, peer: str, procs: int, jobs: int, trials: int, tag: str,
        watch: bool = False) -> dict[str, Any]:
    url = server.fresh_db(f"hsb_{tag}")
    env = env_with_repo()
    if peer == "launcher":
        write_config(root, launcher_config(tag, trials, n_jobs=jobs, storage=url))
        cmds = [[sys.executable, "train.py"] for _ in range(procs)]
    else:
        raw_url = url.replace("postgresql://", "postgresql+psycopg://", 1)
        cmds = [[sys.executable, "raw.py", raw_url, "raw", str(jobs), str(trials), str(100 * i)]
                for i in range(procs)]
    log_at = server.log_size()
    if watch:
        with ConnectionWatch(server) as w:
            res = run_together(cmds, root, env, root / f"{tag}.{peer}")
        peaks = {"peak_connections": w.peak_all, "peak_client_connections": w.peak_clients,
                 "polls": w.samples}
    else:
        res, peaks = run_together(cmds, root, env, root / f"{tag}.{peer}"), {}
    counts = state_counts(url)
    # Steady state: completions after the first, over the time between first and last.
    done = completion_times(url, f"bench_{tag}" if peer == "launcher" else "raw", 0)
    steady = (len(done) - 1) / (done[-1] - done[0]) if len(done) > 2 else None
    complete = counts.get("COMPLETE", 0)
    finished = complete + counts.get("PRUNED", 0)
    outputs = "\n".join(res["outputs"])
    log = server.log_since(log_at)
    row = {"peer": peer, "scenario": f"{procs}x{jobs}" if procs > 1 else str(jobs),
           "workers": procs * jobs, "requested": trials, "recorded": sum(counts.values()),
           "finished": finished, "states": counts, "exact": finished == trials,
           "wall_s": res["wall_s"], "trials_per_s": finished / res["wall_s"],
           "steady_trials_per_s": steady,
           "first_trial_s": (first_start(url) or res["start_epoch"]) - res["start_epoch"],
           "nonzero_exits": sum(1 for rc in res["rcs"] if rc != 0), "rcs": res["rcs"],
           "too_many_in_output": sum(outputs.lower().count(t) for t in TOO_MANY),
           "too_many_in_server_log": sum(log.lower().count(t) for t in TOO_MANY),
           "tracebacks": outputs.count("Traceback (most recent call last)"), **peaks}
    if row["nonzero_exits"] or row["tracebacks"]:
        row["output_tail"] = outputs[-3000:]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--postgres", help="an existing server's URL (default: start one)")
    ap.add_argument("--scenarios", default="1,2,4,2x2",
                    help="comma-separated: N workers, or AxB (A processes x B workers)")
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--many", action="store_true", help="also the 4x16 connection scenario")
    ap.add_argument("--many-only", action="store_true", help="only the 4x16 scenario")
    ap.add_argument("--many-shape", default="4x16")
    ap.add_argument("--many-trials", type=int, default=640)
    ap.add_argument("--max-connections", type=int, default=100)
    ap.add_argument("--out", default=str(RESULTS / "postgres.json"))
    args = ap.parse_args()
    info = machine()  # before the runs: the load average they start under

    rows: list[dict[str, Any]] = []
    many: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = make_project(Path(tmp))
        (root / "raw.py").write_text(RAW_SCRIPT)
        if not args.many_only:
            with postgres(args.postgres) as server:
                for rep in range(args.repeats):
                    for scen in args.scenarios.split(","):
                        procs, jobs = parse_scenario(scen)
                        # Interleaved, alternating which peer goes first.
                        peers = ("launcher", "raw") if rep % 2 == 0 else ("raw", "launcher")
                        for peer in peers:
                            tag = f"{scen}_{peer}_{rep}".replace("x", "by")
                            row = one(server, root, peer, procs, jobs, args.trials, tag)
                            row["repeat"] = rep
                            print({k: v for k, v in row.items() if k != "output_tail"},
                                  flush=True)
                            rows.append(row)
                            server.drop_all()
        if args.many or args.many_only:
            procs, jobs = parse_scenario(args.many_shape)
            with postgres(None, max_connections=args.max_connections) as server:
                for peer in ("launcher", "raw"):
                    row = one(server, root, peer, procs, jobs, args.many_trials,
                              f"many_{peer}", watch=True)
                    row["max_connections"] = args.max_connections
                    print({k: v for k, v in row.items() if k != "output_tail"}, flush=True)
                    many.append(row)
                    server.drop_all()

    summary = []
    for scen in dict.fromkeys(r["scenario"] for r in rows):
        def med(peer: str, key: str, scen: str = scen) -> float:
            return statistics.median(r[key] for r in rows
                                     if r["scenario"] == scen and r["peer"] == peer)

        ours, raw = med("launcher", "trials_per_s"), med("raw", "trials_per_s")
        steady = med("launcher", "steady_trials_per_s") / med("raw", "steady_trials_per_s")
        summary.append({
            "scenario": scen, "launcher trials/s": ours, "raw trials/s": raw,
            "ratio": ours / raw, "steady-state ratio": steady,
            "launcher first trial s": med("launcher", "first_trial_s"),
            "raw first trial s": med("raw", "first_trial_s"),
            "launcher finished/requested": " ".join(
                f"{r['finished']}/{r['requested']}" for r in rows
                if r["scenario"] == scen and r["peer"] == "launcher"),
            "raw recorded/requested": " ".join(
                f"{r['recorded']}/{r['requested']}" for r in rows
                if r["scenario"] == scen and r["peer"] == "raw"),
            "target >= 3x": "met" if ours / raw >= 3 else "not met"})
    print()
    if summary:
        print(f"Trivial objective, {args.trials} trials, median of {args.repeats}:\n")
        print(markdown_table(summary, list(summary[0])))
    if many:
        print(f"\n{args.many_shape}, {args.many_trials} trials, max_connections "
              f"{args.max_connections}:\n")
        print(markdown_table(many, ["peer", "recorded", "finished", "exact", "wall_s",
                                    "trials_per_s", "steady_trials_per_s", "nonzero_exits",
                                    "too_many_in_output",
                                    "too_many_in_server_log", "tracebacks", "peak_connections",
                                    "peak_client_connections"]))
    elapsed = time.perf_counter() - started
    print(f"\n(total {elapsed:.0f} s)")
    write_json(args.out, {"machine": info, "args": vars(args), "runs": rows,
                          "summary": summary, "many": many, "elapsed_s": elapsed})


if __name__ == "__main__":
    main()
