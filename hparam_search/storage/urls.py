"""Storage URLs: parse, resolve and mask them. The only place that knows their shapes."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import HparamSearchError

JOURNAL_PREFIX = "journal:"
SQLITE_PREFIX = "sqlite:///"
_SECRET = re.compile(r"(\b[a-z][\w+.-]*://[^:/@\s]*:)([^@\s]+)(@)", re.IGNORECASE)


def sqlite_url(db_path: Path) -> str:
    return f"{SQLITE_PREFIX}{db_path}"


def sqlite_path(url: str) -> Path | None:
    return Path(url[len(SQLITE_PREFIX):]) if url.startswith(SQLITE_PREFIX) else None


def journal_path(url: str) -> Path | None:
    return Path(url[len(JOURNAL_PREFIX):]) if url.startswith(JOURNAL_PREFIX) else None


def is_database(url: str) -> bool:
    """A database server (PostgreSQL, MySQL): shared by hosts, heartbeats on."""
    return sqlite_path(url) is None and journal_path(url) is None


def mask_secrets(text: str) -> str:
    """Hide the password of every URL in ``text``: credentials are never printed or stored."""
    return _SECRET.sub(r"\1***\3", text)


def describe(url: str) -> str:
    """The storage as a user reads it: a file path, or the URL without its password."""
    path = sqlite_path(url) or journal_path(url)
    return str(path) if path else mask_secrets(url)


def dashboard_command(url: str) -> str:
    path = journal_path(url)
    return f"optuna-dashboard {path if path else mask_secrets(url)}"


def resolve_storage(value: str, base: Path) -> str:
    """The storage URL for a ``storage:`` setting: a SQLAlchemy URL (a bare ``postgresql://``
    uses the driver the ``postgres`` extra installs) or ``journal:PATH`` (relative to ``base``)."""
    if value.startswith(JOURNAL_PREFIX):
        path = Path(value[len(JOURNAL_PREFIX):]).expanduser()
        return f"{JOURNAL_PREFIX}{(path if path.is_absolute() else base / path).resolve()}"
    if value.startswith(SQLITE_PREFIX) and not value.startswith("sqlite:////"):
        return sqlite_url((base / value[len(SQLITE_PREFIX):]).resolve())
    for plain in ("postgresql://", "postgres://"):
        if value.startswith(plain):
            return "postgresql+" + _postgres_driver() + "://" + value[len(plain):]
    return value


def _postgres_driver() -> str:
    import importlib.util

    for module, dialect in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return dialect
    raise HparamSearchError(
        "a postgresql:// storage needs a PostgreSQL driver, and none is installed",
        key="storage", fix="pip install 'hparam-search[postgres]'")
