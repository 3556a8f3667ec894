"""The ``hparam-search`` command: parsing, printing, exit codes; the logic lives in report.py."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from . import results as rp
from .errors import HparamSearchError

STUDY_HELP = ("a .db file, a storage URL (add #NAME when it holds several studies), or a study "
              "name found in ./optuna_studies")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hparam-search",
        description="Look at hyperparameter searches run with hparam_search.")
    parser.add_argument("--version", action="version", version=f"hparam-search {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("ls", help="list the studies in a folder",
                       description="List every study in a folder's .db files.")
    p.add_argument("folder", nargs="?", default=str(rp.DEFAULT_DIR),
                   help="folder to look in (default: ./optuna_studies)")

    p = sub.add_parser("show", help="summary and top trials of a study",
                       description="Directions, trials by state, best trial, wall time, the "
                                   "config the study ran with, and the top trials.")
    p.add_argument("study", help=STUDY_HELP)
    p.add_argument("-n", type=int, default=10, help="how many top trials to list (default 10)")

    p = sub.add_parser("best", help="the best trial's full config",
                       description="Print the best trial's full config (fixed values plus the "
                                   "best parameters) as YAML, ready for train(config) or as the "
                                   "start of a new search.")
    p.add_argument("study", help=STUDY_HELP)
    p.add_argument("--yaml", metavar="FILE", help="write it to FILE instead of printing it")

    p = sub.add_parser("export", help="every trial as a table file",
                       description="One row per trial: number, state, value(s), every parameter, "
                                   "duration, worker, error, log file and stored metrics.")
    p.add_argument("study", help=STUDY_HELP)
    p.add_argument("--format", choices=rp.EXPORT_FORMATS, required=True)
    p.add_argument("-o", "--output", required=True, metavar="FILE")

    p = sub.add_parser("plot", help="PNG plots and an HTML report",
                       description="Optimization history, parameter importances, parameter vs "
                                   "value, parallel coordinates, contour of the two most "
                                   "important parameters, Pareto front: PNG files and one "
                                   "self-contained report.html.")
    p.add_argument("study", help=STUDY_HELP)
    p.add_argument("-o", "--output", required=True, metavar="DIR")

    p = sub.add_parser("dashboard", help="open the study in optuna-dashboard",
                       description="Start optuna-dashboard on 127.0.0.1 for the study's storage.")
    p.add_argument("study", help=STUDY_HELP)
    p.add_argument("--port", type=int, default=8080)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command](args)
    except HparamSearchError as exc:
        if os.environ.get("HPARAM_SEARCH_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _ls(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    if not folder.is_dir():
        raise HparamSearchError(f"no folder {folder}", fix="Pass the save_db_directory path.")
    studies = rp.list_studies(folder)
    if not studies:
        print(f"no studies in {folder}")
        return 0
    table = [{"study": s["study"], "file": s["path"], **{k: s["states"].get(k, 0) for k in
              ("COMPLETE", "PRUNED", "FAIL", "RUNNING")},
              "best": _best_text(s["best"]), "last activity": s["last_activity"]}
             for s in studies]
    print(rp.format_table(table, list(table[0])))
    return 0


def _best_text(best: object) -> object:
    if isinstance(best, dict):
        return best["value"]
    if isinstance(best, list):
        return f"{len(best)} on the Pareto front"
    return None


def _show(args: argparse.Namespace) -> int:
    study = rp.load(rp.resolve(args.study))
    s = rp.summary(study)
    if not s["trials"]:
        raise HparamSearchError(f"study '{s['study']}' has no trials yet")
    print(f"study        {s['study']}")
    print(f"directions   {', '.join(s['directions'])}")
    print(f"trials       {s['trials']} ("
          + ", ".join(f"{k} {v}" for k, v in sorted(s['states'].items())) + ")")
    if s["wall_s"] is not None:
        print(f"wall time    {s['wall_s']:.1f}s (first start to last finish)")
    print(f"last active  {s['last_activity']}")
    if isinstance(s["best"], dict):
        print(f"best         trial {s['best']['number']}: value={s['best']['value']:.6g}  "
              + " ".join(f"{k}={v}" for k, v in s["best"]["params"].items()))
    elif isinstance(s["best"], list):
        print(f"pareto front {len(s['best'])} trials")
        for b in s["best"]:
            print(f"  trial {b['number']}: values={[round(v, 6) for v in b['values']]}")
    run = s["run"]
    if run:
        git = run.get("git") or {}
        print(f"last run     {run.get('started')} on {run.get('host')} "
              f"(python {run.get('python')}, " + ", ".join(
                  f"{k} {v}" for k, v in (run.get('versions') or {}).items()) + ")")
        print(f"command      {run.get('command')}")
        print(f"script       {run.get('script')}")
        if git:
            print(f"git          {git.get('commit')}{' (uncommitted changes)' if git.get('dirty') else ''}")
        print("config:")
        for line in (run.get("config") or "").rstrip().splitlines():
            print(f"  {line}")
    table = rp.rows(study)
    done = [r for r in table if r["state"] == "COMPLETE"]
    value_key = (study.metric_names or ["value"])[0] if len(study.directions) == 1 else None
    if value_key:
        done.sort(key=lambda r: r[value_key], reverse=s["directions"][0] == "maximize")
    top = done[: args.n]
    if top:
        params = sorted({p for t in study.trials for p in t.params})
        values = [k for k in table[0] if k.startswith("value") or k in (study.metric_names or [])]
        columns = ["number", *values, *params, "duration_s", "worker", "log_file"]
        print(f"\ntop {len(top)} trials:")
        print(rp.format_table(top, columns))
    return 0


def _best(args: argparse.Namespace) -> int:
    import yaml

    config = rp.best_config(rp.load(rp.resolve(args.study)))
    text = yaml.safe_dump(config, sort_keys=False)
    if args.yaml:
        Path(args.yaml).write_text(text, encoding="utf-8")
        print(f"wrote {args.yaml}")
    else:
        print(text, end="")
    return 0


def _export(args: argparse.Namespace) -> int:
    study = rp.load(rp.resolve(args.study))
    if not study.trials:
        raise HparamSearchError(f"study '{study.study_name}' has no trials yet")
    n = rp.export(study, args.format, Path(args.output))
    print(f"wrote {n} trials to {args.output}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    for module in ("matplotlib", "plotly"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise HparamSearchError(f"plots need matplotlib and plotly ({module} is missing)",
                                    fix="pip install 'hparam-search[plot]'") from exc
    files = rp.plot(rp.load(rp.resolve(args.study)), Path(args.output))
    for f in files:
        print(f"wrote {f}")
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    ref = rp.resolve(args.study)
    try:
        from optuna_dashboard import run_server
    except ImportError as exc:
        raise HparamSearchError("optuna-dashboard is not installed",
                                fix="pip install optuna-dashboard") from exc
    print(f"optuna-dashboard for study '{ref.name}': http://127.0.0.1:{args.port}/dashboard/",
          flush=True)
    print("Press Ctrl-C to stop.", flush=True)
    try:
        run_server(ref.url, host="127.0.0.1", port=args.port)
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        raise HparamSearchError(f"cannot serve on 127.0.0.1:{args.port}: {exc.strerror}",
                                fix="Pick another --port.") from exc
    return 0


COMMANDS = {"ls": _ls, "show": _show, "best": _best, "export": _export, "plot": _plot,
            "dashboard": _dashboard}

if __name__ == "__main__":
    sys.exit(main())
