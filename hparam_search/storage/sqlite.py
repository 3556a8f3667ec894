"""The per-trial reads and writes of Optuna's RDB storage, as plain SQL on SQLite.

A search with a fast objective spends most of its time in the ORM: samplers re-read the
running and new trials before every suggestion, and each trial writes its row, parameters,
attributes and result. The same statements issued directly on the SQLite connection cost a
fraction of that. The schema, the stored formats and the checks (a finished trial cannot be
changed; a parameter keeps one distribution per study) are Optuna's; anything else (templates,
other databases) goes through Optuna's own code.
"""

from __future__ import annotations

import contextlib
import datetime
import json
from collections import defaultdict
from collections.abc import Container, Iterator, Sequence
from typing import Any

from optuna import distributions
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState

_VALUE_TYPE = models.TrialValueModel.TrialValueType
_INTER_TYPE = models.TrialIntermediateValueModel.TrialIntermediateValueType
_VALUE_OF = models.TrialValueModel.stored_repr_to_value
_INTER_OF = models.TrialIntermediateValueModel.stored_repr_to_intermediate_value
_CHILDREN = {
    "params": "SELECT trial_id, param_name, param_value, distribution_json FROM trial_params "
              "WHERE trial_id IN ({ids}) ORDER BY param_id",
    "values": "SELECT trial_id, value, value_type FROM trial_values "
              "WHERE trial_id IN ({ids}) ORDER BY objective",
    "user": "SELECT trial_id, key, value_json FROM trial_user_attributes "
            "WHERE trial_id IN ({ids}) ORDER BY trial_user_attribute_id",
    "system": "SELECT trial_id, key, value_json FROM trial_system_attributes "
              "WHERE trial_id IN ({ids}) ORDER BY trial_system_attribute_id",
    "inter": "SELECT trial_id, step, intermediate_value, intermediate_value_type "
             "FROM trial_intermediate_values WHERE trial_id IN ({ids}) ORDER BY step",
}
_TRIALS = ("SELECT trial_id, number, state, datetime_start, datetime_complete FROM trials "
           "WHERE {where} ORDER BY trial_id")
_MAX_IDS = 900  # below SQLite's bound-variable limit


