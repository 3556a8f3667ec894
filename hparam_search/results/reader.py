"""Read a study for the toolbox with a few SQL queries: counts, the best trials, the top of
the table or every trial as light records, without building Optuna's FrozenTrials one by one.
Journal files, which have no SQL, are read through Optuna."""

from __future__ import annotations

import datetime
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ..errors import HparamSearchError
from ..storage import (RETRY_HISTORY_ATTR, RUNS_ATTR, count_pruned_kinds, journal_path,
                       mask_secrets)
from ..storage.counts import (PRUNED_KINDS_SQL, database_rows, engine_rows, pruned_kinds_args,
                              pruned_kinds_of)

_CHUNK = 900  # ids per IN (...) list: below SQLite's bound-variable limit


@dataclass
class TrialRecord:
    """What the toolbox shows of one trial (a FrozenTrial without the cost of building one)."""

    trial_id: int
    number: int
    state: str
    start: datetime.datetime | None
    complete: datetime.datetime | None
    values: list[float] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    user_attrs: dict[str, Any] = field(default_factory=dict)
    system_attrs: dict[str, Any] = field(default_factory=dict)
    intermediate_values: dict[int, float] = field(default_factory=dict)

    @property
    def duration_s(self) -> float | None:
        if self.start and self.complete:
            return (self.complete - self.start).total_seconds()
        return None


