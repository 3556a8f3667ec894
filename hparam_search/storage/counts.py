"""Trials by state: what counts toward the budget, and why trials were pruned."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

ERROR_ATTR = "error"  # user attribute: the exception (or bad value) that pruned the trial
PRUNE_REASON_ATTR = "prune_reason"
TIMEOUT_PREFIX = "timeout"
PRUNED_KINDS = ("pruner", "error", "timeout")
# Trial states in the order every command and page lists them.
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


def state_counts(storage: Any, study_id: int) -> dict[str, int]:
    """Number of trials per state name, in one query where the storage is a database."""
    rows = database_rows(storage, "SELECT state, COUNT(*) FROM trials WHERE study_id = ? "
                                  "GROUP BY state", study_id)
    if rows is None:
        counts: dict[str, int] = {}
        for t in storage.get_all_trials(study_id, deepcopy=False):
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        return counts
    return {(s.name if hasattr(s, "name") else str(s)): n for s, n in rows}


def finished(counts: dict[str, int]) -> int:
    """Trials that count toward the budget once done."""
    return counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)


def claimed(counts: dict[str, int]) -> int:
    """Trials done or under way: what the budget must never exceed. WAITING (enqueued) trials
    are not counted: they were enqueued within the budget, and a worker takes one before it
    ever creates a new trial."""
    return finished(counts) + counts.get("RUNNING", 0)


# PRUNED trials of a study (?) by cause: (all, errors in train, trial_timeout).
PRUNED_KINDS_SQL = (
    "SELECT COUNT(*), "
    "SUM(CASE WHEN EXISTS (SELECT 1 FROM trial_user_attributes a WHERE a.trial_id = "
    "t.trial_id AND a.key = ?) THEN 1 ELSE 0 END), "
    "SUM(CASE WHEN EXISTS (SELECT 1 FROM trial_user_attributes a WHERE a.trial_id = "
    "t.trial_id AND a.key = ? AND a.value_json LIKE ?) THEN 1 ELSE 0 END) "
    "FROM trials t WHERE t.study_id = ? AND t.state = 'PRUNED'")


def pruned_kinds_args(study_id: int) -> tuple[Any, ...]:
    return ERROR_ATTR, PRUNE_REASON_ATTR, f'"{TIMEOUT_PREFIX}%', study_id


def pruned_kinds_of(row: tuple | None) -> dict[str, int]:
    """PRUNED_KINDS_SQL's row as counts by cause."""
    total, errors, timeouts = row or (0, 0, 0)
    errors, timeouts = errors or 0, timeouts or 0
    return {"pruner": total - errors - timeouts, "error": errors, "timeout": timeouts}


def pruned_kinds(storage: Any, study_id: int) -> dict[str, int]:
    """PRUNED trials by cause: the pruner, an error in train, or trial_timeout."""
    rows = database_rows(storage, PRUNED_KINDS_SQL, *pruned_kinds_args(study_id))
    if rows is None:
        return count_pruned_kinds(storage.get_all_trials(study_id, deepcopy=False))
    return pruned_kinds_of(rows[0] if rows else None)


def database_rows(storage: Any, sql: str, *args: Any) -> list[tuple] | None:
    """The rows of one query (``?`` placeholders) where the storage (under Optuna's cache or
    not) is a database: on the fast path's own connection, else through SQLAlchemy. None for
    other storages (journal files)."""
    backend = getattr(storage, "_backend", storage)
    if hasattr(backend, "_read_cursor"):  # the fast path: no SQLAlchemy needed
        with backend._read_cursor() as cur:
            return cur.all(sql, *args)
    engine = getattr(backend, "engine", None)
    return None if engine is None else engine_rows(engine, sql, args)


def engine_rows(engine: Any, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
    """The rows of ``sql`` (``?`` placeholders) on a SQLAlchemy engine's driver directly: no
    ORM, no per-row cost."""
    if engine.dialect.paramstyle != "qmark":
        sql = sql.replace("%", "%%").replace("?", "%s")
    with engine.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(sql, tuple(args)).fetchall()]


def pruned_kind(trial: Any) -> str:
    """Why one PRUNED trial was pruned."""
    if ERROR_ATTR in trial.user_attrs:
        return "error"
    if str(trial.user_attrs.get(PRUNE_REASON_ATTR, "")).startswith(TIMEOUT_PREFIX):
        return "timeout"
    return "pruner"


def count_pruned_kinds(trials: Iterable[Any]) -> dict[str, int]:
    out = dict.fromkeys(PRUNED_KINDS, 0)
    for trial in trials:
        if trial.state.name == "PRUNED":
            out[pruned_kind(trial)] += 1
    return out


def format_counts(counts: dict[str, int], kinds: dict[str, int] | None = None) -> str:
    """``COMPLETE 7, PRUNED 8 (pruner) + 2 (error), FAIL 1``."""
    parts = []
    for state in STATES:
        n = counts.get(state, 0)
        if not n:
            continue
        text = f"{state} {n}"
        if state == "PRUNED" and kinds:
            text = "PRUNED " + " + ".join(f"{kinds[k]} ({k})" for k in PRUNED_KINDS if kinds.get(k))
        parts.append(text)
    return ", ".join(parts) or "no trials"
