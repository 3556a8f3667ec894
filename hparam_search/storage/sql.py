"""The SQL both fast-path dialects share: a cursor that takes ``?`` placeholders whatever the
driver's style, the upserts of a trial's values and attributes, and how stored enums and
distributions read back."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from optuna import distributions

MAX_IDS = 900  # ids per IN (...) list: below SQLite's bound-variable limit


def upsert(table: str, keys: str, columns: str, update: str) -> str:
    """An INSERT that updates the row already there (SQLite and PostgreSQL share the form)."""
    marks = ", ".join("?" * (len(keys.split(", ")) + len(columns.split(", "))))
    sets = ", ".join(f"{c} = excluded.{c}" for c in update.split(", "))
    return (f"INSERT INTO {table} ({keys}, {columns}) VALUES ({marks}) "
            f"ON CONFLICT ({keys}) DO UPDATE SET {sets}")


SET_ATTR = {t: upsert(t, "trial_id, key", "value_json", "value_json")
             for t in ("trial_user_attributes", "trial_system_attributes")}


def set_attrs(table: str, count: int) -> str:
    """SET_ATTR[table] for ``count`` attributes in one statement (one round trip on a server;
    a trial's claim writes four or five). Their keys are distinct, as PostgreSQL requires."""
    head, tail = SET_ATTR[table].split(" ON CONFLICT ")
    return f"{head}{', (?, ?, ?)' * (count - 1)} ON CONFLICT {tail}"


SET_STUDY_ATTR = {t: upsert(t, "study_id, key", "value_json", "value_json")
                  for t in ("study_user_attributes", "study_system_attributes")}
SET_VALUE = upsert("trial_values", "trial_id, objective", "value, value_type",
                     "value, value_type")
BEAT = ("INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES (?, CURRENT_TIMESTAMP) "
         "ON CONFLICT (trial_id) DO UPDATE SET heartbeat = CURRENT_TIMESTAMP")
SET_INTER = upsert("trial_intermediate_values", "trial_id, step",
                     "intermediate_value, intermediate_value_type",
                     "intermediate_value, intermediate_value_type")


class Cursor:
    """A driver cursor that takes ``?`` placeholders whatever the driver's style.

    With ``reopen``, a transaction whose first statement finds the connection lost (the
    server restarted, or ended an idle session) runs on a new connection instead: nothing
    has happened in it yet, so nothing is done twice. ``reopen(exc)`` returns a cursor on a
    new connection, or None when ``exc`` is not a lost connection."""

    def __init__(self, cur: Any, translate: Any, returning: bool = True,
                 reopen: Callable[[BaseException], Any] | None = None) -> None:
        self._cur, self._translate, self._returning = cur, translate, returning
        self._reopen = reopen
        self._started = False

    @property
    def connection(self) -> Any:
        """The driver connection the transaction runs on (a new one after a reopen)."""
        return self._cur.connection

    def close(self) -> None:
        self._cur.close()

    def _execute(self, sql: str, args: tuple) -> None:
        try:
            self._cur.execute(self._translate(sql), args)
        except Exception as exc:
            fresh = None if self._started or self._reopen is None else self._reopen(exc)
            if fresh is None:
                raise
            self._cur = fresh
            self._cur.execute(self._translate(sql), args)
        self._started = True

    def run(self, sql: str, *args: Any) -> int:
        self._execute(sql, args)
        return self._cur.rowcount

    def insert(self, sql: str, *args: Any, key: str = "trial_id") -> int:
        """Run an INSERT (into ``trials`` unless ``key`` names another table's id column);
        the new row's id."""
        if not self._returning:  # SQLite before 3.35
            self._execute(sql, args)
            return self._cur.lastrowid
        self._execute(f"{sql} RETURNING {key}", args)
        return self._cur.fetchone()[0]

    def one(self, sql: str, *args: Any) -> tuple | None:
        self._execute(sql, args)
        return self._cur.fetchone()

    def all(self, sql: str, *args: Any) -> list[tuple]:
        self._execute(sql, args)
        return self._cur.fetchall()


_DISTRIBUTIONS: dict[str, distributions.BaseDistribution] = {}


def distribution_of(text: str) -> distributions.BaseDistribution:
    """Distributions parsed once per process: a study has a handful of distinct ones."""
    found = _DISTRIBUTIONS.get(text)
    if found is None:
        found = _DISTRIBUTIONS[text] = distributions.json_to_distribution(text)
    return found


def enum_name(value: Any) -> str:
    """An enum column as its name (SQLite gives text; other drivers may give an enum)."""
    return value.name if hasattr(value, "name") else str(value)


# How Optuna's tables hold a value and an intermediate value: infinities (and NaN, for
# intermediate values) as a type with no number; what optuna.storages._rdb.models does, without
# importing SQLAlchemy's ORM for it.
def stored_value(value: float) -> tuple[float | None, str]:
    """(value, value_type) of a trial value."""
    if value == math.inf:
        return None, "INF_POS"
    if value == -math.inf:
        return None, "INF_NEG"
    return value, "FINITE"


def stored_intermediate(value: float) -> tuple[float | None, str]:
    """(intermediate_value, intermediate_value_type) of an intermediate value."""
    if math.isnan(value):
        return None, "NAN"
    return stored_value(value)


def value_of(stored: float | None, kind: Any) -> float:
    """A value (or intermediate value) from its stored form."""
    name = enum_name(kind)
    if name == "FINITE":
        assert stored is not None
        return stored
    return {"INF_POS": math.inf, "INF_NEG": -math.inf, "NAN": math.nan}[name]