class StudyReader:
    """One study, opened for reading. Use as a context manager (connections are closed)."""

    def __init__(self, url: str, name: str, storage: Any = None) -> None:
        """``storage``: this package's open storage of ``url``, to read on its connection
        (the launcher's summary) instead of opening another."""
        self.url, self.name = url, name
        self._engine: Any = None
        self._journal: Any = None
        self._storage = storage if hasattr(storage, "_read_cursor") else None
        if self._storage is not None:
            row = self._one("SELECT study_id FROM studies WHERE study_name = ?", [name])
            if row is None:
                raise HparamSearchError(f"no study '{name}' in {mask_secrets(url)}")
            self.study_id = row[0]
        elif journal_path(url) is not None:
            import optuna

            from ..storage import open_storage

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            self._journal = optuna.load_study(study_name=name, storage=open_storage(url,
                                                                                  create=False))
        else:
            import sqlalchemy

            try:
                self._engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
                row = self._one("SELECT study_id FROM studies WHERE study_name = ?", [name])
            except sqlalchemy.exc.SQLAlchemyError as exc:
                self.close()
                cause = getattr(exc, "orig", None) or exc
                raise HparamSearchError(f"cannot read {mask_secrets(url)}: "
                                        f"{str(cause).strip().splitlines()[0]}") from exc
            if row is None:
                self.close()
                raise HparamSearchError(f"no study '{name}' in {mask_secrets(url)}")
            self.study_id = row[0]
        self.directions = self._directions()

    def __enter__(self) -> StudyReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
        if self._journal is not None:
            from ..storage import close_storage

            close_storage(self._journal._storage)

    # -- SQL plumbing ----------------------------------------------------------------------
    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        """Run ``sql`` (``?`` placeholders) on the driver directly: no ORM, no per-row cost."""
        if self._storage is not None:
            return database_rows(self._storage, sql, *args) or []
        return engine_rows(self._engine, sql, args)

    def _one(self, sql: str, args: Sequence[Any] = ()) -> tuple | None:
        rows = self._rows(sql, args)
        return rows[0] if rows else None

    # -- study ---------------------------------------------------------------------------
    def _directions(self) -> list[str]:
        if self._journal is not None:
            return [d.name.lower() for d in self._journal.directions]
        rows = self._rows("SELECT direction FROM study_directions WHERE study_id = ? "
                          "ORDER BY objective", [self.study_id])
        return [_name(d).lower() for (d,) in rows]

    @property
    def metric_names(self) -> list[str] | None:
        names = self.study_system_attrs().get("study:metric_names")
        return list(names) if names else None

    def value_columns(self) -> list[str]:
        return self.metric_names or (["value"] if len(self.directions) == 1 else
                                     [f"value_{i}" for i in range(len(self.directions))])

    def study_system_attrs(self) -> dict[str, Any]:
        if self._journal is not None:
            return self._journal.system_attrs
        rows = self._rows("SELECT key, value_json FROM study_system_attributes WHERE "
                          "study_id = ?", [self.study_id])
        return {k: json.loads(v) for k, v in rows}

    def study_user_attrs(self) -> dict[str, Any]:
        if self._journal is not None:
            return self._journal.user_attrs
        rows = self._rows("SELECT key, value_json FROM study_user_attributes WHERE "
                          "study_id = ?", [self.study_id])
        return {k: json.loads(v) for k, v in rows}

    def runs(self) -> list[dict[str, Any]]:
        runs = self.study_system_attrs().get(RUNS_ATTR, [])
        return [{**run, "id": run.get("id", i)} for i, run in enumerate(runs)]

    def counts(self) -> dict[str, int]:
        if self._journal is not None:
            out: dict[str, int] = {}
            for t in self._journal.get_trials(deepcopy=False):
                out[t.state.name] = out.get(t.state.name, 0) + 1
            return out
        rows = self._rows("SELECT state, COUNT(*) FROM trials WHERE study_id = ? GROUP BY "
                          "state", [self.study_id])
        return {_name(s): n for s, n in rows}

    def pruned_kinds(self) -> dict[str, int]:
        if self._journal is not None:
            return count_pruned_kinds(self._journal.get_trials(deepcopy=False))
        return pruned_kinds_of(self._one(PRUNED_KINDS_SQL, pruned_kinds_args(self.study_id)))

    def times(self) -> tuple[datetime.datetime | None, datetime.datetime | None]:
        """First trial start and last activity (a finish, or a start still running)."""
        if self._journal is not None:
            trials = self._journal.get_trials(deepcopy=False)
            starts = [t.datetime_start for t in trials if t.datetime_start]
            ends = [t.datetime_complete or t.datetime_start for t in trials
                    if t.datetime_complete or t.datetime_start]
            return (min(starts) if starts else None, max(ends) if ends else None)
        row = self._one("SELECT MIN(datetime_start), MAX(COALESCE(datetime_complete, "
                        "datetime_start)) FROM trials WHERE study_id = ?", [self.study_id])
        return (_when(row[0]), _when(row[1])) if row else (None, None)

    # -- trials --------------------------------------------------------------------------
    def best(self) -> list[TrialRecord]:
        """The best trial (one objective) or the Pareto front (several)."""
        if len(self.directions) == 1:
            return self.ranked(1)
        ranked = self._complete_values()
        if not ranked:
            return []
        from optuna.study import StudyDirection
        from optuna.study._multi_objective import _get_pareto_front_trials_by_trials
        from optuna.trial import TrialState

        candidates = [_Candidate(tid, values, TrialState.COMPLETE) for tid, values in ranked]
        front = _get_pareto_front_trials_by_trials(
            candidates, [StudyDirection[d.upper()] for d in self.directions])
        return self.records(ids=[c.trial_id for c in front])

    def ranked(self, limit: int | None = None) -> list[TrialRecord]:
        """COMPLETE trials, best first by the first objective (the database sorts them)."""
        maximize = self.directions[0] == "maximize"
        if self._journal is not None:
            ranked = self._complete_values()
            ranked.sort(key=lambda tv: -tv[1][0] if maximize else tv[1][0])
            ids = [tid for tid, _ in ranked[:limit]]
        else:
            order = "DESC" if maximize else "ASC"
            rows = self._rows(
                "SELECT t.trial_id FROM trials t JOIN trial_values v ON v.trial_id = t.trial_id "
                "WHERE t.study_id = ? AND t.state = 'COMPLETE' AND v.objective = 0 ORDER BY "
                f"CASE v.value_type WHEN 'INF_NEG' THEN -1 WHEN 'FINITE' THEN 0 ELSE 1 END "
                f"{order}, v.value {order}, t.trial_id"
                + (f" LIMIT {int(limit)}" if limit is not None else ""), [self.study_id])
            ids = [r[0] for r in rows]
        by_id = {r.trial_id: r for r in self.records(ids=ids)}
        return [by_id[i] for i in ids]

    def _complete_values(self) -> list[tuple[int, list[float]]]:
        if self._journal is not None:
            return [(t._trial_id, list(t.values)) for t in self._journal.get_trials(
                deepcopy=False) if t.state.name == "COMPLETE" and t.values]
        rows = self._rows(
            "SELECT v.trial_id, v.objective, v.value, v.value_type FROM trial_values v JOIN "
            "trials t ON t.trial_id = v.trial_id WHERE t.study_id = ? AND t.state = 'COMPLETE'",
            [self.study_id])
        values: dict[int, list[float]] = defaultdict(lambda: [0.0] * len(self.directions))
        for tid, objective, value, kind in rows:
            values[tid][objective] = _value(value, kind)
        return list(values.items())

    def records(self, *, ids: Iterable[int] | None = None, states: Sequence[str] | None = None,
                numbers: Iterable[int] | None = None, intermediate: bool = False
                ) -> list[TrialRecord]:
        """Trials as records, ordered by number: all of them, or those with these ids,
        states or numbers."""
        if self._journal is not None:
            return self._journal_records(ids, states, numbers)
        where, args = ["study_id = ?"], [self.study_id]
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            args += list(states)
        if numbers is not None:
            numbers = list(numbers)
            where.append(f"number IN ({','.join('?' * len(numbers))})" if numbers else "0 = 1")
            args += numbers
        if ids is not None:
            ids = list(ids)
            where.append(f"trial_id IN ({','.join('?' * len(ids))})" if ids else "0 = 1")
            args += ids
        head = self._rows("SELECT trial_id, number, state, datetime_start, datetime_complete "
                          "FROM trials WHERE " + " AND ".join(where) + " ORDER BY number", args)
        records = {r[0]: TrialRecord(r[0], r[1], _name(r[2]), _when(r[3]), _when(r[4]))
                   for r in head}
        if not records:
            return []
        self._fill(records, everything=ids is None and numbers is None and not states,
                   intermediate=intermediate)
        return list(records.values())

    def _fill(self, records: dict[int, TrialRecord], everything: bool, intermediate: bool
              ) -> None:
        """Read the trials' values, params and attributes: by study when every trial is
        wanted (one scan per table), else by id, in chunks."""
        tables = [
            ("SELECT trial_id, objective, value, value_type FROM trial_values", _add_value),
            ("SELECT trial_id, param_name, param_value, distribution_json FROM trial_params",
             _add_param),
            ("SELECT trial_id, key, value_json FROM trial_user_attributes", _add_user_attr),
            ("SELECT trial_id, key, value_json FROM trial_system_attributes", _add_system_attr),
        ]
        if intermediate:
            tables.append(("SELECT trial_id, step, intermediate_value, intermediate_value_type "
                           "FROM trial_intermediate_values", _add_intermediate))
        for sql, add in tables:
            if everything:
                rows = self._rows(sql + " WHERE trial_id IN (SELECT trial_id FROM trials WHERE "
                                  "study_id = ?)", [self.study_id])
            else:
                ids = list(records)
                rows = []
                for start in range(0, len(ids), _CHUNK):
                    chunk = ids[start:start + _CHUNK]
                    rows += self._rows(f"{sql} WHERE trial_id IN ({','.join('?' * len(chunk))})",
                                       chunk)
            for row in rows:
                record = records.get(row[0])
                if record is not None:
                    add(record, row)

    def _journal_records(self, ids: Iterable[int] | None, states: Sequence[str] | None,
                         numbers: Iterable[int] | None) -> list[TrialRecord]:
        wanted_ids = set(ids) if ids is not None else None
        wanted_numbers = set(numbers) if numbers is not None else None
        out = []
        for t in self._journal.get_trials(deepcopy=False):
            if (wanted_ids is not None and t._trial_id not in wanted_ids) or \
                    (states and t.state.name not in states) or \
                    (wanted_numbers is not None and t.number not in wanted_numbers):
                continue
            out.append(TrialRecord(t._trial_id, t.number, t.state.name, t.datetime_start,
                                   t.datetime_complete, list(t.values) if t.values else None,
                                   dict(t.params), dict(t.user_attrs), dict(t.system_attrs),
                                   dict(t.intermediate_values)))
        return out

    def retry_chains(self) -> list[list[int]]:
        """Each retried configuration's attempts, in order (``[[0, 3], [5, 7, 9]]``)."""
        histories = []
        if self._journal is not None:
            for t in self._journal.get_trials(deepcopy=False):
                if t.system_attrs.get(RETRY_HISTORY_ATTR):
                    histories.append((t.number, t.system_attrs[RETRY_HISTORY_ATTR]))
        else:
            rows = self._rows(
                "SELECT t.number, a.value_json FROM trial_system_attributes a JOIN trials t ON "
                "a.trial_id = t.trial_id WHERE t.study_id = ? AND a.key = ?",
                [self.study_id, RETRY_HISTORY_ATTR])
            histories = [(number, json.loads(text)) for number, text in rows]
        longest: dict[int, list[int]] = {}
        for number, history in histories:
            chain = [*history, number]
            if len(chain) > len(longest.get(chain[0], [])):
                longest[chain[0]] = chain
        return sorted(longest.values())

    def trial(self, number: int) -> TrialRecord:
        """One trial with everything, intermediate values included."""
        records = self.records(numbers=[number], intermediate=True)
        if not records:
            raise HparamSearchError(f"study '{self.name}' has no trial {number}",
                                    fix=f"Trial numbers run from 0 to "
                                        f"{sum(self.counts().values()) - 1}.")
        return records[0]


