"""Storage URLs, SQLite tuning, the study, the trial budget lock and dead-trial recovery.

This is the only module that knows storage URLs and Optuna's tables.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import sqlite3
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import HparamSearchError

if TYPE_CHECKING:
    import optuna
    from optuna.storages import RDBStorage

OWNER_ATTR = "hparam_search:owner"
FAIL_REASON_ATTR = "fail_reason"  # the key Optuna itself uses for failed trials
# How long a writer waits for SQLite's lock before giving up: generous, since 16+ workers queue.
SQLITE_BUSY_TIMEOUT_S = 120


def sqlite_url(db_path: Path) -> str:
    return f"sqlite:///{db_path}"


JOURNAL_PREFIX = "journal:"
# Database storages: a trial whose heartbeat stops for GRACE_S (its process or host died) is
# failed by the next worker that claims a trial, from any host.
HEARTBEAT_S = 10
ORPHAN_S = 120  # a RUNNING trial with no owner recorded this long is abandoned
GRACE_S = 60
_SECRET = re.compile(r"(\b[a-z][\w+.-]*://[^:/@\s]*:)([^@\s]+)(@)", re.IGNORECASE)


def dashboard_command(url: str) -> str:
    path = journal_path(url)
    return f"optuna-dashboard {path if path else mask_secrets(url)}"


def mask_secrets(text: str) -> str:
    """Hide the password of every URL in ``text``: credentials are never printed or stored."""
    return _SECRET.sub(r"\1***\3", text)


def sqlite_path(url: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(url[len(prefix):]) if url.startswith(prefix) else None


def journal_path(url: str) -> Path | None:
    return Path(url[len(JOURNAL_PREFIX):]) if url.startswith(JOURNAL_PREFIX) else None


def resolve_storage(value: str, base: Path) -> str:
    """The storage URL for a ``storage:`` setting: a SQLAlchemy URL (a bare ``postgresql://``
    uses the driver the ``postgres`` extra installs) or ``journal:PATH`` (relative to ``base``)."""
    if value.startswith(JOURNAL_PREFIX):
        path = Path(value[len(JOURNAL_PREFIX):]).expanduser()
        return f"{JOURNAL_PREFIX}{(path if path.is_absolute() else base / path).resolve()}"
    if value.startswith("sqlite:///") and not value.startswith("sqlite:////"):
        return f"sqlite:///{(base / value[len('sqlite:///'):]).resolve()}"
    for plain in ("postgresql://", "postgres://"):
        if value.startswith(plain):
            return "postgresql+" + _postgres_driver() + "://" + value[len(plain):]
    return value


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _postgres_driver() -> str:
    import importlib.util

    for module, dialect in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return dialect
    raise HparamSearchError(
        "a postgresql:// storage needs a PostgreSQL driver, and none is installed",
        key="storage", fix="pip install 'hparam-search[postgres]'")


def _tune_sqlite_connection(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers (optuna-dashboard) work while workers write; NORMAL is durable against
    # any process being killed (only an OS crash can drop the last commits) and ~3x faster.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def open_storage(url: str, *, create: bool) -> Any:
    """Open the storage at ``url``. ``create`` makes tables and checks the schema version
    (the parent does that once); workers skip both to start fast."""
    import optuna
    import sqlalchemy

    journal = journal_path(url)
    if journal is not None:
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        journal.parent.mkdir(parents=True, exist_ok=True)
        backend = JournalFileBackend(str(journal), lock_obj=JournalFileOpenLock(str(journal)))
        return optuna.storages.JournalStorage(backend)
    engine_kwargs: dict[str, Any] = {}
    db_path = sqlite_path(url)
    extra: dict[str, Any] = {}
    if db_path is not None:
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
        if create:
            try:
                db_path.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.closing(sqlite3.connect(db_path, timeout=SQLITE_BUSY_TIMEOUT_S)
                                        ) as c:
                    c.execute("PRAGMA journal_mode=WAL")  # persistent in the file
                os.close(os.open(f"{db_path}.lock", os.O_RDWR | os.O_CREAT, 0o644))
            except (OSError, sqlite3.Error) as exc:
                problem = f"cannot write the study file: {exc}"
                if _read_only(db_path.parent):
                    problem = "the study's folder is on a read-only filesystem"
                raise HparamSearchError(
                    problem, source=str(db_path),
                    fix="The search needs a writable folder with free space (save_db_directory)."
                ) from exc
    else:
        extra = {"heartbeat_interval": HEARTBEAT_S, "grace_period": GRACE_S}
    from ._fast_sqlite import FastSQLiteStorage

    storage_class = FastSQLiteStorage if db_path is not None else optuna.storages.RDBStorage
    try:
        with warnings.catch_warnings(), _schema_lock(url if create else None):
            warnings.simplefilter("ignore")  # heartbeat options are marked experimental
            storage = storage_class(url, engine_kwargs=engine_kwargs,
                                    skip_table_creation=not create,
                                    skip_compatibility_check=not create, **extra)
    except ImportError as exc:
        raise HparamSearchError(f"no database driver for this storage URL ({exc})",
                                source=mask_secrets(url), key="storage",
                                fix="Install the driver, e.g. pip install 'hparam-search[postgres]'."
                                ) from exc
    except (sqlalchemy.exc.SQLAlchemyError, sqlite3.Error, RuntimeError) as exc:
        cause = getattr(exc, "orig", None) or exc  # the driver's message, not the SQL
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(exc).__name__
        raise HparamSearchError(f"cannot open the study storage: {mask_secrets(first)}",
                                source=mask_secrets(url),
                                fix="Check that it is reachable, writable and not full.") from exc
    if db_path is not None:
        sqlalchemy.event.listen(storage.engine, "connect", _tune_sqlite_connection)
    return storage


@contextlib.contextmanager
def _schema_lock(url: str | None) -> Iterator[None]:
    """Launchers started together on a fresh database would race to create Optuna's tables:
    one creates them while the others wait."""
    if url is None:
        yield
        return
    if sqlite_path(url) is not None:
        with budget_lock(url, "schema"):
            yield
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with budget_lock(url, "schema", engine):
            yield
    finally:
        engine.dispose()


def create_or_load_study(storage: RDBStorage, study_name: str, directions: tuple[str, ...],
                         metric_names: tuple[str, ...] = ()) -> optuna.Study:
    """Create the study, or load it and check that its direction(s) match."""
    import optuna

    study = optuna.create_study(study_name=study_name, storage=storage,
                                directions=list(directions), load_if_exists=True)
    found = tuple(d.name.lower() for d in study.directions)
    if found != tuple(directions):
        key = "direction" if len(directions) == 1 else "directions"
        raise HparamSearchError(
            f"the study '{study_name}' already exists with {key} {', '.join(found)}",
            key=key, got=directions[0] if len(directions) == 1 else list(directions),
            fix="Use the same direction, or pick a new tag (--set tag=...) for a new study.")
    if metric_names and study.metric_names != list(metric_names):
        study.set_metric_names(list(metric_names))
    return study


ENQUEUED_ATTR = "hparam_search:enqueued"


def enqueue_once(study: optuna.Study, entries: tuple[dict[str, Any], ...], url: str) -> int:
    """Enqueue the explicit trials (grid points, ``enqueue:``) that this study has not had yet.
    Returns how many were added. Recorded on the study, so a resumed run adds none twice."""
    if not entries:
        return 0
    backend = getattr(study._storage, "_backend", study._storage)  # under Optuna's cache
    with budget_lock(url, study.study_name, getattr(backend, "engine", None)):
        done = list(study._storage.get_study_system_attrs(study._study_id).get(ENQUEUED_ATTR, []))
        seen = set(done)
        new = [e for e in entries if _canonical(e) not in seen]
        for entry in new:
            study.enqueue_trial(entry, skip_if_exists=False)
        if new:
            study._storage.set_study_system_attr(study._study_id, ENQUEUED_ATTR,
                                                 done + [_canonical(e) for e in new])
    return len(new)


RUN_ATTR = "hparam_search.run"
RUNS_ATTR = "hparam_search:runs"


def record_run(study: optuna.Study, metadata: dict[str, Any]) -> None:
    """Store this run's metadata: the latest as a user attribute (optuna-dashboard shows it),
    every run's in a system attribute."""
    runs = study._storage.get_study_system_attrs(study._study_id).get(RUNS_ATTR, [])
    study._storage.set_study_system_attr(study._study_id, RUNS_ATTR, [*runs, metadata])
    study.set_user_attr(RUN_ATTR, metadata)


