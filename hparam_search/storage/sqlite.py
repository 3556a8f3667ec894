"""The fast path on SQLite: ``BEGIN IMMEDIATE`` takes the database's write lock at the start of
each write transaction, so a check and the write that depends on it (and a claim's count and
new trial) cannot be separated by another process."""

from __future__ import annotations

import datetime
import sqlite3
from typing import Any

from .fast import FastStorage
from .sql import Cursor


class FastSQLiteStorage(FastStorage):
    """Optuna's RDB storage on a SQLite file, its hot paths in plain SQL."""

    placeholder = "?"
    returning = sqlite3.sqlite_version_info >= (3, 35, 0)

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
