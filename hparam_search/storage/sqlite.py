"""The fast path on SQLite: ``BEGIN IMMEDIATE`` takes the database's write lock at the start of
each write transaction, so a check and the write that depends on it (and a claim's count and
new trial) cannot be separated by another process.

Its connections are the driver's own (``sqlite3``), and a new database gets Optuna's tables,
its studies and their attributes in plain SQL too (schema.py, fast.py): a process that only
runs trials, or creates a study and runs trials, never imports SQLAlchemy (a fifth of a second
at every start)."""

from __future__ import annotations

import datetime
import functools
import sqlite3
from typing import Any


from .driver_pool import DriverPool
from .fast import FastStorage
from .sql import Cursor
from .urls import sqlite_path



def tune(dbapi_conn: Any, _record: Any = None) -> None:
    """WAL lets readers (optuna-dashboard) work while workers write; NORMAL is durable against
    any process being killed (only an OS crash can drop the last commits) and ~3x faster."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


class FastSQLiteStorage(FastStorage):
    """Optuna's RDB storage on a SQLite file, its hot paths in plain SQL."""

    placeholder = "?"
    returning = sqlite3.sqlite_version_info >= (3, 35, 0)

    _UNPICKLED = (*FastStorage._UNPICKLED, "_direct")

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._direct = self._connections()

    def _connections(self) -> DriverPool | None:
        """Driver connections to a plain file path; anything SQLAlchemy would read otherwise
        (a query, %-escapes, an in-memory database) goes through SQLAlchemy, so that Optuna's
        own code and the fast path always open the same database."""
        path = sqlite_path(self.url)
        if path is None or any(c in self.url for c in "?%") or str(path) in ("", ":memory:"):
            return None
        timeout = float(self.engine_kwargs.get("connect_args", {}).get("timeout", 5.0))
        return DriverPool(functools.partial(_connect, str(path), timeout))

    @property
    def _links(self) -> Any:
        return self._direct if self._direct is not None else self.engine

    def _make_engine(self) -> Any:
        import sqlalchemy

        engine = super()._make_engine()
        sqlalchemy.event.listen(engine, "connect", tune)
        return engine

    def close(self) -> None:
        with self._lock:
            if self._direct is not None:
                self._direct.dispose()
            super().close()

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._direct = self._connections()

    def _begin_write(self, cur: Cursor) -> None:
        cur.run("BEGIN IMMEDIATE")

    @staticmethod
    def _is_operational(exc: BaseException) -> bool:
        # "database is locked" past the busy timeout, a full disk: Optuna reports these as
        # StorageInternalError.
        return isinstance(exc, sqlite3.OperationalError)

    def _stamp(self, when: datetime.datetime) -> Any:
        # The text SQLAlchemy stores for a DateTime in SQLite, in naive UTC as Optuna does.
        return super()._stamp(when).strftime("%Y-%m-%d %H:%M:%S.%f")


def _connect(path: str, timeout: float) -> sqlite3.Connection:
    # Shared by this storage's threads (its heartbeat's), one at a time under its lock.
    conn = sqlite3.connect(path, timeout=timeout, check_same_thread=False)
    tune(conn)
    return conn
