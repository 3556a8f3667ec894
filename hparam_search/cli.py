"""The ``hparam-search`` command: parsing, printing, exit codes; the logic lives in results/."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from . import results as rp
from .config import display_path
from .console import quiet_stdout
from .errors import HparamSearchError
from .storage import STATES

EXIT_USAGE = 2
STUDY_HELP = ("a .db or journal file, a study name found in ./optuna_studies, or a storage URL "
              "(add #NAME when it holds several studies)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hparam-search",
        description="Look at hyperparameter searches run with hparam_search.")
    parser.add_argument("--version", action="version", version=f"hparam-search {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("ls", help="list the studies in a folder",
                       description="List every study in a folder's .db files (a project folder "
                                   "is looked into for optuna_studies/).")
    p.add_argument("folder", nargs="?", help="folder to look in (default: ./optuna_studies)")

    p = sub.add_parser("show", help="summary and top trials of a study",
                       description="Directions, trials by state, best trial, wall time, the "
                                   "runs and configs the study ran with, and the top trials "
                                   "(or the trials in one state).")
    p.add_argument("study", help=STUDY_HELP)
    p.add_argument("-n", type=int, default=10, help="how many trials to list (default 10)")
    p.add_argument("--state", type=str.upper, choices=[*STATES, "ALL"], metavar="STATE",
                   help="list the trials in this state (COMPLETE, PRUNED, FAIL, RUNNING, "
                        "WAITING or all), newest first, with why they ended")

    p = sub.add_parser("trial", help="everything about one trial",
                       description="One trial: state and why, values, parameters, the whole "
                                   "config it ran with, intermediate values, traceback, log "
                                   "file, retry links.")
    p.add_argument("study", help=STUDY_HELP)
    p.add_argument("number", type=int, help="the trial number")

    p = sub.add_parser("best", help="the best trial's full config",
                       description="Print the best trial's full config (the fixed values of "
                                   "the run it ran under plus its parameters) as YAML, ready "
                                   "for train(config) or as the start of a new search.")
    p.add_argument("study", help=STUDY_HELP)
    p.add_argument("--yaml", metavar="FILE", help="write it to FILE instead of printing it")
    p.add_argument("--artifacts", metavar="DIR",
                   help="also copy the files the best trial saved with save_artifact into DIR")

    p = sub.add_parser("export", help="every trial as a table file",
                       description="One row per trial: number, state, value(s), every parameter, "
                                   "duration, worker, error, log file, run and stored metrics. "
                                   "The format follows the file's extension unless --format "
                                   "says otherwise.")
    p.add_argument("study", help=STUDY_HELP)
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="e.g. trials.csv, trials.json, trials.jsonl or trials.parquet")
    p.add_argument("--format", choices=rp.EXPORT_FORMATS)

    p = sub.add_parser("plot", help="PNG plots and an HTML report",
                       description="Optimization history, intermediate values, parameter "
                                   "importances, parameter vs value, parallel coordinates, "
                                   "contour of the two most important parameters, Pareto "
                                   "front: PNG files and one self-contained report.html.")
    p.add_argument("study", help=STUDY_HELP)
    p.add_argument("-o", "--output", metavar="DIR",
                   help="where to write them (default: ./plots/<study>/)")

    p = sub.add_parser("dashboard", help="open the study in optuna-dashboard",
                       description="Start optuna-dashboard on 127.0.0.1 for the study's storage "
                                   "and print the study's address.")
    p.add_argument("study", help=STUDY_HELP)
    p.add_argument("--port", type=int, default=8080)

    p = sub.add_parser("slurm", help="run a study as a Slurm job array",
                       description="Submit a search as a Slurm job array (the script's slurm: "
                                   "settings), see its tasks and trials, or cancel it.")
    jobs = p.add_subparsers(dest="slurm_command", metavar="ACTION", required=True)
    q = jobs.add_parser("submit", help="write the sbatch script and submit it",
                        description="Write <save_db_directory>/<study>/slurm/<time>.sbatch, a "
                                    "job array whose tasks each run the script's launcher, and "
                                    "submit it with sbatch.")
    q.add_argument("script", help="the training script (decorated with @hparam_search)")
    q.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[],
                   metavar="KEY=VALUE", help="config overrides, as for the script itself")
    q.add_argument("--config", metavar="PATH", help="another YAML file, as for the script")
    q.add_argument("--dry-run", action="store_true", help="print the script; submit nothing")
    for action, text in (("status", "the array's tasks as Slurm sees them, and the trials"),
                         ("cancel", "cancel the array: running tasks first get SIGTERM, so "
                                    "their trials are retried later")):
        q = jobs.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        q.add_argument("study", help=STUDY_HELP + ", or the training script")
        q.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[],
                       metavar="KEY=VALUE", help="with a script: the overrides it was "
                                                 "submitted with (storage=..., tag=...)")
        q.add_argument("--config", metavar="PATH", help="with a script: its other YAML file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        return COMMANDS[args.command](args)
    except HparamSearchError as exc:
        if os.environ.get("HPARAM_SEARCH_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)
    except BrokenPipeError:
        quiet_stdout()
        return 0
    except KeyboardInterrupt:  # Ctrl-C: the shell's convention, no traceback
        print(file=sys.stderr)
        return 130


def _ls(args: argparse.Namespace) -> int:
    folder = rp.study_folder(args.folder)
    table = []
    for path in sorted(folder.glob("*.db")):
        try:
            url = rp.storage_url_of(path)
            names = rp.study_names(url)
        except HparamSearchError:
            continue
        for name in names:
            with rp.StudyReader(url, name) as reader:
                s = rp.summary(reader)
            kinds = s["pruned_kinds"]
            pruned = " + ".join(f"{n} ({k})" for k, n in kinds.items() if n) or "0"
            table.append({"study": s["study"], "file": display_path(path),
                          "COMPLETE": s["states"].get("COMPLETE", 0), "PRUNED": pruned,
                          "FAIL": s["states"].get("FAIL", 0),
                          "RUNNING": s["states"].get("RUNNING", 0),
                          "best": _best_text(s["best"]), "last activity": s["last_activity"]})
    if not table:
        print(f"no studies in {display_path(folder)}")
        return 0
    print(rp.format_table(table, list(table[0]), full=("file",)))
    return 0


def _best_text(best: object) -> object:
    if isinstance(best, dict):
        return best["value"]
    if isinstance(best, list):
        return f"{len(best)} on the Pareto front"
    return None


def _show(args: argparse.Namespace) -> int:
    ref = rp.resolve(args.study)
    with rp.StudyReader(ref.url, ref.name) as reader:
        s = rp.summary(reader)
        if not s["trials"]:
            raise HparamSearchError(f"study '{s['study']}' has no trials yet")
        _print_summary(reader, s)
        if args.state:
            states = list(STATES) if args.state == "ALL" else [args.state]
            listed = reader.records(states=states)
            listed = sorted(listed, key=lambda t: t.number, reverse=True)[: args.n]
            title = f"{args.state.lower()} trials" if args.state != "ALL" else "trials"
            print(f"\n{title} ({len(listed)} shown, newest first):" if listed else
                  f"\nno {args.state} trials")
            by_state = True
        else:
            listed = reader.ranked(args.n) if len(reader.directions) == 1 else reader.best()
            print(f"\ntop {len(listed)} trials:" if len(reader.directions) == 1 else
                  f"\npareto front ({len(listed)} trials):")
            by_state = False
        if listed:
            table = rp.rows(reader, listed)
            for row, record in zip(table, listed):
                row["why"] = _why(record)
            params = sorted({p for t in listed for p in t.params})
            values = reader.value_columns()
            varying = sorted({k for row in table for k in row if k.startswith("config.")})
            runs = ["run", *varying] if varying else []
            retried = ["retry_of", "attempt"] if any(r["retry_of"] is not None
                                                     for r in table) else []
            # Where each trial ran, for a study run as a Slurm job array.
            cluster = ["slurm_job", "slurm_task", "slurm_node"] if any(
                "slurm_job" in row for row in table) else []
            columns = ["number", *(["state"] if by_state else []), *values, *params, *runs,
                       *retried, *(["why"] if by_state else []), "duration_s", "worker",
                       *cluster, "log_file"]
            print(rp.format_table(table, columns))
    return 0


def _print_summary(reader: rp.StudyReader, s: dict[str, Any]) -> None:
    print(f"study        {s['study']}")
    print(f"storage      {_storage_text(reader.url)}")
    print(f"directions   {', '.join(s['directions'])}")
    print(f"trials       {s['trials']}: {s['states_text']}")
    if s["wall_s"] is not None:
        print(f"wall time    {s['wall_s']:.1f}s (first start to last finish)")
    print(f"last active  {s['last_activity']}")
    best = s["best"]
    if isinstance(best, dict):
        print(f"best         trial {best['number']}: value={best['value']:.6g}  "
              + " ".join(f"{k}={v}" for k, v in best["params"].items()))
    elif isinstance(best, list):
        print(f"pareto front {len(best)} trials")
    runs = s["runs"]
    varying = rp.varying_config(runs)
    if len(runs) > 1:
        differ = sorted({k for part in varying.values() for k in part})
        note = (f"; their fixed values differ in {', '.join(differ)} (see the run and config.* "
                f"columns)" if differ else "; all with the same fixed values")
        print(f"runs         {len(runs)}{note}")
    chains = reader.retry_chains()
    if chains:
        shown = ", ".join(" -> ".join(map(str, c)) for c in chains[:8])
        more = f", and {len(chains) - 8} more" if len(chains) > 8 else ""
        print(f"retries      {len(chains)} interrupted configuration"
              f"{'s' if len(chains) != 1 else ''} re-run: {shown}{more}")
    run = s["run"]
    if run:
        git = run.get("git") or {}
        print(f"last run     {run.get('started')} on {run.get('host')} "
              f"(python {run.get('python')}, " + ", ".join(
                  f"{k} {v}" for k, v in (run.get('versions') or {}).items()) + ")")
        print(f"command      {run.get('command')}")
        print(f"script       {run.get('script')}")
        if git:
            dirty = " (uncommitted changes)" if git.get("dirty") else ""
            print(f"git          {git.get('commit')}{dirty}")
        # The config the best trial ran with (the latest run's when no trial completed).
        shown, label = run, "config (last run)"
        if isinstance(best, dict):
            from .storage import run_of_trial

            shown = run_of_trial(best["record"], runs) or run
            label = f"config of the best trial (run {shown.get('id')})"
        print(f"{label}:")
        for line in (shown.get("config") or "").rstrip().splitlines():
            print(f"  {line}")


def _storage_text(url: str) -> str:
    from .storage import describe

    text = describe(url)
    return display_path(Path(text)) if text.startswith("/") else text


def _why(record: rp.TrialRecord) -> str | None:
    """Why a trial ended as it did, in one line."""
    from .storage.counts import pruned_kind

    why = None
    if record.state == "PRUNED":
        reason = record.user_attrs.get("error") or record.user_attrs.get("prune_reason") or ""
        why = f"{pruned_kind(record)}: {reason}".rstrip(": ")
    elif record.state == "FAIL":
        why = record.system_attrs.get("fail_reason") or record.user_attrs.get("error")
    return str(why).splitlines()[0][:120] if why else None


def _trial(args: argparse.Namespace) -> int:
    import yaml

    from .storage import OWNER_ATTR, run_of_trial

    ref = rp.resolve(args.study)
    with rp.StudyReader(ref.url, ref.name) as reader:
        t = reader.trial(args.number)
        runs = reader.runs()
        names = reader.value_columns()
        chain = next((c for c in reader.retry_chains() if t.number in c), None)
    why = _why(t)
    print(f"trial {t.number} of study '{ref.name}': {t.state}" + (f" ({why})" if why else ""))
    if t.values:
        print("values       " + ", ".join(f"{n}={v:.6g}" for n, v in zip(names, t.values)))
    owner = t.system_attrs.get(OWNER_ATTR) or {}
    print(f"started      {t.start.isoformat(sep=' ', timespec='seconds') if t.start else '-'}")
    if t.duration_s is not None:
        print(f"duration     {t.duration_s:.2f}s")
    if owner:
        where = f"worker {owner.get('rank')} (pid {owner.get('pid')} on {owner.get('host')})"
        slurm = owner.get("slurm")
        if slurm:
            where += (f", Slurm job {slurm.get('job')} task {slurm.get('task')} on "
                      f"{slurm.get('node')}")
        print(f"ran on       {where}")
    run = run_of_trial(t, runs)
    if run is not None:
        print(f"run          {run.get('id')} (started {run.get('started')})")
    for label, key in (("trial dir", rp.TRIAL_DIR_ATTR), ("log file", rp.LOG_ATTR)):
        if t.user_attrs.get(key):
            # A log is made at the trial's first output (looked for on this machine).
            silent = key == rp.LOG_ATTR and t.state != "RUNNING" and \
                Path(t.user_attrs[key]).parent.is_dir() and not Path(t.user_attrs[key]).exists()
            print(f"{label:<12} {t.user_attrs[key]}" + (" (none: it printed nothing)"
                                                        if silent else ""))
    if chain:
        place = chain.index(t.number)
        later = f"; retried by trial {chain[place + 1]}" if place + 1 < len(chain) else ""
        print(f"attempts     {' -> '.join(map(str, chain))} (this is attempt {place + 1}"
              f"{later})")
    print("params:")
    for k, v in t.params.items():
        print(f"  {k}: {v!r}")
    print("config:")
    dumped = yaml.safe_dump(rp.trial_config(t, runs), sort_keys=False).rstrip()
    for line in dumped.splitlines():
        print(f"  {line}")
    if t.intermediate_values:
        print("intermediate values:")
        for step, value in sorted(t.intermediate_values.items()):
            print(f"  step {step}: {value:.6g}")
    metrics = {k: v for k, v in t.user_attrs.items() if k.startswith("metric.")}
    for k, v in metrics.items():
        print(f"{k}: {v}")
    tb = t.user_attrs.get("traceback")
    if tb:
        print("traceback:")
        print(tb.rstrip())
    return 0


def _best(args: argparse.Namespace) -> int:
    import yaml

    ref = rp.resolve(args.study)
    with rp.StudyReader(ref.url, ref.name) as reader:
        config = rp.best_config(reader)
        copied = rp.copy_artifacts(reader, reader.best()[0], Path(args.artifacts)) \
            if args.artifacts else []
    text = yaml.safe_dump(config, sort_keys=False)
    if args.yaml:
        Path(args.yaml).write_text(text, encoding="utf-8")
        print(f"wrote {args.yaml}")
    else:
        print(text, end="")
    for path in copied:
        print(f"copied {display_path(path.resolve())}", file=sys.stderr if not args.yaml
              else sys.stdout)
    return 0


def _export(args: argparse.Namespace) -> int:
    output = Path(args.output)
    fmt = rp.format_of(output, args.format)
    ref = rp.resolve(args.study)
    with rp.StudyReader(ref.url, ref.name) as reader:
        table = rp.rows(reader)
    if not table:
        raise HparamSearchError(f"study '{ref.name}' has no trials yet")
    n = rp.export(table, fmt, output)
    print(f"wrote {n} trials to {args.output}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    for module in ("matplotlib", "plotly"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise HparamSearchError(f"plots need matplotlib and plotly ({module} is missing)",
                                    fix="pip install 'hparam-search[plot]'") from exc
    from .results.plots import load_study, plot
    from .results.report import gather
    from .storage import close_storage

    ref = rp.resolve(args.study)
    folder = Path(args.output) if args.output else Path("plots") / ref.name
    with rp.StudyReader(ref.url, ref.name) as reader:  # the report's summary and top trials
        info, top_rows = gather(reader)
    study = load_study(ref.url, ref.name)
    try:
        files = plot(study, folder, info, top_rows)
    finally:
        close_storage(study._storage)
    for f in files:
        print(f"wrote {display_path(f.resolve())}")
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    ref = rp.resolve(args.study)
    try:
        import optuna_dashboard
    except ImportError as exc:
        raise HparamSearchError("optuna-dashboard is not installed",
                                fix="pip install optuna-dashboard") from exc
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from .storage import close_storage, open_storage

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
            pass  # one line per request would bury the address

    storage = open_storage(ref.url, create=False)
    try:
        with rp.StudyReader(ref.url, ref.name) as reader:
            study_id = getattr(reader, "study_id", None)
            runs = reader.runs()
        if study_id is None:
            study_id = storage.get_study_id_from_name(ref.name)
        app = optuna_dashboard.wsgi(storage, artifact_store=rp.artifact_store(runs))
        try:  # bind before announcing: a port in use is an error, not a dead link
            server = make_server("127.0.0.1", args.port, app, server_class=Server,
                                 handler_class=QuietHandler)
        except OSError as exc:
            raise HparamSearchError(f"cannot serve on 127.0.0.1:{args.port}: {exc.strerror}",
                                    fix="Pick another --port.") from exc
        print(f"optuna-dashboard for study '{ref.name}': "
              f"http://127.0.0.1:{args.port}/dashboard/studies/{study_id}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    finally:
        close_storage(storage)
    return 0


def _slurm(args: argparse.Namespace) -> int:
    from .cluster import commands

    return commands.main(args)


COMMANDS = {"ls": _ls, "show": _show, "trial": _trial, "best": _best, "export": _export,
            "plot": _plot, "dashboard": _dashboard, "slurm": _slurm}

if __name__ == "__main__":
    sys.exit(main())
