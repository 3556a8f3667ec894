"""The ``@hparam_search`` decorator: argv -> config -> launcher; a dict calls train directly."""

from __future__ import annotations

import argparse
import functools
import gc
import json
import multiprocessing
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import HparamSearchError
from .launch import fork_server  # light; notes what the process has open before the script runs
from .storage import describe, mask_secrets, resolve_storage, sqlite_url

if TYPE_CHECKING:
    from .config import SearchConfig

# The launcher's own modules (the config's YAML, the console, the launcher) are imported when a
# search runs, not with this module: every worker imports it (through the script), and the
# launcher starts its fork server before it imports them.

F = TypeVar("F", bound=Callable[..., Any])
EXIT_USAGE = 2
WORKER_NAME_PREFIX = "hparam-search-worker"
DEBUG_ENV = "HPARAM_SEARCH_DEBUG"


def hparam_search(config_path: str | os.PathLike[str] = "config.yaml",
                  save_db_directory: str | os.PathLike[str] = "./optuna_studies"
                  ) -> Callable[[F], F]:
    """Turn ``train(config) -> float`` into a parallel, resumable hyperparameter search.

    Args:
        config_path: the YAML file. A relative path is looked up in ``config/`` beside the
            script that defines ``train``; an absolute path is used as is.
        save_db_directory: where ``<experiment_name>_<tag>.db`` goes; a relative path is taken
            relative to that script, so the study is found from any working directory.

    ``train()`` with no argument runs the search from ``sys.argv`` (``--set key=value``,
    ``--config PATH``); ``train({...})`` calls the function once with that dict.
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(config: dict[str, Any] | None = None) -> Any:
            if config is not None:
                return fn(config)
            return _main(fn, config_path, save_db_directory, sys.argv[1:])

        wrapper.__hparam_search_train__ = fn  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def _main(fn: Callable[..., Any], config_path: str | os.PathLike[str],
          save_db_directory: str | os.PathLike[str], argv: Sequence[str]) -> None:
    try:
        code, fatal = run_search(fn, config_path, save_db_directory, argv)
        # The search's objects live until exit anyway; moving them out of the collector's reach
        # spares the interpreter's final collection a full pass over them.
        gc.freeze()
    except HparamSearchError as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:  # Ctrl-C before the search began
        print("Interrupted (Ctrl-C).", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # `--dry-run | head`
        from .console import quiet_stdout

        quiet_stdout()
        return
    if fatal:
        print(f"error: {fatal}", file=sys.stderr)
    if code:
        sys.exit(code)


def _parser(script: Path, epilog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=script.name, description="Run the hyperparameter search defined by this script.",
        epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", "-D", "--define", dest="overrides", nargs="+",
                        action="extend", default=[], metavar="KEY=VALUE",
                        help="override any config value; dotted keys reach into mappings "
                             "(e.g. --set n_trials=200 model.dropout=0.1); -D and --define "
                             "are the same")
    parser.add_argument("--config", metavar="PATH",
                        help="use this YAML file instead of the decorator's config_path")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved config, search space, sampler and pruner (and "
                             "every grid or enqueued configuration); start nothing")
    parser.add_argument("--jsonl", metavar="FILE",
                        help="with --dry-run: write each grid/enqueued configuration as one "
                             "JSON line")
    # For `hparam-search slurm submit`: the resolved plan as JSON, nothing started or stored.
    parser.add_argument("--plan-json", action="store_true", help=argparse.SUPPRESS)
    return parser


def run_search(fn: Callable[..., Any], config_path: str | os.PathLike[str],
               save_db_directory: str | os.PathLike[str], argv: Sequence[str]
               ) -> tuple[int, str | None]:
    """Parse ``argv``, load the config and run the search. Returns (exit code, fatal error).

    Raises:
        HparamSearchError: for mistakes in the config, the overrides or the script.
    """
    from .cluster import slurm
    from .config import load_config

    process = multiprocessing.current_process()
    if process.name.startswith(WORKER_NAME_PREFIX) or getattr(process, "_inheriting", False):
        raise HparamSearchError(
            "train() was called while a worker process imported your script",
            fix="Call it only under 'if __name__ == \"__main__\":' so workers can import the "
                "script without starting another search.")
    script = _script_of(fn)
    _check_main_guard(fn.__name__)
    wants_help = any(a in ("-h", "--help") for a in argv)
    epilog = _help_epilog(script, config_path, save_db_directory) if wants_help else None
    # argparse prints its own one-line usage error and exits 2: the same contract as ours.
    args = _parser(script, epilog).parse_args(list(argv))
    path = _config_file(script, config_path, args.config)
    cfg = load_config(path, args.overrides, not_found_hint=_not_found_hint(script, path),
                      base=script.parent)
    for warning in cfg.warnings:
        print(warning, file=sys.stderr)
    db_dir, url = _study_location(cfg, script, save_db_directory)
    files_root = _files_root(cfg, script, db_dir)  # checked before anything, dry run included
    results_file = _results_file(cfg, script)
    if args.plan_json:
        print(json.dumps(_plan_json(cfg, script, path, db_dir, url)))
        return 0, None
    if cfg.slurm is not None and slurm.in_job():
        slurm.check_storage(cfg.slurm, url, cfg.where("storage"))
        cfg = _fit_to_allocation(cfg)
    if args.dry_run:
        _dry_run(cfg, url, args.jsonl)
        return 0, None
    if args.jsonl:
        raise HparamSearchError("--jsonl goes with --dry-run", source="command line",
                                fix="Add --dry-run.")
    start_method = (cfg.start_method or multiprocessing.get_start_method(allow_none=True)
                    or ("spawn" if cfg.gpus else default_start_method()))
    if start_method == "forkserver":
        # Before the launcher imports its own modules and opens the study.
        fork_server.start_fork_server(url, cfg, from_script=fn.__module__ == "__main__")
    from .launch.launcher import EXIT_SEARCH_FAILED, Launcher
    from .launch.plan import LaunchPlan

    plan = LaunchPlan(
        config=cfg, script=script, module=fn.__module__, qualname=fn.__qualname__,
        db_dir=db_dir, url=url, start_method=start_method,
        files_root=files_root, results_file=results_file,
        resume_command=mask_secrets(" ".join(shlex.quote(a) for a in ["python", *sys.argv])))
    launcher = Launcher(plan)
    code = launcher.run()
    return code, launcher.fatal if code == EXIT_SEARCH_FAILED else None


def _plan_json(cfg: SearchConfig, script: Path, config: Path, db_dir: Path, url: str
               ) -> dict[str, Any]:
    """What `hparam-search slurm submit` needs to write and submit a job array."""
    import dataclasses

    return {"study": cfg.study_name, "url": url, "script": str(script), "config": str(config),
            "db_dir": str(db_dir), "files_root": str(_files_root(cfg, script, db_dir)),
            "directions": list(cfg.directions),
            "metrics": list(cfg.metrics or ((cfg.metric,) if cfg.metric else ())),
            "stop_grace": cfg.stop_grace, "storage_where": list(cfg.where("storage")),
            "slurm": dataclasses.asdict(cfg.slurm) if cfg.slurm else None}


def _fit_to_allocation(cfg: SearchConfig) -> SearchConfig:
    """Inside a Slurm task: one worker per GPU Slurm assigned (workers_per_gpu honoured), else
    one per CPU the task was given (cpus_per_task), else the YAML's n_jobs."""
    import dataclasses

    from .cluster import slurm

    gpus = slurm.allocated_gpus()
    if gpus and cfg.gpus is None:
        return dataclasses.replace(cfg, gpus=tuple(gpus),
                                   n_jobs=len(gpus) * cfg.workers_per_gpu)
    cpus = slurm.allocated_cpus()
    if cpus and not cfg.gpus:
        return dataclasses.replace(cfg, n_jobs=cpus)
    return cfg


