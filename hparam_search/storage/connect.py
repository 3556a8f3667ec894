"""Open a study storage from its URL: SQLite tuning, table creation, readable errors."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import HparamSearchError
from .budget import budget_lock
from .urls import journal_path, mask_secrets, sqlite_path

# How long a writer waits for SQLite's lock before giving up: generous, since 16+ workers queue.
SQLITE_BUSY_TIMEOUT_S = 120
# Database storages: a trial whose heartbeat stops for GRACE_S (its process or host died) is
# failed by the next worker that claims a trial, from any host.
HEARTBEAT_S = 10
GRACE_S = 60
GRACE_ENV = "HPARAM_SEARCH_HEARTBEAT_GRACE"  # seconds; a shorter grace finds lost hosts sooner


def heartbeat_timing() -> tuple[float, float]:
    """(heartbeat interval, grace period) in seconds; the grace comes from GRACE_ENV when
    set, and beats come at least three times per grace period."""
    try:
        grace = float(os.environ.get(GRACE_ENV, GRACE_S))
    except ValueError:
        grace = GRACE_S
    grace = max(grace, 1.0)
    return min(HEARTBEAT_S, grace / 3), grace


def open_storage(url: str, *, create: bool) -> Any:
    """Open the storage at ``url``: the fast path for SQLite and PostgreSQL, Optuna's own
    storages otherwise. ``create`` makes tables and checks the schema version (the launcher
    does that once); workers skip both to start fast."""
    import optuna
    from optuna.exceptions import StorageInternalError

    journal = journal_path(url)
    if journal is not None:
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        journal.parent.mkdir(parents=True, exist_ok=True)
        backend = JournalFileBackend(str(journal), lock_obj=JournalFileOpenLock(str(journal)))
        return optuna.storages.JournalStorage(backend)
    db_path = sqlite_path(url)
    interval, grace = heartbeat_timing()
    # Optuna stores whole seconds; the beats themselves follow `interval` (Heartbeat).
    beats = {"heartbeat_interval": max(1, int(interval)), "grace_period": max(1, int(grace))}
    if create and db_path is not None:
        _make_folder(db_path)  # the schema lock's file lies beside the database
    try:
        with warnings.catch_warnings(), _schema_lock(url if create else None):
            warnings.simplefilter("ignore")  # heartbeat options are marked experimental
            if db_path is not None:
                from .sqlite import FastSQLiteStorage

                if create:
                    _set_wal(db_path)  # under the lock: launchers starting together collide
                storage = FastSQLiteStorage(url, engine_kwargs={
                    "connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}})
            elif url.startswith("postgresql+psycopg://"):
                from .postgres import FastPostgresStorage

                storage = FastPostgresStorage(url, **beats)
            else:  # other databases, other drivers: Optuna's own storage
                storage = optuna.storages.RDBStorage(url, skip_table_creation=not create,
                                                     skip_compatibility_check=not create,
                                                     **beats)
            if create and hasattr(storage, "prepare_schema"):
                try:
                    storage.prepare_schema()
                except BaseException:
                    close_storage(storage)  # refused (an old schema, say): no open connection
                    raise
    except ImportError as exc:
        raise HparamSearchError(f"no database driver for this storage URL ({exc})",
                                source=mask_secrets(url), key="storage",
                                fix="Install the driver, e.g. pip install "
                                    "'hparam-search[postgres]'.") from exc
    except (*_database_errors(), StorageInternalError, RuntimeError) as exc:
        raise HparamSearchError(f"cannot open the study storage: {driver_message(exc)}",
                                source=mask_secrets(url),
                                fix=refused_fix(exc) or
                                "Check that it is reachable, writable and not full.") from exc
    return storage


def driver_message(exc: BaseException) -> str:
    """The driver's (or server's) own words for an error, first line, password masked."""
    cause = getattr(exc, "orig", None) or exc.__cause__ or exc
    text = str(cause).strip()
    return mask_secrets(text.splitlines()[0] if text else type(exc).__name__)


def refused_fix(exc: BaseException) -> str | None:
    """The advice for a database server that refuses connections because it has no slot."""
    text = str(getattr(exc, "orig", None) or exc.__cause__ or exc).lower()
    if "too many clients" not in text and "connection slots are reserved" not in text:
        return None
    return ("The server refused a connection: it has no free connection slot (PostgreSQL's "
            "max_connections, 100 by default, less the superuser reserve). Each worker and "
            "each launcher holds one connection: run fewer workers (n_jobs, or fewer "
            "launchers), or raise max_connections on the server.")


def close_storage(storage: Any) -> None:
    """Close the storage's database connections (a no-op for journal files)."""
    backend = getattr(storage, "_backend", storage)
    if hasattr(backend, "_read_cursor"):  # the fast path: its engine may never have been made
        backend.close()
        return
    engine = getattr(backend, "engine", None)
    if engine is not None:
        engine.dispose()


def _make_folder(db_path: Path) -> None:
    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(f"{db_path}.lock", os.O_RDWR | os.O_CREAT, 0o644))
    except OSError as exc:
        _cannot_write(db_path, exc)


def _set_wal(db_path: Path) -> None:
    try:
        with contextlib.closing(sqlite3.connect(db_path, timeout=SQLITE_BUSY_TIMEOUT_S)) as c:
            c.execute("PRAGMA journal_mode=WAL")  # persistent in the file
    except sqlite3.Error as exc:
        _cannot_write(db_path, exc)


def _cannot_write(db_path: Path, exc: Exception) -> None:
    problem = f"cannot write the study file: {exc}"
    if _read_only(db_path.parent):
        problem = "the study's folder is on a read-only filesystem"
    raise HparamSearchError(
        problem, source=str(db_path),
        fix="The search needs a writable folder with free space (save_db_directory)."
    ) from exc


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _database_errors() -> tuple[type[BaseException], ...]:
    """The errors a database (or its driver) raises. psycopg's and SQLAlchemy's only where
    they were imported: nothing else can have raised one."""
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and hasattr(psycopg, "Error"):
        errors += (psycopg.Error,)
    sqlalchemy = sys.modules.get("sqlalchemy")
    if sqlalchemy is not None and hasattr(sqlalchemy, "exc"):
        errors += (sqlalchemy.exc.SQLAlchemyError,)
    return errors


@contextlib.contextmanager
def _schema_lock(url: str | None) -> Iterator[None]:
    """Launchers started together on a fresh database would race to create Optuna's tables:
    one creates them while the others wait."""
    if url is None or url.startswith("postgresql+psycopg://"):
        yield  # the fast PostgreSQL storage takes it on its own connection (schema.prepare)
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


def failure_message(exc: BaseException, who: str) -> str:
    """One paragraph for an exception that stopped a process of the search: the storage's
    fault only when it is a storage error."""
    detail = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else ""
    what = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    if is_storage_error(exc):
        refused = refused_fix(exc)
        if refused:
            return f"the study storage failed in {who}: {driver_message(exc)}. {refused}"
        return mask_secrets(
            f"the study storage failed in {who}: {what}. Check that the database is reachable "
            "and its disk is writable and not full; the study resumes where it stopped.")
    return mask_secrets(
        f"unexpected error in {who}: {what}. This is not an error in train; set "
        "HPARAM_SEARCH_DEBUG=1 to see the traceback, and please report it.")


def is_storage_error(exc: BaseException) -> bool:
    from optuna.exceptions import StorageInternalError

    return isinstance(exc, (*_database_errors(), StorageInternalError, OSError))
