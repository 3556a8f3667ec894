"""Optuna's tables on a new database, and the schema check on an existing one, done the way
Optuna does them but without importing alembic (a quarter of a second per process start):
the newest schema revision is read from Optuna's own migration files. Whenever the quick
check cannot vouch for a database, Optuna's own check runs and says what to do."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import sqlalchemy
from optuna import version
from optuna.storages._rdb import models

_REVISION = re.compile(r'^(down_revision|revision)\s*=\s*["\']?([^"\'\s]+)["\']?', re.M)


def prepare(storage: Any) -> None:
    """Create missing tables and the version row (as Optuna's RDBStorage does), then check
    that an existing database is at the schema this Optuna writes."""
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
                conn.execute(sqlalchemy.text(
                    "CREATE TABLE IF NOT EXISTS alembic_version (version_num VARCHAR(32) NOT "
                    "NULL, CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"))
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