def _study_location(cfg: SearchConfig, script: Path,
                    save_db_directory: str | os.PathLike[str]) -> tuple[Path, str]:
    """save_db_directory (absolute) and the study's storage URL."""
    db_dir = Path(save_db_directory)
    if not db_dir.is_absolute():
        db_dir = script.parent / db_dir
    db_dir = db_dir.resolve()
    url = (resolve_storage(cfg.storage, script.parent) if cfg.storage
           else sqlite_url(db_dir / f"{cfg.study_name}.db"))
    return db_dir, url


def _files_root(cfg: SearchConfig, script: Path, db_dir: Path) -> Path:
    """Where trial folders and artifacts go: ``trial_dir`` (relative to the script's folder),
    else save_db_directory. Checked before anything runs: it must be a writable folder, or one
    that can be made in an existing writable folder."""
    if cfg.trial_dir is None:
        return db_dir
    path = Path(cfg.trial_dir).expanduser()
    path = (path if path.is_absolute() else script.parent / path).resolve()
    source, line = cfg.where("trial_dir")
    existing = path if path.exists() else path.parent

    def fail(problem: str) -> None:
        raise HparamSearchError(problem, source=source, key="trial_dir", line=line,
                                got=cfg.trial_dir,
                                fix="Point trial_dir at a writable folder (on a filesystem every "
                                    "machine of the study shares, when several run it).")

    if not existing.exists():
        fail(f"its parent folder {existing} does not exist")
    if not existing.is_dir():
        fail(f"{existing} is not a folder")
    if not os.access(existing, os.W_OK) or _read_only(existing):
        fail(f"{existing} is not writable")
    return path


