"""Shared pieces of the storage benchmarks (postgres.py, growth.py, large_study.py,
profile_trial.py): a throwaway PostgreSQL server, throwaway projects, whole-process timing, and
quick construction of large studies by bulk SQL through the launcher's own storage.

Not a benchmark itself; the scripts beside it import it (run them as `python benchmarks/X.py`).
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
if str(REPO) not in sys.path:  # `import hparam_search` from this checkout
    sys.path.insert(0, str(REPO))

# The user script of every launcher run: three floats (only the ones in the space are used),
# optional reported steps, and a timestamp file written when train starts.
TRAIN_SCRIPT = '''
import os, time
from hparam_search import hparam_search, report


@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    stamp = os.environ.get("STAMP_FILE")
    if stamp:
        with open(stamp, "a") as f:
            f.write(f"{time.time()}\\n")
    value = sum(config[k] ** 2 for k in ("x", "y", "z") if k in config)
    steps = config.get("steps", 0)
    for step in range(steps):
        report(value * (1 + 0.1 * (steps - 1 - step)), step)
    return value


if __name__ == "__main__":
    train()
'''

FLOAT_SPACE = {"type": "float", "low": -10.0, "high": 10.0}


def env_with_repo(**extra: str) -> dict[str, str]:
    """The environment for child processes: this checkout first on PYTHONPATH."""
    path = os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p)
    return dict(os.environ, PYTHONPATH=path, **extra)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import optuna
    import sqlalchemy

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu,
            "cores": os.cpu_count(), "python": sys.version.split()[0],
            "optuna": optuna.__version__, "sqlalchemy": sqlalchemy.__version__,
            "load_avg": os.getloadavg()}


# -- PostgreSQL --------------------------------------------------------------------------------
@dataclass
class PgServer:
    """A PostgreSQL server: its base URL (no database), and its log file when it is ours."""

    base: str
    log: Path | None = None
    _made: list[str] = field(default_factory=list)

    def url(self, db: str) -> str:
        return f"{self.base}/{db}"

    def admin(self) -> Any:
        import psycopg

        return psycopg.connect(self.url("postgres"), autocommit=True)

    def fresh_db(self, name: str) -> str:
        """A new, empty database (dropped first if a previous run left one); its URL."""
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        self._made.append(name)
        return self.url(name)

    def drop_all(self, keep: str | None = None) -> None:
        """Drop the databases made here, except those whose name starts with ``keep``."""
        gone = [n for n in self._made if keep is None or not n.startswith(keep)]
        with contextlib.suppress(Exception), self.admin() as conn:
            for name in gone:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._made[:] = [n for n in self._made if n not in gone]

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log and self.log.exists() else 0

    def log_since(self, offset: int) -> str:
        if not self.log or not self.log.exists():
            return ""
        with open(self.log, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres(existing: str | None = None, max_connections: int = 100,
             settings: dict[str, str] | None = None) -> Iterator[PgServer]:
    """``existing`` (a URL; its database part is ignored), or a server of our own started as
    tests/conftest.py does: Debian's binaries, trust auth, a free port, ``max_connections``
    and any other server ``settings``."""
    if existing:
        server = PgServer(existing.rstrip("/").rsplit("/", 1)[0]
                          if existing.count("/") > 2 else existing.rstrip("/"))
        try:
            yield server
        finally:
            server.drop_all()
        return
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bins:
        raise SystemExit("no PostgreSQL binaries under /usr/lib/postgresql; pass --postgres URL")
    bin_dir = Path(bins[-1])
    root = Path(tempfile.mkdtemp(prefix="hs-bench-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        for p in (root, sockets):
            shutil.chown(p, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()

    def run(*cmd: str) -> None:
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, timeout=120)

    run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    log = root / "server.log"
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(log), "-o",
        f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 "
        f"-c max_connections={max_connections}"
        + "".join(f" -c {k}={v}" for k, v in (settings or {}).items()), "start")
    server = PgServer(f"postgresql://postgres@127.0.0.1:{port}", log)
    try:
        yield server
    finally:
        server.drop_all()
        subprocess.run([*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                       check=False, capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def driver_url(url: str) -> str:
    """A bare postgresql:// URL with the psycopg 3 driver spelled out (as the launcher does)."""
    return url.replace("postgresql://", "postgresql+psycopg://", 1) \
        if url.startswith("postgresql://") else url


