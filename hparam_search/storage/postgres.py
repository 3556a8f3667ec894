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
from collections.abc import Iterator
from typing import Any

import sqlalchemy

from .fast import FastStorage
from .sql import Cursor


class FastPostgresStorage(FastStorage):
    """Optuna's RDB storage on PostgreSQL, its hot paths in plain SQL."""

    placeholder = "%s"
    returning = True

    def __init__(self, url: str, **kwargs: Any) -> None:
        engine_kwargs = dict(kwargs.pop("engine_kwargs", None) or {})
        # One connection, shared by every use in this process (turns are taken under _lock).
        engine_kwargs.setdefault("poolclass", sqlalchemy.pool.StaticPool)
        super().__init__(url, engine_kwargs=engine_kwargs, **kwargs)

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

        return isinstance(exc, (psycopg.OperationalError, sqlalchemy.exc.OperationalError))

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
