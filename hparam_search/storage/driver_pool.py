"""Driver connections kept for the next transaction: what the fast path needs of SQLAlchemy's
pool, for a file database (SQLite), without importing SQLAlchemy."""

from __future__ import annotations

import os
import sqlite3
import threading
import weakref
from collections.abc import Callable

# Every pool of this process: a child forked from it must not use (nor close) the parent's
# connections, whose locks SQLite tracks per process. It keeps them here, unused.
_POOLS: weakref.WeakSet[DriverPool] = weakref.WeakSet()
_INHERITED: list[sqlite3.Connection] = []


class DriverPool:
    """The driver's connections to one file, kept for the next transaction: what the fast path
    needs of SQLAlchemy's pool. A transaction borrows one; one that runs inside another (on
    the same thread) gets a second, as from SQLAlchemy's pool."""

    def __init__(self, open_: Callable[[], sqlite3.Connection]) -> None:
        self._open = open_
        self._start()
        _POOLS.add(self)

    def _start(self) -> None:
        self._idle: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        # A pool nobody holds any more closes its connections, as SQLAlchemy's does.
        self._finalizer = weakref.finalize(self, _close_all, self._idle)

    def _forget(self) -> None:
        """In a forked child: the parent's connections are left alone."""
        self._finalizer.detach()
        _INHERITED.extend(self._idle)
        self._start()

    def connect(self) -> Lent:
        with self._guard:
            raw = self._idle.pop() if self._idle else None
        return Lent(self, raw if raw is not None else self._open())

    def give_back(self, raw: sqlite3.Connection) -> None:
        with self._guard:
            self._idle.append(raw)

    def dispose(self) -> None:
        with self._guard:
            idle = self._idle[:]
            self._idle.clear()  # in place: the finalizer holds this list
        _close_all(idle)


def _close_all(connections: list[sqlite3.Connection]) -> None:
    for raw in connections:
        try:
            raw.close()
        except sqlite3.Error:
            pass


class Lent:
    """One lent connection, with the parts of SQLAlchemy's ``Connection`` the transactions
    use (``connection.driver_connection``, ``invalidate``, ``close``)."""

    def __init__(self, pool: DriverPool, raw: sqlite3.Connection) -> None:
        self._pool, self.driver_connection = pool, raw
        self.closed = self.invalidated = False

    @property
    def connection(self) -> Lent:
        return self

    def invalidate(self) -> None:
        if not (self.closed or self.invalidated):
            self.invalidated = True
            self.driver_connection.close()

    def close(self) -> None:
        if not (self.closed or self.invalidated):
            self.closed = True
            try:
                if self.driver_connection.in_transaction:  # as the pool's reset on return does
                    self.driver_connection.rollback()
            except sqlite3.Error:
                self.driver_connection.close()
                return
            self._pool.give_back(self.driver_connection)

    def __enter__(self) -> Lent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _after_fork_in_child() -> None:
    for pool in list(_POOLS):
        pool._forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
