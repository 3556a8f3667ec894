"""Transactions on the fast storage's one connection: reads, write transactions that hold
the dialect's write lock, and a connection lost under them (a server restart, a failover, an
ended idle session) replaced where that is safe: at a transaction's first statement, before
anything has run, and never while a session lock lives on the old one."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from optuna.exceptions import StorageInternalError

from .sql import Cursor

# How long a lost database connection is tried again: a server restarting, a failover.
RECONNECT_S = 60
LOCK_LOST = ("the connection to the database was lost while this process held a lock on the "
             "study, so the lock is gone; run the same command again")


class Transactions:
    """Mixed into the fast storage, which supplies ``_links`` (SQLAlchemy's engine, or what
    stands in for it: ``connect()`` lends a connection), ``placeholder``,
    ``returning``, ``_lock`` (one transaction at a time on the connection; its heartbeat
    thread shares it), ``_connected``, ``_pinned`` (see ``session_lock``), and the writes
    ``batched()`` holds back (``_queued``, ``_batching``, ``_flush``)."""

    @staticmethod
    def _is_operational(exc: BaseException) -> bool:
        """Whether a driver error means the database failed (dialect), not the statement."""
        return False

    def _sql(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    @contextlib.contextmanager
    def _raw(self) -> Iterator[Any]:
        """The driver connection, under this storage's lock (its heartbeat thread shares it)."""
        with self._lock, self._connection() as conn:
            try:
                yield self._driver(conn)
            finally:
                self._drop_if_lost(conn)

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[Cursor]:
        """A cursor under this storage's lock, on a connection that is replaced when the
        transaction's first statement finds it lost. The writes batched() holds back go first
        when this is their thread (to other threads they have not happened yet)."""
        with self._lock:
            if self._queued and self._batching == threading.get_ident():
                self._flush()
            with self._connection() as conn:
                cur = Cursor(self._driver(conn).cursor(), self._sql, self.returning,
                             reopen=lambda exc: self._reopen(conn, exc))
                try:
                    yield cur
                finally:
                    with contextlib.suppress(Exception):
                        cur.close()
                    self._drop_if_lost(conn)

    def _connection(self) -> Any:
        """A connection from ``_links``. One that was lost and could not be opened again at once
        is tried for RECONNECT_S seconds; never the first (a wrong address or password says so
        at once), and never while a session lock lives on the old one (see _driver)."""
        try:
            conn = self._links.connect()
        except Exception as exc:  # noqa: BLE001 - sorted out just below
            if self._pinned is not None and self._is_operational(exc):
                raise StorageInternalError(LOCK_LOST) from exc  # it went with the old one
            if not (self._connected and self._pinned is None and self._is_operational(exc)):
                raise
            conn = self._until_open(self._links.connect, exc)
        self._connected = True
        return conn

    def _until_open(self, open_: Callable[[], Any], lost: BaseException) -> Any:
        """``open_()``, tried again for RECONNECT_S seconds while the database refuses it (a
        server restarting)."""
        deadline, delay = time.monotonic() + RECONNECT_S, 0.1
        while True:
            try:
                return open_()
            except Exception as exc:  # noqa: BLE001 - sorted out just below
                if not self._is_operational(exc):
                    raise
                if time.monotonic() + delay > deadline:
                    raise StorageInternalError(
                        f"the connection to the database was lost ({lost}) and a new one could "
                        f"not be opened within {RECONNECT_S} s: {exc}") from exc
            time.sleep(delay)
            delay = min(2 * delay, 2.0)

    def _driver(self, conn: Any) -> Any:
        """The driver connection under ``conn``; an error when it is not the one a session
        lock was taken on (the lock went with the old connection)."""
        raw = conn.connection.driver_connection
        if self._pinned is not None and raw is not self._pinned:
            conn.close()
            raise StorageInternalError(LOCK_LOST)
        return raw

    def _reopen(self, conn: Any, exc: BaseException) -> Any | None:
        """A cursor on a new connection when ``exc`` came from a lost one, else None."""
        if conn.invalidated or not self._lost(conn.connection.driver_connection):
            return None
        if self._pinned is not None:
            raise StorageInternalError(LOCK_LOST) from exc
        conn.invalidate()
        return self._until_open(lambda: conn.connection.driver_connection.cursor(), exc)

    def _drop_if_lost(self, conn: Any) -> None:
        """Hand a lost connection back as invalid, so the next use opens a new one (and the
        pool does not log a failed reset)."""
        if conn.invalidated or conn.closed:
            return
        raw = conn.connection.driver_connection
        if raw is None or self._lost(raw):
            conn.invalidate()

    def _rollback(self, raw: Any) -> None:
        try:
            raw.rollback()
        except Exception:
            if not self._lost(raw):  # a lost connection's transaction is gone already
                raise

    @contextlib.contextmanager
    def _read_cursor(self) -> Iterator[Cursor]:
        with self._cursor() as cur:
            self._begin_read(cur.connection)
            try:
                yield cur
            finally:
                self._end_read(cur.connection)

    def _begin_read(self, raw: Any) -> None:
        """Before reads (dialect): SQLite's driver opens no transaction for a SELECT."""

    def _end_read(self, raw: Any) -> None:
        """After reads: end whatever transaction they opened."""
        self._rollback(raw)

    @contextlib.contextmanager
    def _write(self) -> Iterator[Cursor]:
        """One write transaction that holds the dialect's write lock from its first statement,
        so a check and the write that depends on it cannot be separated by another process."""
        with self._cursor() as cur:
            try:
                self._begin_write(cur)
                yield cur
            except BaseException as exc:
                self._rollback(cur.connection)
                if self._is_operational(exc):
                    raise StorageInternalError(f"the database failed: {exc}") from exc
                raise
            try:
                cur.connection.commit()
            except Exception as exc:  # noqa: BLE001 - the driver's error, as Optuna reports it
                raise StorageInternalError(f"the commit failed: {exc}") from exc

    def _begin_write(self, cur: Cursor) -> None:
        """Start a transaction that holds the write lock (dialect)."""

    @staticmethod
    def _lost(raw: Any) -> bool:
        """Whether this driver connection is gone (dialect: a server's can be; a file's not)."""
        return False
