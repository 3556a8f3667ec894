"""Shared fixtures: a throw-away user project (script + config/) run as a real subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hparam_search.launch.fork_server import SERVER_NAME, TRACKER_NAME
from tests.slurm_cluster import slurm_cluster  # noqa: F401 - a session fixture

REPO = Path(__file__).resolve().parent.parent

# A user script in the README's shape. `train` reads knobs from the config so one script
# serves many tests: `mode` picks a behaviour, `sleep` slows a trial down, `record_dir` makes
# each trial write the config it received.
DEFAULT_SCRIPT = '''
import json, math, os, sys, time
from hparam_search import hparam_search, current_trial


@hparam_search(config_path="{config_path}", save_db_directory="{save_db_directory}")
def train(config: dict) -> float:
    info = current_trial()
    if config.get("record_dir"):
        os.makedirs(config["record_dir"], exist_ok=True)
        name = f"{{info.number if info else 'direct'}}.json"
        with open(os.path.join(config["record_dir"], name), "w") as f:
            json.dump({{"config": config, "pid": os.getpid(),
                       "info": info and {{"number": info.number, "rank": info.rank,
                                         "n_jobs": info.n_jobs, "study": info.study_name,
                                         "storage": info.storage}}}}, f)
    mode = config.get("mode", "ok")
    time.sleep(config.get("sleep", 0))
    x = config["x"]
    if mode == "raise" or (mode == "raise_negative" and x < 0):
        raise ValueError(f"bad x {{x}}")
    if mode == "nan":
        return float("nan")
    if mode == "string":
        return "not a number"
    if mode == "exit":
        sys.exit(3)
    return (x - 1.0) ** 2


if __name__ == "__main__":
    train()
'''

# For user scripts in which exactly one trial does something (dies, say): the one whose
# O_EXCL create of the marker succeeds. A check then a create would let two trials through.
FIRST_TO_CLAIM = """
import os


def first_to_claim(path):
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True
"""

BASE_CONFIG: dict[str, Any] = {
    "experiment_name": "exp",
    "tag": "t",
    "direction": "minimize",
    "n_jobs": 2,
    "n_trials": 6,
    "n_startup_trials": 3,
    "sweep_parameters": {"x": {"type": "float", "low": -5.0, "high": 5.0}},
}


class UserProject:
    """A directory laid out as the README says: script.py, config/config.yaml, optuna_studies/."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.script = root / "script.py"

    def write_script(self, body: str | None = None, *, config_path: str = "config.yaml",
                     save_db_directory: str = "./optuna_studies", name: str = "script.py"
                     ) -> Path:
        text = body if body is not None else DEFAULT_SCRIPT.format(
            config_path=config_path, save_db_directory=save_db_directory)
        path = self.root / name
        path.write_text(textwrap.dedent(text))
        return path

    def write_config(self, config: dict[str, Any] | str | None = None, name: str = "config.yaml",
                     **changes: Any) -> Path:
        if config is None or isinstance(config, dict):
            data = dict(BASE_CONFIG if config is None else config)
            data.update(changes)
            text = yaml.safe_dump(data, sort_keys=False)
        else:
            text = textwrap.dedent(config)
        path = self.root / "config" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return user_env(extra)

    def command(self, *args: str, script: Path | None = None) -> list[str]:
        return [sys.executable, str(script or self.script), *args]

    def run(self, *args: str, cwd: Path | None = None, timeout: float = 120,
            script: Path | None = None, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*args, script=script), cwd=cwd or self.root,
                              env=self.env(env), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def popen(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
              ) -> subprocess.Popen[str]:
        # Its own session, like a terminal's foreground job: the test can signal the group.
        return subprocess.Popen(self.command(*args), cwd=cwd or self.root, env=self.env(env),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True, stdin=subprocess.DEVNULL)

    def db(self, study: str = "exp_t") -> Path:
        return self.root / "optuna_studies" / f"{study}.db"

    def trials(self, study: str = "exp_t") -> list[Any]:
        import optuna

        storage = optuna.storages.RDBStorage(f"sqlite:///{self.db(study)}")
        try:
            return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
        finally:
            storage.engine.dispose()

    @contextlib.contextmanager
    def study(self, study: str = "exp_t") -> Iterator[Any]:
        """The study, loaded through Optuna's own storage; its connections closed after."""
        with open_study(f"sqlite:///{self.db(study)}", study) as loaded:
            yield loaded

    def live_count(self) -> int:
        """Trials in the study file right now, read while a search may be writing it."""
        import sqlite3

        if not self.db().exists():
            return 0
        try:
            with contextlib.closing(sqlite3.connect(self.db(), timeout=5)) as conn:
                return conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
        except sqlite3.OperationalError:  # tables not created yet
            return 0

    def dump(self, study: str = "exp_t") -> list[str]:
        """Everything stored in the study file, as SQL: compares content, not page layout
        (a checkpoint of the write-ahead log rewrites pages without changing anything)."""
        import sqlite3

        with contextlib.closing(sqlite3.connect(self.db(study))) as conn:
            return list(conn.iterdump())

    def states(self, study: str = "exp_t") -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials(study):
            out[t.state.name] = out.get(t.state.name, 0) + 1
        return out


def user_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a user's script runs in: this checkout importable, output unbuffered."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("HPARAM_SEARCH_DEBUG", None)
    env.update(extra or {})
    return env


