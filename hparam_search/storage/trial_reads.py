"""Trials read back as Optuna's ``FrozenTrial``: the trial rows in one query, and everything
hanging off them (parameters, values, attributes, intermediate values) in one more per 180
trials. Mixed into the fast storage."""

from __future__ import annotations

import copy
import json
from collections import defaultdict
from collections.abc import Container, Sequence
from typing import Any

from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from .sql import MAX_IDS, Cursor, distribution_of, enum_name, value_of

# Everything hanging off some trials (a round trip counts on a database server): (kind,
# trial_id, order, name, number, text) rows of params (0), values (1), user (2) and system (3)
# attributes and intermediate values (4).
_CHILD_ROWS = [
    "SELECT 0, trial_id, param_id, param_name, param_value, distribution_json{more} "
    "FROM trial_params",
    "SELECT 1, trial_id, objective, CAST(value_type AS VARCHAR(16)), value, NULL{more} "
    "FROM trial_values",
    "SELECT 2, trial_id, trial_user_attribute_id, key, NULL, value_json{more} "
    "FROM trial_user_attributes",
    "SELECT 3, trial_id, trial_system_attribute_id, key, NULL, value_json{more} "
    "FROM trial_system_attributes",
    "SELECT 4, trial_id, step, CAST(intermediate_value_type AS VARCHAR(16)), "
    "intermediate_value, NULL{more} FROM trial_intermediate_values",
]
# ... for a list of trial ids ({ids}: placeholders, repeated five times):
_CHILDREN = " UNION ALL ".join(
    row.format(more="") + " WHERE trial_id IN ({ids})" for row in _CHILD_ROWS) + " ORDER BY 1, 2, 3"
_KIDS = ("params", "values", "user", "system", "inter")
# ... and with the trials that match a condition, in one query: one round trip for a trial read
# back while it runs (Optuna's cache does that several times per trial). Kind 5 rows are the
# trials themselves: (5, trial_id, number, state, _, _, start, complete).
_WHOLE = " UNION ALL ".join(
    ["SELECT 5, trial_id, number, CAST(state AS VARCHAR(16)), NULL, NULL, datetime_start, "
     "datetime_complete FROM trials WHERE {where}"]
    + [row.format(more=", NULL, NULL") + " WHERE trial_id IN (SELECT trial_id FROM trials "
       "WHERE {where})" for row in _CHILD_ROWS]) + " ORDER BY 1, 2, 3"
_TRIALS = ("SELECT trial_id, number, state, datetime_start, datetime_complete FROM trials "
           "WHERE {where} ORDER BY trial_id")
_KID_IDS = MAX_IDS // 5  # the children query repeats its id list five times


