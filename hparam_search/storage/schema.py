"""Optuna's tables on a new database, and the schema check on an existing one, done the way
Optuna does them but without importing alembic (a quarter of a second per process start):
the newest schema revision is read from Optuna's own migration files. On SQLite and
PostgreSQL, while Optuna's newest tables are those optuna_tables.py holds, it is all plain SQL,
without SQLAlchemy either.
Whenever the quick check cannot vouch for a database, Optuna's own check runs and says what
to do."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from optuna import version

from . import optuna_tables
from .sql import Cursor

_REVISION = re.compile(r'^(down_revision|revision)\s*=\s*["\']?([^"\'\s]+)["\']?', re.M)
_SCHEMA_VERSION = re.compile(r"^SCHEMA_VERSION\s*=\s*(\d+)", re.M)
# As alembic words it: SQLite keeps each table's statement, so the schema reads as Optuna's.
_ALEMBIC_TABLE = ("CREATE TABLE IF NOT EXISTS alembic_version (\n\tversion_num VARCHAR(32) NOT "
                  "NULL, \n\tCONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)\n)")


def prepare(storage: Any) -> None:
    """Create missing tables and the version row (as Optuna's RDBStorage does), then check
    that an existing database is at the schema this Optuna writes."""
    if getattr(storage, "session_lock", None) is not None:
        # PostgreSQL: launchers starting together on a new database take turns (the lock is
        # held on the storage's own connection).
        with storage.session_lock("schema"):
            _prepare(storage)
    else:
        _prepare(storage)


def _prepare(storage: Any) -> None:
    if _prepare_plain(storage):
        return
    import sqlalchemy
    from optuna.storages._rdb import models

    engine = storage.engine
    models.BaseModel.metadata.create_all(engine)
    with engine.begin() as conn:
        row = conn.execute(sqlalchemy.text(
            "SELECT schema_version FROM version_info")).first()
        if row is None:  # a new database: what Optuna's _init_version_info_model writes ...
            conn.execute(sqlalchemy.text(
                "INSERT INTO version_info (version_info_id, schema_version, library_version) "
                "VALUES (1, :schema, :library)"),
                {"schema": models.SCHEMA_VERSION, "library": version.__version__})
            head = head_revision()
            if head is not None:  # ... and the revision stamp its alembic setup writes
                conn.execute(sqlalchemy.text(_ALEMBIC_TABLE))
                conn.execute(sqlalchemy.text(
                    "INSERT INTO alembic_version (version_num) VALUES (:head)"), {"head": head})
            new = True
        else:
            new = False
            schema_version = row[0]
            names = sqlalchemy.inspect(conn).get_table_names()
            revision = None
            if "alembic_version" in names:
                found = conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version"))
                revision = found.scalar()
    if new:
        if head_revision() is None:  # a layout this reader does not know: alembic stamps it
            storage._version_manager  # noqa: B018
        return
    if revision is None and schema_version == models.SCHEMA_VERSION:
        return  # Optuna stamps the newest revision itself the first time it opens this file
    if revision is not None and revision == head_revision():
        return
    # Older (or newer) than this Optuna: let Optuna say so, with its upgrade advice.
    storage._version_manager.check_table_schema_compatibility()


def _prepare_plain(storage: Any) -> bool:
    """``prepare`` in plain SQL on a SQLite file or on PostgreSQL through the fast path's own
    connection, when this Optuna's tables are the ones optuna_tables.py holds; False when the
    general path must do it (another schema, a database with only some of the tables). A
    database that is ready is only read."""
    dialect = _plain_dialect(storage)
    if (dialect is None or head_revision() != optuna_tables.REVISION
            or models_schema_version() != optuna_tables.SCHEMA_VERSION):
        return False
    listing, statements = _DIALECTS[dialect]
    with storage._read_cursor() as cur:
        found = _tables(cur, listing)
    if found == "some":
        return False
    if found == "none" or found[0] is None:
        # SQLite's write lock (PostgreSQL: the schema lock) makes launchers take turns.
        with storage._write() as cur:
            found = _tables(cur, listing)  # again, now that no other process can change it
            if found == "some":
                return False
            if found == "none":
                for statement in statements:
                    cur.run(statement)
            if found == "none" or found[0] is None:  # a new database: Optuna's version row
                _stamp(cur)
                return True
    schema_version, revision = found
    if revision is None and schema_version == optuna_tables.SCHEMA_VERSION:
        return True  # Optuna stamps the newest revision itself the first time it opens this file
    if revision == optuna_tables.REVISION:
        return True
    storage._version_manager.check_table_schema_compatibility()  # with Optuna's advice
    return True


# The dialects done in plain SQL: how to list the tables, and Optuna's tables as statements.
_DIALECTS = {
    "sqlite": ("SELECT name FROM sqlite_master WHERE type = 'table'", optuna_tables.STATEMENTS),
    # As SQLAlchemy looks: what the search path shows, Optuna's enum types included (left
    # without their tables, they make the general path do it: it skips existing types).
    "postgresql": ("SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') AND "
                   "pg_table_is_visible(oid) UNION ALL SELECT typname FROM pg_type WHERE "
                   "typtype = 'e' AND pg_type_is_visible(oid)",
                   optuna_tables.POSTGRES_STATEMENTS),
}


def _plain_dialect(storage: Any) -> str | None:
    """Which of _DIALECTS the storage's own connections speak, or None (through SQLAlchemy)."""
    if getattr(storage, "_direct", None) is not None:
        return "sqlite"
    if getattr(storage, "_one", None) is not None:
        return "postgresql"
    return None


def _tables(cur: Cursor, listing: str) -> str | tuple[int | None, str | None]:
    """"none" or "some" of Optuna's tables, or with all of them (schema_version, alembic
    revision), None for a missing row."""
    names = {n for (n,) in cur.all(listing)}
    tables = set(optuna_tables.TABLES)
    if not names & (tables | set(optuna_tables.ENUM_TYPES)):
        return "none"
    if not tables <= names:
        return "some"
    row = cur.one("SELECT schema_version FROM version_info")
    stamp = (cur.one("SELECT version_num FROM alembic_version")
             if "alembic_version" in names else None)
    return (row[0] if row else None, stamp[0] if stamp else None)


def _stamp(cur: Cursor) -> None:
    """What Optuna writes on a new database: its version row and alembic's revision stamp."""
    cur.run("INSERT INTO version_info (version_info_id, schema_version, library_version) "
            "VALUES (1, ?, ?)", optuna_tables.SCHEMA_VERSION, version.__version__)
    cur.run(_ALEMBIC_TABLE)
    cur.run("INSERT INTO alembic_version (version_num) VALUES (?)", optuna_tables.REVISION)


@lru_cache(maxsize=1)
def models_schema_version() -> int | None:
    """SCHEMA_VERSION of Optuna's models, read from their source (importing them imports
    SQLAlchemy's ORM)."""
    import optuna.storages._rdb as rdb

    found = _SCHEMA_VERSION.search((Path(rdb.__file__).parent / "models.py").read_text(
        encoding="utf-8"))
    return int(found.group(1)) if found else None


@lru_cache(maxsize=1)
def head_revision() -> str | None:
    """The newest revision among Optuna's migration files (the one no other revises)."""
    import optuna.storages._rdb as rdb

    folder = Path(rdb.__file__).parent / "alembic" / "versions"
    revisions: set[str] = set()
    revised: set[str] = set()
    for path in folder.glob("*.py"):
        for kind, value in _REVISION.findall(path.read_text(encoding="utf-8")):
            if value == "None":
                continue
            (revisions if kind == "revision" else revised).add(value)
    heads = revisions - revised
    return heads.pop() if len(heads) == 1 else None