class FastSQLiteStorage(RDBStorage):
    """RDBStorage on SQLite whose hot paths skip the ORM. Same schema, same results."""

    def get_trial(self, trial_id: int) -> FrozenTrial:
        trials = self._read("trial_id = ?", [trial_id])
        if not trials:
            raise KeyError(f"No trial with trial_id {trial_id} exists.")
        return trials[0]

    def _get_trials(self, study_id: int, states: Container[TrialState] | None,
                    included_trial_ids: set[int], trial_id_greater_than: int
                    ) -> list[FrozenTrial]:
        where, args = ["study_id = ?"], [study_id]
        if states is not None:
            names = [s.name for s in TrialState if s in states]
            where.append(f"state IN ({','.join('?' * len(names))})")
            args += names
        if trial_id_greater_than > -1:
            included = [t for t in included_trial_ids if t <= trial_id_greater_than]
            if len(included) > _MAX_IDS:
                return super()._get_trials(study_id, states, included_trial_ids,
                                           trial_id_greater_than)
            newer = "trial_id > ?"
            if included:
                newer = f"({newer} OR trial_id IN ({','.join('?' * len(included))}))"
            where.append(newer)
            args += [trial_id_greater_than, *included]
        return self._read(" AND ".join(where), args)

    # -- writes --------------------------------------------------------------------------
    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None
                          ) -> FrozenTrial:
        if template_trial is not None:
            return super()._create_new_trial(study_id, template_trial)
        start = datetime.datetime.now()
        with self._write() as cur:
            cur.execute(
                "INSERT INTO trials (number, study_id, state, datetime_start) VALUES "
                "((SELECT COUNT(*) FROM trials WHERE study_id = ?), ?, 'RUNNING', ?)",
                (study_id, study_id, _stamp(start)))
            trial_id = cur.lastrowid
            number = cur.execute("SELECT number FROM trials WHERE trial_id = ?",
                                 (trial_id,)).fetchone()[0]
            self._stamp_new(cur, trial_id)
        return FrozenTrial(number=number, state=TrialState.RUNNING, value=None, values=None,
                           datetime_start=start, datetime_complete=None, params={},
                           distributions={}, user_attrs={}, system_attrs=dict(self.new_trial_attrs),
                           intermediate_values={}, trial_id=trial_id)

    # System attributes written in the same transaction that creates (or takes) a trial: a
    # process killed right after can never leave a RUNNING trial that says nothing of its owner.
    new_trial_attrs: dict[str, Any] = {}

    def _stamp_new(self, cur: Any, trial_id: int) -> None:
        for key, value in self.new_trial_attrs.items():
            cur.execute("INSERT INTO trial_system_attributes (trial_id, key, value_json) "
                        "VALUES (?, ?, ?) ON CONFLICT (trial_id, key) DO UPDATE SET "
                        "value_json = excluded.value_json", (trial_id, key, json.dumps(value)))

    def _set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                         distribution: distributions.BaseDistribution,
                         previous_distribution: distributions.BaseDistribution | None) -> None:
        dist_json = distributions.distribution_to_json(distribution)
        with self._write() as cur:
            study_id = self._updatable(cur, trial_id)
            if previous_distribution is not None:
                distributions.check_distribution_compatibility(previous_distribution,
                                                               distribution)
            elif (study_id, param_name, dist_json) not in self._checked_distributions:
                previous = cur.execute(
                    "SELECT p.distribution_json FROM trial_params p JOIN trials t "
                    "ON p.trial_id = t.trial_id WHERE t.study_id = ? AND p.param_name = ? "
                    "LIMIT 1", (study_id, param_name)).fetchone()
                if previous is not None:
                    distributions.check_distribution_compatibility(
                        distributions.json_to_distribution(previous[0]), distribution)
                self._checked_distributions.add((study_id, param_name, dist_json))
            cur.execute("INSERT INTO trial_params (trial_id, param_name, param_value, "
                        "distribution_json) VALUES (?, ?, ?, ?)",
                        (trial_id, param_name, param_value_internal, dist_json))

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        now = _stamp(datetime.datetime.now())
        with self._write() as cur:
            if state == TrialState.RUNNING:
                # Taking a WAITING (enqueued) trial: one atomic UPDATE, so two workers can never
                # both get it.
                cur.execute("UPDATE trials SET state = 'RUNNING', datetime_start = ? "
                            "WHERE trial_id = ? AND state = 'WAITING'", (now, trial_id))
                if cur.rowcount != 1:
                    return False
                self._stamp_new(cur, trial_id)
                return True
            self._updatable(cur, trial_id)
            for objective, value in enumerate(values or ()):
                stored, kind = models.TrialValueModel.value_to_stored_repr(value)
                cur.execute(
                    "INSERT INTO trial_values (trial_id, objective, value, value_type) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (trial_id, objective) DO UPDATE SET "
                    "value = excluded.value, value_type = excluded.value_type",
                    (trial_id, objective, stored, kind.name))
            complete = now if state.is_finished() else None
            cur.execute("UPDATE trials SET state = ?, datetime_complete = ? WHERE trial_id = ?",
                        (state.name, complete, trial_id))
        return True

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._set_attr("trial_system_attributes", trial_id, key, value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._set_attr("trial_user_attributes", trial_id, key, value)

    def _set_attr(self, table: str, trial_id: int, key: str, value: Any) -> None:
        with self._write() as cur:
            self._updatable(cur, trial_id)
            cur.execute(f"INSERT INTO {table} (trial_id, key, value_json) VALUES (?, ?, ?) "
                        "ON CONFLICT (trial_id, key) DO UPDATE SET value_json = "
                        "excluded.value_json", (trial_id, key, json.dumps(value)))

    def _updatable(self, cur: Any, trial_id: int) -> int:
        """Raise unless the trial exists and is not finished; return its study id."""
        row = cur.execute("SELECT state, study_id FROM trials WHERE trial_id = ?",
                          (trial_id,)).fetchone()
        if row is None:
            raise KeyError(f"No trial with trial_id {trial_id} exists.")
        self.check_trial_is_updatable(trial_id, TrialState[row[0]])
        return row[1]

    @property
    def _checked_distributions(self) -> set[tuple[int, str, str]]:
        # Per process: a (study, name, distribution) already checked against the study.
        if not hasattr(self, "_checked"):
            self._checked: set[tuple[int, str, str]] = set()
        return self._checked

    @contextlib.contextmanager
    def _write(self) -> Iterator[Any]:
        """One write transaction holding SQLite's write lock from its first statement, so that
        a check and the write that depends on it cannot be separated by another process."""
        with self.engine.connect() as conn:
            raw = conn.connection.driver_connection
            cur = raw.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                raw.rollback()
                raise
            raw.commit()
            cur.close()

    # -- reads ---------------------------------------------------------------------------
    def _read(self, where: str, args: list[Any]) -> list[FrozenTrial]:
        with self.engine.connect() as conn:
            cur = conn.connection.driver_connection.cursor()
            rows = cur.execute(_TRIALS.format(where=where), args).fetchall()
            if not rows:
                return []
            ids = [r[0] for r in rows]
            kids: dict[str, dict[int, list[tuple]]] = {}
            for name, sql in _CHILDREN.items():
                grouped: dict[int, list[tuple]] = defaultdict(list)
                for start in range(0, len(ids), _MAX_IDS):
                    chunk = ids[start:start + _MAX_IDS]
                    for row in cur.execute(sql.format(ids=",".join("?" * len(chunk))), chunk):
                        grouped[row[0]].append(row)
                kids[name] = grouped
            cur.close()
        return [_frozen(row, kids) for row in rows]


def _frozen(row: tuple, kids: dict[str, dict[int, list[tuple]]]) -> FrozenTrial:
    tid, number, state, start, complete = row
    params = kids["params"].get(tid, [])
    dists = {p[1]: distributions.json_to_distribution(p[3]) for p in params}
    values = [_VALUE_OF(v[1], _VALUE_TYPE[v[2]]) for v in kids["values"].get(tid, [])]
    return FrozenTrial(
        number=number, state=TrialState[state], value=None, values=values or None,
        datetime_start=_when(start), datetime_complete=_when(complete),
        params={p[1]: dists[p[1]].to_external_repr(p[2]) for p in params},
        distributions=dists,
        user_attrs={a[1]: json.loads(a[2]) for a in kids["user"].get(tid, [])},
        system_attrs={a[1]: json.loads(a[2]) for a in kids["system"].get(tid, [])},
        intermediate_values={v[1]: _INTER_OF(v[2], _INTER_TYPE[v[3]])
                             for v in kids["inter"].get(tid, [])},
        trial_id=tid,
    )


def _stamp(when: datetime.datetime) -> str:
    """The text SQLAlchemy stores for a DateTime in SQLite."""
    return when.strftime("%Y-%m-%d %H:%M:%S.%f")


def _when(text: str | None) -> datetime.datetime | None:
    return datetime.datetime.fromisoformat(text) if text else None
