"""The ``@hparam_search`` decorator: argv -> config -> launcher; a dict calls train directly."""

from __future__ import annotations

import argparse
import functools
import gc
import inspect
import json
import multiprocessing
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .config import SearchConfig, display_path, load_config
from .console import describe_search, explicit_configs
from .errors import HparamSearchError
from .launcher import EXIT_SEARCH_FAILED, Launcher, LaunchPlan
from .storage import mask_secrets, resolve_storage, sqlite_url

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
    if fatal:
        print(f"error: {fatal}", file=sys.stderr)
    if code:
        sys.exit(code)


def _parser(script: Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=script.name, description="Run the hyperparameter search defined by this script.")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[],
                        metavar="KEY=VALUE",
                        help="override any config value; dotted keys reach into mappings "
                             "(e.g. --set n_trials=200 model.dropout=0.1)")
    parser.add_argument("--config", metavar="PATH",
                        help="use this YAML file instead of the decorator's config_path")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved config, search space, sampler and pruner (and "
                             "every grid or enqueued configuration); start nothing")
    parser.add_argument("--jsonl", metavar="FILE",
                        help="with --dry-run: write each grid/enqueued configuration as one "
                             "JSON line")
    return parser


def run_search(fn: Callable[..., Any], config_path: str | os.PathLike[str],
               save_db_directory: str | os.PathLike[str], argv: Sequence[str]
               ) -> tuple[int, str | None]:
    """Parse ``argv``, load the config and run the search. Returns (exit code, fatal error).

    Raises:
        HparamSearchError: for mistakes in the config, the overrides or the script.
    """
    process = multiprocessing.current_process()
    if process.name.startswith(WORKER_NAME_PREFIX) or getattr(process, "_inheriting", False):
        raise HparamSearchError(
            "train() was called while a worker process imported your script",
            fix="Call it only under 'if __name__ == \"__main__\":' so workers can import the "
                "script without starting another search.")
    script = _script_of(fn)
    # argparse prints its own one-line usage error and exits 2: the same contract as ours.
    args = _parser(script).parse_args(list(argv))
    path = _config_file(script, config_path, args.config)
    cfg = load_config(path, args.overrides, not_found_hint=_not_found_hint(script, path))
    db_dir = Path(save_db_directory)
    if not db_dir.is_absolute():
        db_dir = script.parent / db_dir
    db_dir = db_dir.resolve()
    url = (resolve_storage(cfg.storage, script.parent) if cfg.storage
           else sqlite_url(db_dir / f"{cfg.study_name}.db"))
    if args.dry_run:
        _dry_run(cfg, mask_secrets(url), args.jsonl)
        return 0, None
    if args.jsonl:
        raise HparamSearchError("--jsonl goes with --dry-run", source="command line",
                                fix="Add --dry-run.")
    start_method = (cfg.start_method or multiprocessing.get_start_method(allow_none=True)
                    or ("spawn" if cfg.gpus else default_start_method()))
    plan = LaunchPlan(
        config=cfg, script=script, module=fn.__module__, qualname=fn.__qualname__,
        db_dir=db_dir, url=url, start_method=start_method,
        resume_command=mask_secrets(" ".join(shlex.quote(a) for a in ["python", *sys.argv])))
    launcher = Launcher(plan)
    code = launcher.run()
    return code, launcher.fatal if code == EXIT_SEARCH_FAILED else None


def _dry_run(cfg: SearchConfig, where: str, jsonl: str | None) -> None:
    print(describe_search(cfg, where))
    if jsonl:
        configs = explicit_configs(cfg)
        with open(jsonl, "w", encoding="utf-8") as f:
            for config in configs:
                f.write(json.dumps(config, default=str) + "\n")
        note = "" if configs else " (this search has no grid or enqueue list, so none)"
        print(f"\nWrote {len(configs)} configurations to {jsonl}{note}.")


def default_start_method() -> str:
    """forkserver where it is safe and fast (Linux: one server imports the script, workers are
    forks of a process that never touched CUDA or threads); spawn elsewhere, and with `gpus`
    (each worker then starts with its own CUDA_VISIBLE_DEVICES from its first line)."""
    return "forkserver" if sys.platform.startswith("linux") else "spawn"


def _script_of(fn: Callable[..., Any]) -> Path:
    if "<locals>" in fn.__qualname__:
        raise HparamSearchError(
            f"'{fn.__qualname__}' is defined inside another function, so worker processes "
            "cannot import it", fix="Define the decorated function at the top level of a script.")
    try:
        source = inspect.getsourcefile(fn) or inspect.getfile(fn)
    except TypeError:
        source = None
    if not source or not Path(source).is_file():
        raise HparamSearchError(
            f"'{fn.__qualname__}' is not defined in a file, so worker processes cannot import it",
            fix="Put it in a script and run 'python your_script.py'.")
    return Path(source).resolve()


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
    folder = script.parent / "config"
    found = sorted(p.name for p in folder.glob("*.y*ml")) if folder.is_dir() else []
    where = f"A relative config_path is looked up in {display_path(folder)}/ beside your script"
    if found:
        return f"{where}; it holds: {', '.join(found)}. Pick one with --config NAME."
    return f"{where}; create {display_path(path)} there, or pass --config PATH."