# -- projects and processes --------------------------------------------------------------------
def make_project(root: Path, script: str = TRAIN_SCRIPT, name: str = "train.py") -> Path:
    """A throwaway user project: ``train.py`` with ``config/`` beside it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config").mkdir(exist_ok=True)
    (root / name).write_text(textwrap.dedent(script))
    return root


def write_config(root: Path, config: dict[str, Any], name: str = "config.yaml") -> None:
    (root / "config" / name).write_text(yaml.safe_dump(config, sort_keys=False))


def launcher_config(tag: str, n_trials: int, *, n_jobs: int = 1, storage: str | None = None,
                    params: Sequence[str] = ("x",), sampler: str | None = None,
                    experiment: str = "bench", **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"experiment_name": experiment, "tag": tag, "n_jobs": n_jobs,
                              "n_trials": n_trials, **extra,
                              "sweep_parameters": {p: dict(FLOAT_SPACE) for p in params}}
    if storage:
        config["storage"] = storage
    if sampler:
        config["sampler"] = {"type": sampler}
    return config


@dataclass
class Run:
    """A process started by ``spawn``; ``finish`` waits and times it from spawn to exit."""

    cmd: list[str]
    proc: subprocess.Popen
    out: Path
    start: float
    start_epoch: float  # wall clock at spawn, to compare with timestamps the child writes
    end: float | None = None

    def finish(self, timeout: float = 900) -> dict[str, Any]:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.end = self.end or time.perf_counter()
        return {"rc": self.proc.returncode, "wall_s": self.end - self.start,
                "start_epoch": self.start_epoch}

    def output(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""


def spawn(cmd: list[str], cwd: Path, env: dict[str, str], out: Path) -> Run:
    """Start ``cmd`` with stdout and stderr to ``out``."""
    f = open(out, "wb")  # noqa: SIM115 - the child holds it; closed when the parent exits
    start, start_epoch = time.perf_counter(), time.time()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    f.close()
    return Run(cmd, proc, out, start, start_epoch)


def run_together(cmds: Sequence[list[str]], cwd: Path, env: dict[str, str], out_prefix: Path,
                 timeout: float = 900) -> dict[str, Any]:
    """Start every command at once; wall time from the first spawn to the last exit."""
    runs = [spawn(c, cwd, env, out_prefix.with_name(f"{out_prefix.name}.{i}.out"))
            for i, c in enumerate(cmds)]
    start, start_epoch = runs[0].start, runs[0].start_epoch
    pending = list(runs)
    deadline = time.perf_counter() + timeout
    while pending and time.perf_counter() < deadline:
        for r in list(pending):
            if r.proc.poll() is not None:
                r.end = time.perf_counter()
                pending.remove(r)
        time.sleep(0.005)
    for r in pending:
        r.proc.kill()
        r.proc.wait()
        r.end = time.perf_counter()
    return {"wall_s": max(r.end or 0 for r in runs) - start, "start_epoch": start_epoch,
            "rcs": [r.proc.returncode for r in runs],
            "outputs": [r.output() for r in runs]}


def timed(cmd: list[str], cwd: Path, env: dict[str, str], out: Path, timeout: float = 900
          ) -> dict[str, Any]:
    """One process from spawn to exit."""
    r = spawn(cmd, cwd, env, out)
    return {**r.finish(timeout), "output": r.output()}


# -- studies -----------------------------------------------------------------------------------
def state_counts(url: str) -> dict[str, int]:
    """Trials by state over the whole database (each benchmark study has its own)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(driver_url(url), poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT state, COUNT(*) FROM trials GROUP BY state").all()
    finally:
        engine.dispose()
    return {getattr(s, "name", str(s)): n for s, n in rows}


def first_start(url: str) -> float | None:
    """When the database's first trial started (epoch seconds)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(driver_url(url), poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            value = conn.exec_driver_sql("SELECT MIN(datetime_start) FROM trials").scalar()
    finally:
        engine.dispose()
    return None if value is None else _epoch(value)


def _epoch(value: Any) -> float:
    if not isinstance(value, datetime.datetime):
        value = datetime.datetime.fromisoformat(str(value))
    return value.replace(tzinfo=datetime.timezone.utc).timestamp()  # Optuna stores naive UTC


def completion_times(url: str, study_name: str, from_number: int) -> list[float]:
    """Completion times (epoch seconds) of the study's COMPLETE trials numbered from
    ``from_number`` on, in order."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(driver_url(url), poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sqlalchemy.text(
                "SELECT t.datetime_complete FROM trials t JOIN studies s ON s.study_id = "
                "t.study_id WHERE s.study_name = :name AND t.number >= :first AND t.state = "
                "'COMPLETE' ORDER BY t.datetime_complete"),
                {"name": study_name, "first": from_number}).all()
    finally:
        engine.dispose()
    return [_epoch(value) for (value,) in rows]


