"""The fast path on PostgreSQL, on one connection per process: the trial loop, its heartbeat
thread and the budget lock take turns on it, so a search holds as many connections as it
has processes (workers and launchers), never a pool's worth each.

Claims lock the study with a transaction-level advisory lock, released at commit: it holds
across hosts. Launchers also take a session-level advisory lock (creating tables, recording a
run, enqueueing trials), which a transaction-pooling PgBouncer does not keep: behind a pooler,
use session pooling."""

from __future__ import annotations

import contextlib
import hashlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

from .fast import FastStorage
from .sql import Cursor


class FastPostgresStorage(FastStorage):
    """Optuna's RDB storage on PostgreSQL, its hot paths in plain SQL, on the driver's own
    connection: a worker never imports SQLAlchemy (a fifth of a second at every start). What
    only Optuna's ORM does (creating tables and studies, in the launcher) shares that
    connection through SQLAlchemy's engine."""

    placeholder = "%s"
    returning = True

    _UNPICKLED = (*FastStorage._UNPICKLED, "_one")

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._one = OneConnection(_opener(self.url))

    @property
    def _links(self) -> Any:
        return self._one

    def _make_engine(self) -> Any:
        import sqlalchemy

        kwargs = dict(self.engine_kwargs)
        # The same connection as the fast path's (turns are taken under _lock).
        kwargs.setdefault("poolclass", sqlalchemy.pool.StaticPool)
        kwargs.setdefault("creator", self._one.current)
        engine = sqlalchemy.engine.create_engine(self.url, **kwargs)
        one = self._one

        @sqlalchemy.event.listens_for(engine, "checkout")
        def _still_ours(dbapi_conn: Any, record: Any, proxy: Any) -> None:
            # The fast path replaced a lost connection: the pool takes the new one.
            if one.held is not None and dbapi_conn is not one.held:
                raise sqlalchemy.exc.DisconnectionError()

        return engine

    def close(self) -> None:
        with self._lock:
            super().close()
            self._one.dispose()

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._one = OneConnection(_opener(self.url))

    def _lock_trial(self, cur: Cursor, trial_id: int) -> tuple[str, int] | None:
        return cur.one("SELECT state, study_id FROM trials WHERE trial_id = ? FOR UPDATE",
                       trial_id)

    def _lock_study(self, cur: Cursor, study_id: int) -> None:
        cur.one("SELECT pg_advisory_xact_lock(?)", advisory_key(f"study:{study_id}"))

    def _stale_among(self, cur: Cursor, trial_ids: list[int], grace: float) -> list[int]:
        if not trial_ids:
            return []
        rows = cur.all(f"SELECT trial_id FROM trial_heartbeats WHERE trial_id IN "
                       f"({','.join('?' * len(trial_ids))}) AND heartbeat < "
                       f"LOCALTIMESTAMP - ? * INTERVAL '1 second'", *trial_ids, float(grace))
        return [r[0] for r in rows]

    def _begin_read(self, raw: Any) -> None:
        # Reads run outside a transaction: psycopg would send BEGIN before them and ROLLBACK
        # after, two more round trips each. Under READ COMMITTED, PostgreSQL's default, every
        # statement takes its own snapshot either way, so what they see is the same.
        from psycopg.pq import TransactionStatus

        if raw.info.transaction_status == TransactionStatus.IDLE:
            raw.autocommit = True

    def _end_read(self, raw: Any) -> None:
        if self._lost(raw):
            return
        if not raw.autocommit:  # a connection opened again halfway (_reopen) reads in one
            self._rollback(raw)
            return
        try:
            raw.autocommit = False
        except Exception:
            raw.close()  # never left in autocommit, where writes would lose their transaction
            raise

    @staticmethod
    def _lost(raw: Any) -> bool:
        # A server restart, a failover or an idle-session timeout ends the session.
        return bool(raw.closed or raw.broken)

    @staticmethod
    def _is_operational(exc: BaseException) -> bool:
        import psycopg

        orm = sys.modules.get("sqlalchemy.exc")  # Optuna's own code ran: SQLAlchemy's wrapper
        return isinstance(exc, psycopg.OperationalError) or (
            orm is not None and isinstance(exc, orm.OperationalError))

    @contextlib.contextmanager
    def session_lock(self, name: str) -> Iterator[None]:
        """A lock across every process and host using the database, held on this storage's
        own connection (no second connection), for work spanning several transactions. The
        connection is not replaced while it is held: losing it loses the lock, and the work
        under it stops with an error."""
        key = advisory_key(name)
        with self._raw() as raw:
            with raw.cursor() as cur:
                cur.execute("SELECT pg_advisory_lock(%s)", (key,))
            raw.commit()
            self._pinned = raw
            try:
                yield
            finally:
                self._pinned = None
                if not self._lost(raw):  # else the server let go of it with the session
                    with raw.cursor() as cur:
                        cur.execute("SELECT pg_advisory_unlock(%s)", (key,))
                    raw.commit()