def _results_file(cfg: SearchConfig, script: Path) -> Path | None:
    """results_file, relative to the script's folder; checked before anything runs."""
    if cfg.results_file is None:
        return None
    path = Path(cfg.results_file).expanduser()
    path = (path if path.is_absolute() else script.parent / path).resolve()
    source, line = cfg.where("results_file")

    def fail(problem: str, fix: str) -> None:
        raise HparamSearchError(problem, source=source, key="results_file", line=line,
                                got=cfg.results_file, fix=fix)

    folder = path.parent
    if not folder.is_dir():
        fail(f"its folder {folder} does not exist", "Create it, or name a file in an existing "
             "folder.")
    if not os.access(folder, os.W_OK) or _read_only(folder):
        fail(f"its folder {folder} is not writable", "Name a file in a writable folder.")
    if path.suffix.lower() == ".parquet":
        import importlib.util

        if importlib.util.find_spec("pandas") is None or \
                importlib.util.find_spec("pyarrow") is None:
            fail("a .parquet results file needs pandas and pyarrow",
                 "pip install 'hparam-search[export]', or use .csv or .jsonl.")
    return path


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _help_epilog(script: Path, config_path: str | os.PathLike[str],
                 save_db_directory: str | os.PathLike[str]) -> str:
    """For --help: which config file this script reads and which study it would run."""
    from .config import display_path, load_config

    path = _config_file(script, config_path, None)
    lines = [f"config file: {display_path(path)}"]
    try:
        cfg = load_config(path, base=script.parent)
        _, url = _study_location(cfg, script, save_db_directory)
    except HparamSearchError as exc:
        lines.append(f"study:       unknown until the config is fixed ({exc})")
    else:
        lines.append(f"study:       {cfg.study_name}, in {describe(url)}")
    lines.append("Change either with --config PATH or --set experiment_name=... tag=...")
    return "\n".join(lines)


def _dry_run(cfg: SearchConfig, url: str, jsonl: str | None) -> None:
    from .console import describe_search, explicit_configs
    from .preflight import describe_existing

    existing = describe_existing(cfg, url)  # raises for a space the study cannot take
    print(describe_search(cfg, mask_secrets(url)))
    print("\n" + "\n".join(existing))
    if jsonl:
        configs = explicit_configs(cfg)
        with open(jsonl, "w", encoding="utf-8") as f:
            for config in configs:
                f.write(json.dumps(config, default=str) + "\n")
        note = "" if configs else " (this search has no grid or enqueue list, so none)"
        print(f"\nWrote {len(configs)} configurations to {jsonl}{note}.")