class TrialReads:
    """Optuna's trial reads in plain SQL (the fast storage supplies ``_read_cursor``,
    ``_when`` and ``_study_exists``)."""

    def get_trial(self, trial_id: int) -> FrozenTrial:
        claimed = self._claimed_new
        if claimed is not None and claimed._trial_id == trial_id:
            # The new trial this process has just claimed, read again by optuna.Trial(): the
            # claim's copy of what it wrote spares a round trip (once; later reads see others'
            # writes).
            self._claimed_new = None
            return copy.deepcopy(claimed)
        with self._read_cursor() as cur:
            trials = self._read_whole(cur, "trial_id = ?", [trial_id])
        if not trials:
            raise KeyError(f"No trial with trial_id {trial_id} exists.")
        return trials[0]

    def get_trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        return self.get_trial(trial_id).user_attrs

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        return self.get_trial(trial_id).system_attrs

    def get_trial_param(self, trial_id: int, param_name: str) -> float:
        trial = self.get_trial(trial_id)
        return trial.distributions[param_name].to_internal_repr(trial.params[param_name])

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        with self._read_cursor() as cur:
            row = cur.one("SELECT trial_id FROM trials WHERE study_id = ? AND number = ?",
                          study_id, trial_number)
        if row is None:
            raise KeyError(f"No trial with trial number {trial_number} exists in study with "
                           f"study_id {study_id}.")
        return row[0]

    def get_n_trials(self, study_id: int, state: tuple[TrialState, ...] | TrialState | None
                     = None) -> int:
        with self._read_cursor() as cur:
            self._study_exists(cur, study_id)
            if state is None:
                return cur.one("SELECT COUNT(*) FROM trials WHERE study_id = ?", study_id)[0]
            states = (state,) if isinstance(state, TrialState) else tuple(state)
            names = [s.name for s in states]
            return cur.one(f"SELECT COUNT(*) FROM trials WHERE study_id = ? AND state IN "
                           f"({','.join('?' * len(names))})", study_id, *names)[0]

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        directions = self.get_study_directions(study_id)
        if len(directions) > 1:
            raise RuntimeError("Best trial can be obtained only for single-objective "
                               "optimization.")
        return self.get_trial(self._get_best_trial_id(study_id, directions[0]))

    def _get_best_trial_id(self, study_id: int, direction: StudyDirection) -> int:
        """Optuna's order: infinities by sign, then the value; Optuna's cache asks for this."""
        order = "DESC" if direction == StudyDirection.MAXIMIZE else "ASC"
        with self._read_cursor() as cur:
            row = cur.one(
                "SELECT t.trial_id FROM trials t JOIN trial_values v ON v.trial_id = t.trial_id "
                "WHERE t.study_id = ? AND t.state = 'COMPLETE' AND v.objective = 0 ORDER BY "
                f"CASE v.value_type WHEN 'INF_NEG' THEN -1 WHEN 'FINITE' THEN 0 ELSE 1 END "
                f"{order}, v.value {order}, t.trial_id LIMIT 1", study_id)
        if row is None:
            raise ValueError("No trials are completed yet.")
        return row[0]

    def _get_trials(self, study_id: int, states: Container[TrialState] | None,
                    included_trial_ids: set[int], trial_id_greater_than: int
                    ) -> list[FrozenTrial]:
        where, args = ["study_id = ?"], [study_id]
        if states is not None:
            names = [s.name for s in TrialState if s in states]
            where.append(f"state IN ({','.join('?' * len(names))})" if names else "0 = 1")
            args += names
        if trial_id_greater_than > -1:
            # Optuna's cache asks for the trials it has not seen finish: the newer ones and
            # those it holds unfinished. Ids are integers, so a long list is written inline.
            included = sorted(int(t) for t in included_trial_ids if t <= trial_id_greater_than)
            newer = "trial_id > ?"
            if included:
                newer = f"({newer} OR trial_id IN ({','.join(map(str, included))}))"
            where.append(newer)
            args.append(trial_id_greater_than)
        with self._read_cursor() as cur:
            trials = self._read_whole(cur, " AND ".join(where), args)
            if not trials:
                self._study_exists(cur, study_id)
        return trials

    def _read_rows(self, cur: Cursor, ids: list[int]) -> list[FrozenTrial]:
        out: list[FrozenTrial] = []
        for start in range(0, len(ids), MAX_IDS):
            chunk = ids[start:start + MAX_IDS]
            out += self._read(cur, f"trial_id IN ({','.join('?' * len(chunk))})", chunk)
        return out

    def _read(self, cur: Cursor, where: str, args: Sequence[Any]) -> list[FrozenTrial]:
        rows = cur.all(_TRIALS.format(where=where), *args)
        if not rows:
            return []
        ids = [r[0] for r in rows]
        kids: dict[str, dict[int, list[tuple]]] = {name: defaultdict(list) for name in _KIDS}
        for start in range(0, len(ids), _KID_IDS):
            chunk = ids[start:start + _KID_IDS]
            marks = ",".join("?" * len(chunk))
            for kind, tid, order, name, number, text in cur.all(
                    _CHILDREN.format(ids=marks), *(chunk * 5)):
                kids[_KIDS[kind]][tid].append((tid, name, number, text, order))
        return [self._frozen(row, kids) for row in rows]

    def _read_whole(self, cur: Cursor, where: str, args: Sequence[Any]) -> list[FrozenTrial]:
        """``_read`` in one query, for conditions with few placeholders (repeated six times)."""
        rows: list[tuple] = []
        kids: dict[str, dict[int, list[tuple]]] = {name: defaultdict(list) for name in _KIDS}
        for kind, tid, order, name, number, text, start, complete in cur.all(
                _WHOLE.format(where=where), *(list(args) * 6)):
            if kind == 5:
                rows.append((tid, order, name, start, complete))
            else:
                kids[_KIDS[kind]][tid].append((tid, name, number, text, order))
        return [self._frozen(row, kids) for row in rows]

    def _frozen(self, row: tuple, kids: dict[str, dict[int, list[tuple]]]) -> FrozenTrial:
        tid, number, state, start, complete = row
        params = kids["params"].get(tid, [])  # (trial_id, name, value, distribution)
        dists = {p[1]: distribution_of(p[3]) for p in params}
        values = [value_of(v[2], v[1]) for v in kids["values"].get(tid, [])]
        return FrozenTrial(
            number=number, state=TrialState[enum_name(state)], value=None, values=values or None,
            datetime_start=self._when(start), datetime_complete=self._when(complete),
            params={p[1]: dists[p[1]].to_external_repr(p[2]) for p in params},
            distributions=dists,
            user_attrs={a[1]: json.loads(a[3]) for a in kids["user"].get(tid, [])},
            system_attrs={a[1]: json.loads(a[3]) for a in kids["system"].get(tid, [])},
            intermediate_values={v[4]: value_of(v[2], v[1])
                                 for v in kids["inter"].get(tid, [])},
            trial_id=tid,
        )
