"""The fast path on SQLite: ``BEGIN IMMEDIATE`` takes the database's write lock at the start of
each write transaction, so a check and the write that depends on it (and a claim's count and
new trial) cannot be separated by another process.

Its connections are the driver's own (``sqlite3``), and a new database gets Optuna's tables,
its studies and their attributes in plain SQL too: a process that only runs trials, or creates
a study and runs trials, never imports SQLAlchemy (a fifth of a second at every start)."""

from __future__ import annotations

import datetime
import functools
import json
import logging
import sqlite3
import uuid
from collections.abc import Sequence
from typing import Any

from optuna.exceptions import DuplicatedStudyError
from optuna.storages._base import DEFAULT_STUDY_NAME_PREFIX
from optuna.study import StudyDirection

from .driver_pool import DriverPool
from .fast import FastStorage
from .sql import SET_STUDY_ATTR, Cursor
from .urls import sqlite_path

_logger = logging.getLogger("optuna.storages._rdb.storage")


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

    # -- studies: what Optuna's storage writes, as SQL (the write lock makes the name check
    # and the insert one step) ----------------------------------------------------------------
    def create_new_study(self, directions: Sequence[StudyDirection],
                         study_name: str | None = None) -> int:
        name = study_name if study_name is not None else (
            DEFAULT_STUDY_NAME_PREFIX + str(uuid.uuid4()))
        with self._write() as cur:
            if cur.one("SELECT 1 FROM studies WHERE study_name = ?", name) is not None:
                raise DuplicatedStudyError(
                    f"Another study with name '{name}' already exists. Please specify a "
                    "different name, or reuse the existing one by setting `load_if_exists` "
                    "(for Python API) or `--skip-if-exists` flag (for CLI).")
            study_id = cur.insert("INSERT INTO studies (study_name) VALUES (?)", name,
                                  key="study_id")
            for objective, direction in enumerate(directions):
                cur.run("INSERT INTO study_directions (direction, study_id, objective) "
                        "VALUES (?, ?, ?)", StudyDirection(direction).name, study_id, objective)
        _logger.info(f"A new study created in RDB with name: {name}")
        return study_id

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._set_study_attr("study_user_attributes", study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._set_study_attr("study_system_attributes", study_id, key, value)

    def _set_study_attr(self, table: str, study_id: int, key: str, value: Any) -> None:
        text = json.dumps(value)
        with self._write() as cur:
            self._study_exists(cur, study_id)
            cur.run(SET_STUDY_ATTR[table], study_id, key, text)


def _connect(path: str, timeout: float) -> sqlite3.Connection:
    # Shared by this storage's threads (its heartbeat's), one at a time under its lock.
    conn = sqlite3.connect(path, timeout=timeout, check_same_thread=False)
    tune(conn)
    return conn