def _canonical(entry: dict[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True, default=str)


def state_counts(storage: Any, study_id: int) -> dict[str, int]:
    """Number of trials per state name, in one query where the storage is a database."""
    import sqlalchemy

    if not hasattr(storage, "engine"):
        counts: dict[str, int] = {}
        for t in storage.get_all_trials(study_id, deepcopy=False):
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        return counts

    query = sqlalchemy.text(
        "SELECT state, COUNT(*) FROM trials WHERE study_id = :sid GROUP BY state")
    with storage.engine.connect() as conn:
        rows = conn.execute(query, {"sid": study_id}).all()
    return {(s.name if hasattr(s, "name") else str(s)): n for s, n in rows}


def finished(counts: dict[str, int]) -> int:
    """Trials that count toward the budget once done."""
    return counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)


def claimed(counts: dict[str, int]) -> int:
    """Trials done or under way: what the budget must never exceed. WAITING (enqueued) trials
    are not counted: they were enqueued within the budget, and a worker takes one before it
    ever creates a new trial."""
    return finished(counts) + counts.get("RUNNING", 0)


@contextlib.contextmanager
def budget_lock(url: str, study_name: str, engine: Any = None) -> Iterator[None]:
    """Serialise "count the trials, then create one" across every process that shares the study.

    SQLite and journal files: a lock file beside the storage (flock; the kernel releases it
    when a holder dies); ``engine`` (the database's SQLAlchemy engine) is needed otherwise. PostgreSQL: a session advisory lock, which covers every host using the
    database and is released when the holder's connection drops. MySQL: GET_LOCK, likewise.
    """
    # (Optuna's journal uses "<file>.lock" itself, as a lock that exists only while held.)
    local = sqlite_path(url) or journal_path(url)
    if local is not None:
        import fcntl

        suffix = ".lock" if sqlite_path(url) else ".budget.lock"
        fd = os.open(f"{local}{suffix}", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the lock
        return
    import sqlalchemy

    key = int.from_bytes(hashlib.sha256(f"hparam_search:{study_name}".encode()).digest()[:8],
                         "big", signed=True)
    dialect = engine.dialect.name
    with engine.connect() as conn:
        if dialect == "postgresql":
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        elif dialect in ("mysql", "mariadb"):
            name = f"hparam_search_{key & 0xFFFFFFFF:x}"
            conn.execute(sqlalchemy.text("SELECT GET_LOCK(:n, -1)"), {"n": name})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:n)"), {"n": name})
        else:
            raise HparamSearchError(f"no way to coordinate workers on a {dialect} database",
                                    key="storage", fix="Use PostgreSQL, MySQL or SQLite.")


