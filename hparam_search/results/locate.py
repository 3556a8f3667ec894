"""Find a study from what a user types: a .db file, a study name, a storage URL, a journal."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..config import display_path
from ..errors import HparamSearchError
from ..storage import JOURNAL_PREFIX, mask_secrets, sqlite_url

DEFAULT_DIR = Path("optuna_studies")
_SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass(frozen=True)
class StudyRef:
    """Where a study lives: storage URL and study name."""

    url: str
    name: str


def resolve(arg: str, folder: Path = DEFAULT_DIR) -> StudyRef:
    """A ``.db`` or journal file (also looked up in ``folder``), a study name found as
    ``<folder>/<name>.db``, or a storage URL (``sqlite:///...``, ``postgresql://...``,
    ``journal:PATH``), optionally followed by ``#study``."""
    url, _, name = arg.rpartition("#") if "#" in arg and (
        "://" in arg or arg.startswith(JOURNAL_PREFIX)) else (arg, "", "")
    if "://" not in url and not url.startswith(JOURNAL_PREFIX):
        url = storage_url_of(_find_file(url, folder))
    names = study_names(url)
    shown = mask_secrets(url)
    if name:
        if name not in names:
            raise HparamSearchError(f"no study '{name}' in {shown}",
                                    fix=f"It holds: {', '.join(names) or 'no studies'}.")
        return StudyRef(url, name)
    if not names:
        raise HparamSearchError(f"{shown} holds no study yet")
    if len(names) > 1:
        raise HparamSearchError(f"{shown} holds several studies",
                                fix=f"Pick one with {shown}#NAME: {', '.join(names)}.")
    return StudyRef(url, names[0])


def _find_file(arg: str, folder: Path) -> Path:
    path = Path(arg).expanduser()
    for candidate in (path, folder / path, folder / f"{arg}.db"):
        if candidate.is_file():
            return candidate
    if path.is_dir():
        raise HparamSearchError(f"{arg} is a folder, not a study",
                                fix=f"List its studies with: hparam-search ls {arg}")
    found = sorted(p.stem for p in folder.glob("*.db")) if folder.is_dir() else []
    hint = (f"Studies in {display_path(folder.resolve())}/: {', '.join(found)}." if found else
            f"No .db files in {display_path(folder.resolve())}/; pass a .db path or a "
            "storage URL.")
    raise HparamSearchError(f"no study '{arg}'", fix=hint)


def storage_url_of(path: Path) -> str:
    """The storage URL of a study file: SQLite or Optuna's journal; anything else is refused."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as exc:
        raise HparamSearchError(f"cannot read {path}: {exc.strerror}") from exc
    if head.startswith(_SQLITE_MAGIC):
        url = sqlite_url(path.resolve())
        if _has_studies_table(path):
            return url
    elif _looks_like_journal(head):
        return f"{JOURNAL_PREFIX}{path.resolve()}"
    raise HparamSearchError(f"not an Optuna study database: {path}",
                            fix="Pass the .db file a search wrote (in save_db_directory), "
                                "a journal file, or a storage URL.")


def _has_studies_table(path: Path) -> bool:
    import contextlib
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                                "name = 'studies'").fetchone() is not None
    except sqlite3.Error:
        return False


def _looks_like_journal(head: bytes) -> bool:
    first = head.split(b"\n", 1)[0]
    try:
        return "op_code" in json.loads(first)
    except (ValueError, TypeError):
        return False


def study_names(url: str) -> list[str]:
    """The names of the studies a storage holds, oldest first."""
    if url.startswith(JOURNAL_PREFIX):
        import optuna

        from ..storage import close_storage, open_storage

        storage = open_storage(url, create=False)
        try:
            return optuna.get_all_study_names(storage)
        finally:
            close_storage(storage)
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:
        raise HparamSearchError(f"cannot open {mask_secrets(url)}: {exc}") from exc
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.exec_driver_sql(
                "SELECT study_name FROM studies ORDER BY study_id").fetchall()]
    except sqlalchemy.exc.SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        raise HparamSearchError(f"cannot read {mask_secrets(url)}: "
                                f"{str(cause).strip().splitlines()[0]}") from exc
    finally:
        engine.dispose()


def study_folder(arg: str | None) -> Path:
    """The folder ``ls`` looks in: the one given (or its ``optuna_studies/``, for a project
    folder), else ./optuna_studies."""
    folder = Path(arg) if arg else DEFAULT_DIR
    if not folder.is_dir():
        raise HparamSearchError(f"no folder {folder}",
                                fix="Pass the save_db_directory path, or a project folder "
                                    "that holds optuna_studies/.")
    inner = folder / DEFAULT_DIR.name
    if arg and inner.is_dir() and not any(folder.glob("*.db")):
        return inner
    return folder
