"""The lock around "count the trials, then claim one" that every process sharing a study
takes."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from ..errors import HparamSearchError
from .urls import journal_path, sqlite_path


@contextlib.contextmanager
def budget_lock(url: str, study_name: str, via: Any = None) -> Iterator[None]:
    """Serialise work on a study that spans several transactions (enqueueing, recording a run,
    "count the trials, then create one" where the storage cannot claim in one transaction)
    across every process that shares the study.

    SQLite and journal files: a lock file beside the storage (flock; the kernel releases it
    when a holder dies). Otherwise ``via`` is the storage (or a SQLAlchemy engine).
    PostgreSQL: a session advisory lock, which covers every host using the database and is
    released when the holder's connection drops. MySQL: GET_LOCK, likewise.
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
    if hasattr(via, "session_lock"):  # the fast PostgreSQL storage: on its own connection
        with via.session_lock(study_name):
            yield
        return
    import sqlalchemy

    from .postgres import advisory_key  # the same key as the fast path's session lock

    engine = getattr(via, "engine", via)
    key = advisory_key(study_name)
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