@dataclass(frozen=True)
class Owner:
    """Which process runs a trial, to tell a live trial from one whose process died."""

    host: str
    pid: int
    started: int | None  # process start time in clock ticks: guards against pid reuse
    rank: int

    @classmethod
    def me(cls, rank: int) -> Owner:
        return cls(socket.gethostname(), os.getpid(), _process_start(os.getpid()), rank)

    def as_attr(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_attr(cls, value: Any) -> Owner | None:
        try:
            return cls(**value)
        except TypeError:
            return None

    def is_alive(self) -> bool:
        """Whether the process is still running (only answerable on its own host)."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        stat = _proc_stat(self.pid)
        if stat is None:  # no /proc (macOS): the pid exists, trust it
            return True
        state, started = stat
        # A zombie has exited (where no init reaps orphans, it lingers); a different start
        # time means the pid was reused by another process.
        return state != "Z" and (self.started is None or started == self.started)


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) from /proc, or None where there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # The command name (field 2) may hold spaces, so split after its closing ')'.
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _process_start(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def fail_trial(storage: RDBStorage, trial_id: int, reason: str) -> bool:
    """Mark a RUNNING trial FAIL with ``reason``; False when it had already finished."""
    from optuna.trial import TrialState

    try:
        storage.set_trial_system_attr(trial_id, FAIL_REASON_ATTR, reason)
        return storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except RuntimeError:  # UpdateFinishedTrialError: it finished meanwhile
        return False


def running_trials(storage: RDBStorage, study_id: int) -> list[optuna.trial.FrozenTrial]:
    from optuna.trial import TrialState

    return storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))


def fail_trials_of(storage: RDBStorage, study_id: int, pids: set[int] | None, reason: str
                   ) -> list[int]:
    """Mark FAIL the RUNNING trials whose process on this host is in ``pids`` or, with
    ``pids=None``, is dead. Returns the trial numbers."""
    import datetime

    host = socket.gethostname()
    numbers = []
    for trial in running_trials(storage, study_id):
        owner = Owner.from_attr(trial.system_attrs.get(OWNER_ATTR))
        if owner is None:
            # Created by a process that died before saying who it was (only possible where the
            # owner is a separate write, i.e. not on SQLite): fail it once clearly abandoned.
            age = datetime.datetime.now() - (trial.datetime_start or datetime.datetime.now())
            if pids is None and age.total_seconds() > ORPHAN_S and \
                    fail_trial(storage, trial._trial_id, reason):
                numbers.append(trial.number)
            continue
        if owner.host != host:
            continue
        hit = owner.pid in pids if pids is not None else not owner.is_alive()
        if hit and fail_trial(storage, trial._trial_id, reason):
            numbers.append(trial.number)
            _requeue_if_explicit(storage, study_id, trial)
    return numbers


def _requeue_if_explicit(storage: RDBStorage, study_id: int, trial: Any) -> None:
    """A grid point or enqueued trial whose process died is queued again: each must finish
    once, and a crash is not a finish."""
    import optuna

    fixed = trial.system_attrs.get("fixed_params")
    if fixed:
        study = optuna.load_study(study_name=storage.get_study_name_from_id(study_id),
                                  storage=storage)
        study.enqueue_trial(fixed, skip_if_exists=False)


@contextlib.contextmanager
def heartbeat(storage: Any, trial_id: int) -> Iterator[None]:
    """While a trial runs on a database storage, record a heartbeat every HEARTBEAT_S, so that
    if this process or its host dies, the trial is failed by a worker elsewhere (fail_stale)."""
    if getattr(storage, "heartbeat_interval", None) is None:
        yield
        return
    import threading

    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # noqa: BLE001 - a missed beat is retried; the grace period covers it
                pass
            if stop.wait(HEARTBEAT_S):
                return

    thread = threading.Thread(target=beat, name="hparam-search-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_stale(study: Any, storage: Any) -> None:
    """Fail the trials whose heartbeat stopped more than GRACE_S ago (database storages)."""
    if getattr(storage, "heartbeat_interval", None) is None:
        return
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)