def bulk_add_trials(storage: Any, study_name: str, n: int, *, params: Sequence[str] =
                    ("x", "y", "z"), steps: int = 5, user_attrs: dict[str, Any] | None = None,
                    system_attrs: dict[str, Any] | None = None, template_number: int | None =
                    None, seed: int = 0) -> float:
    """Append ``n`` COMPLETE trials to a study with bulk SQL on the storage's own connection:
    the rows Optuna itself writes (trials, params with the launcher's distribution, one value,
    ``steps`` intermediate values, user and system attributes), in one transaction, numbered
    after the study's last trial and timestamped one second apart in the past. Attribute values
    that name ``template_number``'s folder or log are rewritten for each trial. Seconds taken."""
    from optuna.distributions import FloatDistribution, distribution_to_json

    started = time.perf_counter()
    rng = random.Random(seed)
    dist = distribution_to_json(FloatDistribution(FLOAT_SPACE["low"], FLOAT_SPACE["high"]))
    sid = storage.get_study_id_from_name(study_name)
    sqlite = storage.engine.dialect.name == "sqlite"
    mark = "?" if sqlite else "%s"
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    base = now - datetime.timedelta(seconds=2 * n + 60)

    def stamp(t: datetime.datetime) -> Any:
        return t.strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else t

    def attrs_for(number: int, attrs: dict[str, Any]) -> list[tuple[str, str]]:
        out = []
        for key, value in attrs.items():
            text = json.dumps(value)
            if template_number is not None:
                text = text.replace(f"/trials/{template_number}/", f"/trials/{number}/") \
                    .replace(f"/{template_number}.log", f"/{number}.log") \
                    .replace(f"/trials/{template_number}\"", f"/trials/{number}\"")
            out.append((key, text))
        return out

    with storage.engine.connect() as sa_conn:
        raw = sa_conn.connection.driver_connection
        cur = raw.cursor()
        cur.execute(f"SELECT COALESCE(MAX(number), -1) FROM trials WHERE study_id = {mark}",
                    (sid,))
        first = cur.fetchone()[0] + 1
        trials, points = [], []
        for i in range(n):
            begin = base + datetime.timedelta(seconds=2 * i)
            trials.append((first + i, sid, "COMPLETE", stamp(begin),
                           stamp(begin + datetime.timedelta(seconds=1))))
            points.append([rng.uniform(-10, 10) for _ in params])
        _insert(cur, sqlite, "trials", "number, study_id, state, datetime_start, "
                "datetime_complete", trials)
        cur.execute(f"SELECT number, trial_id FROM trials WHERE study_id = {mark} AND number >= "
                    f"{mark}", (sid, first))
        ids = dict(cur.fetchall())
        p_rows, v_rows, i_rows, u_rows, s_rows = [], [], [], [], []
        for i, point in enumerate(points):
            number = first + i
            tid = ids[number]
            value = sum(v * v for v in point)
            p_rows += [(tid, name, v, dist) for name, v in zip(params, point)]
            v_rows.append((tid, 0, value, "FINITE"))
            i_rows += [(tid, s, value * (1 + 0.1 * (steps - 1 - s)), "FINITE")
                       for s in range(steps)]
            u_rows += [(tid, k, v) for k, v in attrs_for(number, user_attrs or {})]
            s_rows += [(tid, k, v) for k, v in attrs_for(number, system_attrs or {})]
        _insert(cur, sqlite, "trial_params", "trial_id, param_name, param_value, "
                "distribution_json", p_rows)
        _insert(cur, sqlite, "trial_values", "trial_id, objective, value, value_type", v_rows)
        _insert(cur, sqlite, "trial_intermediate_values", "trial_id, step, intermediate_value, "
                "intermediate_value_type", i_rows)
        _insert(cur, sqlite, "trial_user_attributes", "trial_id, key, value_json", u_rows)
        _insert(cur, sqlite, "trial_system_attributes", "trial_id, key, value_json", s_rows)
        raw.commit()
        cur.close()
        if sqlite:  # fold the WAL back, so that copies of the .db file are whole
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return time.perf_counter() - started


def _insert(cur: Any, sqlite: bool, table: str, columns: str, rows: list[tuple]) -> None:
    if not rows:
        return
    if sqlite:
        marks = ", ".join("?" * len(rows[0]))
        cur.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)
        return
    with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:  # PostgreSQL: fastest
        for row in rows:
            copy.write_row(row)


def check_bulk_trial(url: str, study_name: str, number: int, params: Sequence[str],
                     steps: int) -> None:
    """Read one bulk-added trial back through Optuna's own RDBStorage: it must look like a
    trial Optuna wrote (states, params, value, intermediate values)."""
    import optuna

    storage = optuna.storages.RDBStorage(driver_url(url))
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
        sid = study._study_id
        trial = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(sid, number))
        assert trial.state == optuna.trial.TrialState.COMPLETE, trial.state
        assert sorted(trial.params) == sorted(params), trial.params
        assert len(trial.intermediate_values) == steps, trial.intermediate_values
        assert trial.value is not None and trial.datetime_complete is not None
    finally:
        storage.engine.dispose()


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_json(path: str | Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))
    print(f"wrote {path}")
