"""A validated search ready to run (``LaunchPlan``), and the record a run leaves on its study
(``run_metadata``)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import storage as st
from ..config import SearchConfig, display_path


@dataclass(frozen=True)
class LaunchPlan:
    """A validated search, ready to run."""

    config: SearchConfig
    script: Path
    module: str
    qualname: str
    db_dir: Path  # save_db_directory, absolute
    url: str  # the storage: the SQLite file in db_dir unless `storage:` says otherwise
    start_method: str
    resume_command: str
    files_root: Path  # trial folders and artifacts go under <files_root>/<study>/
    results_file: Path | None = None  # the export table, rewritten while the search runs

    @property
    def trials_root(self) -> Path:
        """<files_root>/<study>/trials: one folder per configuration, named by its number."""
        return self.files_root / self.config.study_name / "trials"

    @property
    def artifacts_dir(self) -> Path:
        return self.files_root / self.config.study_name / "artifacts"

    @property
    def show_command(self) -> str:
        """How to look at this study with the `hparam-search` command."""
        path = st.sqlite_path(self.url)
        if path is not None:
            return f"hparam-search show {shlex.quote(display_path(path))}"
        ref = st.mask_secrets(self.url) + "#" + self.config.study_name
        return f"hparam-search show {shlex.quote(ref)}"

    @property
    def where(self) -> str:
        """The storage as the banner shows it: a file path, or the URL without password."""
        return st.describe(self.url)


def run_metadata(plan: LaunchPlan) -> dict[str, Any]:
    """What a later reader needs to know how this run was made."""
    import datetime
    import importlib.metadata
    import platform
    import socket

    import yaml

    versions = {}
    for dist in ("hparam-search", "optuna", "sqlalchemy", "optuna-dashboard"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": st.mask_secrets(plan.resume_command),
        "script": str(plan.script),
        "config_file": str(plan.config.path),
        "config": st.mask_secrets(yaml.safe_dump(plan.config.resolved, sort_keys=False)),
        "git": _git_state(plan.script.parent),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "versions": versions,
        "start_method": plan.start_method,
        "n_jobs": plan.config.n_jobs,
        "trials": str(plan.trials_root),
        "artifacts": str(plan.artifacts_dir),
    }


def _git_state(folder: Path) -> dict[str, Any] | None:
    import subprocess

    try:  # one call for both: the commit (`# branch.oid`), and any change, untracked included
        status = subprocess.run(["git", "-C", str(folder), "status", "--porcelain=v2", "--branch"],
                                capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if status.returncode != 0:  # not a repository (or no git)
        return None
    lines = status.stdout.splitlines()
    commit = next((line.split()[2] for line in lines if line.startswith("# branch.oid ")), None)
    if commit is None or commit == "(initial)":  # no commit yet
        return None
    return {"commit": commit, "dirty": any(not line.startswith("#") for line in lines)}