def advisory_key(name: str) -> int:
    """A 64-bit advisory-lock key for a name."""
    return int.from_bytes(hashlib.sha256(f"hparam_search:{name}".encode()).digest()[:8], "big",
                          signed=True)


def _opener(url: str) -> Callable[[], Any]:
    """Opens a connection to ``url`` as SQLAlchemy's psycopg dialect would: the URL minus the
    driver name is libpq's own URI form (user, password, host, port, database, and its
    options as query parameters)."""
    conninfo = "postgresql://" + url.split("://", 1)[1]

    def open_() -> Any:
        import psycopg

        return psycopg.connect(conninfo)

    return open_


class OneConnection:
    """This process's one driver connection, lent to one user at a time (the storage's lock
    takes the turns), opened again when it was lost: what the fast path needs of SQLAlchemy's
    ``StaticPool``."""

    def __init__(self, open_: Callable[[], Any]) -> None:
        self._open, self._raw = open_, None

    @property
    def held(self) -> Any:
        """The connection as it is (None before the first), without opening one."""
        return self._raw

    def current(self) -> Any:
        """The connection, opened when there is none or it was lost."""
        raw = self._raw
        if raw is None or raw.closed or raw.broken:
            self._raw = raw = self._open()
        return raw

    def connect(self) -> Borrowed:
        return Borrowed(self, self.current())

    def discard(self, raw: Any) -> None:
        with contextlib.suppress(Exception):
            raw.close()
        if self._raw is raw:
            self._raw = None

    def dispose(self) -> None:
        if self._raw is not None:
            self.discard(self._raw)


class Borrowed:
    """One turn on the connection, with the parts of SQLAlchemy's ``Connection`` the
    transactions use: after ``invalidate()``, the next ``driver_connection`` is a new one."""

    def __init__(self, owner: OneConnection, raw: Any) -> None:
        self._owner, self._raw = owner, raw
        self.closed = self.invalidated = False

    @property
    def connection(self) -> Borrowed:
        return self

    @property
    def driver_connection(self) -> Any:
        if self._raw is None:  # invalidated: opened again (raises while the server is down)
            self._raw = self._owner.current()
            self.invalidated = False
        return self._raw

    def invalidate(self) -> None:
        if self._raw is not None:
            self._owner.discard(self._raw)
            self._raw = None
        self.invalidated = True

    def close(self) -> None:
        """End the turn; a transaction left open is rolled back, as the pool's reset does."""
        if self.closed:
            return
        self.closed = True
        raw = self._raw
        if raw is None or raw.closed or raw.broken:
            return
        from psycopg.pq import TransactionStatus

        if raw.info.transaction_status != TransactionStatus.IDLE:
            try:
                raw.rollback()
            except Exception:  # noqa: BLE001 - gone: the next turn opens a new one
                self._owner.discard(raw)

    def __enter__(self) -> Borrowed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