@dataclass(frozen=True)
class _Candidate:
    trial_id: int
    values: list[float]
    state: Any


def _add_value(record: TrialRecord, row: tuple) -> None:
    _, objective, value, kind = row
    values = record.values = record.values or []
    values.extend([float("nan")] * (objective + 1 - len(values)))
    values[objective] = _value(value, kind)


def _add_param(record: TrialRecord, row: tuple) -> None:
    _, name, internal, dist_json = row
    record.params[name] = _distribution(dist_json).to_external_repr(internal)


def _add_user_attr(record: TrialRecord, row: tuple) -> None:
    record.user_attrs[row[1]] = json.loads(row[2])


def _add_system_attr(record: TrialRecord, row: tuple) -> None:
    record.system_attrs[row[1]] = json.loads(row[2])


def _add_intermediate(record: TrialRecord, row: tuple) -> None:
    _, step, value, kind = row
    record.intermediate_values[step] = _value(value, kind)


@lru_cache(maxsize=4096)
def _distribution(text: str) -> Any:
    from optuna.distributions import json_to_distribution

    return json_to_distribution(text)


def _value(value: float | None, kind: Any) -> float:
    kind = _name(kind)
    if kind == "INF_POS":
        return float("inf")
    if kind == "INF_NEG":
        return float("-inf")
    if kind == "NAN" or value is None:
        return float("nan")
    return float(value)


def _name(value: Any) -> str:
    """An enum column as its name (SQLite gives text, other drivers may give an enum)."""
    return value.name if hasattr(value, "name") else str(value)


def _when(value: Any) -> datetime.datetime | None:
    if value is None or isinstance(value, datetime.datetime):
        return value
    return datetime.datetime.fromisoformat(str(value))