def default_start_method() -> str:
    """forkserver where it is safe and fast (Linux: one server imports Optuna and the storage,
    workers are forks of a process that never touched CUDA or threads); spawn elsewhere, and
    with `gpus` (each worker then starts with its own CUDA_VISIBLE_DEVICES from its first
    line)."""
    return "forkserver" if sys.platform.startswith("linux") else "spawn"


def _script_of(fn: Callable[..., Any]) -> Path:
    if "<locals>" in fn.__qualname__:
        raise HparamSearchError(
            f"'{fn.__qualname__}' is defined inside another function, so worker processes "
            "cannot import it", fix="Define the decorated function at the top level of a script.")
    try:
        import inspect

        source = inspect.getsourcefile(fn) or inspect.getfile(fn)
    except TypeError:
        source = None
    if not source or not Path(source).is_file():
        raise HparamSearchError(
            f"'{fn.__qualname__}' is not defined in a file, so worker processes cannot import it",
            fix="Put it in a script and run 'python your_script.py'.")
    return Path(source).resolve()


def _check_main_guard(name: str) -> None:
    """Workers import the script that was run; a bare ``train()`` at its top level would start
    a search in each of them. Found by reading the script, before anything is created."""
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    if not main:
        return
    line = unguarded_call(Path(main), name)
    if line is not None:
        from .config import display_path

        raise HparamSearchError(
            f"{name}() is called at the top level of the script, so every worker process that "
            f"imports the script would start another search", source=display_path(Path(main)),
            line=line, fix="Call it under 'if __name__ == \"__main__\":'.")


def unguarded_call(script: Path, name: str) -> int | None:
    """The line of a ``name()`` call that runs when ``script`` is imported, or None."""
    import ast

    try:
        tree = ast.parse(script.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None

    def calls(node: ast.AST) -> int | None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            return None  # runs only when called
        if isinstance(node, ast.If) and _is_main_guard(node.test):
            return first(node.orelse)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == name and not node.args and not node.keywords):
            return node.lineno
        return first(ast.iter_child_nodes(node))

    def first(nodes: Any) -> int | None:
        for child in nodes:
            found = calls(child)
            if found is not None:
                return found
        return None

    return first(tree.body)


def _is_main_guard(test: Any) -> bool:
    import ast

    if not (isinstance(test, ast.Compare) and len(test.ops) == 1
            and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s.id for s in sides if isinstance(s, ast.Name)]
    texts = [s.value for s in sides if isinstance(s, ast.Constant)]
    return names == ["__name__"] and texts == ["__main__"]


def _config_file(script: Path, config_path: str | os.PathLike[str], cli_path: str | None
                 ) -> Path:
    if cli_path:
        given = Path(cli_path).expanduser()
        if given.is_absolute() or given.exists():
            return given.resolve()
        return script.parent / "config" / given
    path = Path(config_path).expanduser()
    return path if path.is_absolute() else script.parent / "config" / path


def _not_found_hint(script: Path, path: Path) -> str:
    from .config import display_path

    folder = script.parent / "config"
    beside = script.parent / path.name
    if beside.is_file() and path.parent == folder:
        return (f"A relative config_path is looked up in {display_path(folder)}/ beside your "
                f"script, and {display_path(beside)} lies beside the script itself: move it "
                f"into {display_path(folder)}/, or pass --config {display_path(beside)}.")
    found = sorted(p.name for p in folder.glob("*.y*ml")) if folder.is_dir() else []
    where = f"A relative config_path is looked up in {display_path(folder)}/ beside your script"
    if found:
        return f"{where}; it holds: {', '.join(found)}. Pick one with --config NAME."
    return f"{where}; create {display_path(path)} there, or pass --config PATH."
