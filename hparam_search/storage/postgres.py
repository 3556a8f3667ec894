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
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl, unquote

from .fast import FastStorage
from .sql import Cursor


class FastPostgresStorage(FastStorage):
    """Optuna's RDB storage on PostgreSQL, its hot paths in plain SQL, on the driver's own
    connection: neither a launcher nor a worker imports SQLAlchemy (a fifth of a second at
    every start). What only Optuna's ORM does (deleting and listing studies, migrations, the
    tables of another schema revision) shares that connection through SQLAlchemy's engine."""

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
            if dbapi_conn is not one.held:
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
        # A server restart, a failover or an idle-session timeout ends the session. A statement
        # still under way between calls was cut short in the client (Ctrl-C or SIGTERM raises
        # wherever the launcher is): the session cannot take another one, so it counts as lost.
        from psycopg.pq import TransactionStatus

        return bool(raw.closed or raw.broken
                    or raw.info.transaction_status == TransactionStatus.ACTIVE)

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
    """Opens a connection to ``url`` with what SQLAlchemy's psycopg dialect would pass."""
    kwargs = connect_kwargs(url)

    def open_() -> Any:
        import psycopg

        return psycopg.connect(**kwargs)

    return open_


# SQLAlchemy's own reading of a URL (sqlalchemy.engine.url), without importing it.
_URL = re.compile(r"""
    (?P<name>[\w\+]+)://
    (?:(?P<username>[^:/]*)(?::(?P<password>[^@]*))?@)?
    (?:(?:\[(?P<ipv6host>[^/\?]+)\]|(?P<ipv4host>[^/:\?]+))?(?::(?P<port>[^/\?]*))?)?
    (?:/(?P<database>[^\?]*))?
    (?:\?(?P<query>.*))?
    """, re.X)


def connect_kwargs(url: str) -> dict[str, Any]:
    """``psycopg.connect()``'s arguments for a URL, as SQLAlchemy reads it and its psycopg
    dialect passes it on: user, password and database percent-decoded (so a ``/`` in a
    password is fine), the query's options as they are, several ``host=h:port`` as libpq's
    comma lists."""
    found = _URL.match(url)
    if found is None:
        raise ValueError(f"cannot read the database URL {url!r}")
    parts = found.groupdict()
    kwargs: dict[str, Any] = {}
    for part, key in (("username", "user"), ("password", "password"), ("database", "dbname")):
        if parts[part]:
            kwargs[key] = unquote(parts[part])
    if parts["ipv4host"] or parts["ipv6host"]:
        kwargs["host"] = parts["ipv4host"] or parts["ipv6host"]
    if parts["port"]:
        kwargs["port"] = int(parts["port"])
    query: dict[str, list[str]] = {}
    for key, value in parse_qsl(parts["query"] or ""):
        query.setdefault(key, []).append(value)
    kwargs.update({key: values[0] if len(values) == 1 else values
                   for key, values in query.items()})
    hosts = kwargs.get("host")
    single = isinstance(hosts, str) and "host" in query and "port" not in query and \
        re.fullmatch(r"[a-zA-Z0-9\-\.]*:\d*", hosts)
    if isinstance(hosts, list) or single:  # host=h1:p1&host=h2:p2 (or one host:port)
        pairs = [h.split(":", 1) if ":" in h else (h, "") for h in
                 (hosts if isinstance(hosts, list) else [hosts])]
        kwargs["host"] = ",".join(h for h, _ in pairs)
        ports = ",".join(p for _, p in pairs)
        if ports.strip(","):
            kwargs["port"] = ports
    return kwargs


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