def two_studies(root: Path, script: str, n_trials: int, *second: str,
                **fixed: Any) -> UserProject:
    """A git repository with ``script`` and two studies made by the real launcher: ``exp_t``
    (one objective; x > 4 is an error, the first trial to see the die marker kills itself)
    and ``exp_two`` (two objectives, ``loss`` and ``size``; ``second`` adds overrides)."""
    project = UserProject(root)
    project.write_script(body=script)
    project.write_config({
        "experiment_name": "exp", "tag": "t", "n_jobs": 2, "n_trials": n_trials, "seed": 0,
        "n_startup_trials": n_trials, "fail_fast": 0, "die_marker": str(root / "died"),
        **fixed, "enqueue": [{"x": 4.5, "y": 1}, {"x": 1.0, "y": 0}],
        "sweep_parameters": {"x": {"type": "float", "low": -5.0, "high": 5.0},
                             "y": {"type": "int", "low": 0, "high": 3}}})
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", "commit",
                    "-q", "--allow-empty", "-m", "init"], cwd=root, check=True)
    for overrides in ((), ("tag=two", "two=true", "directions=[minimize, minimize]",
                           "direction=null", "metrics=[loss, size]", "die_marker=null",
                           *second)):
        result = project.run(*(("--set", *overrides) if overrides else ()))
        assert result.returncode == 0, result.stdout + result.stderr
    return project


@contextlib.contextmanager
def open_study(url: str, name: str) -> Iterator[Any]:
    """``optuna.load_study`` on Optuna's own RDBStorage, its engine disposed afterwards (Python
    3.13 warns about sqlite3 connections left to the garbage collector)."""
    import optuna

    storage = optuna.storages.RDBStorage(url)
    try:
        yield optuna.load_study(study_name=name, storage=storage)
    finally:
        storage.engine.dispose()


@contextlib.contextmanager
def read_only_folder(path: Path) -> Iterator[Path]:
    """``path`` as a read-only filesystem (a small tmpfs mounted read-only), unmounted after;
    a skip where mounting is not allowed (not root)."""
    path.mkdir(parents=True, exist_ok=True)
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(path)],
                          capture_output=True)
    if made.returncode != 0:
        pytest.skip("cannot mount a read-only filesystem here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def project(tmp_path: Path) -> UserProject:
    p = UserProject(tmp_path / "proj")
    p.root.mkdir()
    p.write_script()
    p.write_config()
    return p


def needs_torch() -> Any:
    """PyTorch, or a skip where it is not installed; CI's PyTorch run sets
    HPARAM_SEARCH_REQUIRE_TORCH=1, and there a missing torch is a failure."""
    if os.environ.get("HPARAM_SEARCH_REQUIRE_TORCH"):
        import torch

        return torch
    return pytest.importorskip("torch")


def wait_for(predicate: Callable[[], Any], timeout: float = 60, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        # A zombie (exited, not yet reaped by its parent) is not running.
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
        except OSError:
            continue
        alive.append(pid)
    return alive


def worker_pids(pid: int) -> list[int]:
    """The launcher's worker processes: its children, or under forkserver the server's
    children; not multiprocessing's resource tracker or fork server themselves (either, when
    forked from the launcher, has the launcher's command line, and its own name)."""
    out = []
    for child in children_of(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            name = Path(f"/proc/{child}/comm").read_text().strip()
        except OSError:
            continue
        if b"resource_tracker" in cmdline or name == TRACKER_NAME:
            continue
        if b"forkserver" in cmdline or name == SERVER_NAME:
            out.extend(children_of(child))
        else:
            out.append(child)
    return out


def children_of(pid: int) -> list[int]:
    """Direct child pids (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def kill_group(proc: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


class PostgresServer:
    """A real PostgreSQL server (Debian's package) in a temporary folder, on a free port."""

    def __init__(self, bin_dir: Path, root: Path, port: int, prefix: list[str]) -> None:
        self.bin_dir, self.root, self.port, self.prefix = bin_dir, root, port, prefix
        self.data = root / "data"
        # A password that trust authentication ignores (to check masking).
        self.url = f"postgresql://postgres:s3cret@127.0.0.1:{port}/hs"

    def _run(self, *cmd: str) -> None:
        subprocess.run([*self.prefix, *cmd], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        """Start the server and wait until it accepts connections (pg_ctl -w)."""
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-w", "-l",
                  str(self.root / "server.log"), "-o",
                  f"-p {self.port} -k {self.root / 'sock'} -c listen_addresses=127.0.0.1 "
                  "-c max_connections=200", "start")

    def running(self) -> bool:
        return subprocess.run([*self.prefix, str(self.bin_dir / "pg_ctl"), "-D", str(self.data),
                               "status"], capture_output=True, timeout=60).returncode == 0

    def stop(self) -> None:
        """Stop it as an administrator would for a restart: every session is ended at once."""
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-w", "-m", "fast", "stop")


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A PostgreSQL server for the test session, with a database `hs`."""
    import glob
    import shutil
    import socket
    import tempfile

    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bins:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed; .ci/run installs it")
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    # Not under pytest's temporary folders: those are private to root, and the server runs as
    # the postgres user.
    root = Path(tempfile.mkdtemp(prefix="hparam-search-pg-"))
    (root / "sock").mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(root, "postgres")
        shutil.chown(root / "sock", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = PostgresServer(Path(bins[-1]), root, port, prefix)
    server._run(str(server.bin_dir / "initdb"), "-D", str(server.data), "-U", "postgres",
                "--auth=trust", "-E", "UTF8")
    server.start()
    try:
        server._run(str(server.bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U",
                    "postgres", "hs")
        yield server
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """The session server's URL, with a password that trust authentication ignores."""
    return postgres_server.url
