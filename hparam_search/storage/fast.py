"""The fast path: Optuna's RDB storage with its per-trial reads and writes as plain SQL.

A search with a fast objective spends most of its time in the ORM: samplers re-read the running
and new trials before every suggestion, and each trial writes its row, parameters, attributes
and result. The same statements issued directly on the driver cost a fraction of that. The
schema, the stored formats and the checks (a finished trial cannot change; a parameter keeps one
distribution kind per study; unknown ids raise KeyError) are Optuna's, and Optuna's own storage
test suite runs against this class. Anything else (deleting and listing studies, migrations,
other databases; on PostgreSQL Optuna's tables for another schema revision) goes through
Optuna's own code, with SQLAlchemy imported only then (orm.py).

The SQL is written once for SQLite and PostgreSQL (sql.py); a small dialect (sqlite.py,
postgres.py) supplies what differs: placeholders, the write lock, timestamps, the connection.
This module holds the study reads and the trial writes; the connection and its transactions
are in transactions.py, the way into Optuna's own code in orm.py, the trial reads in
trial_reads.py, and ``claim`` (this package's own operation) with the heartbeats in claim.py.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import logging
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

from optuna import distributions
from optuna.exceptions import DuplicatedStudyError
from optuna.storages import RDBStorage
from optuna.storages._base import DEFAULT_STUDY_NAME_PREFIX
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from .claim import ClaimRequest, Claims, Tally
from .orm import OrmPath
from .sql import (MAX_IDS, SET_ATTR, SET_INTER, SET_STUDY_ATTR, SET_VALUE, Cursor, enum_name,
                  set_attrs, stored_intermediate, stored_value)
from .transactions import Transactions
from .trial_reads import TrialReads

_logger = logging.getLogger("optuna.storages._rdb.storage")


# Numbers run 0, 1, 2, ... per study (Optuna numbers a trial by the trials before it): the
# newest trial's number + 1, found through the study index, not by counting.
NEWEST_NUMBER = "SELECT number FROM trials WHERE study_id = ? ORDER BY trial_id DESC LIMIT 1"


class FastStorage(Claims, TrialReads, Transactions, OrmPath, RDBStorage):
    """An ``RDBStorage`` whose hot paths are plain SQL. Subclasses name the dialect."""

    #: "?" (sqlite3) or "%s" (psycopg)
    placeholder = "?"
    #: whether INSERT ... RETURNING works (SQLite 3.35 and later, PostgreSQL)
    returning = True

    def __init__(self, url: str, *, engine_kwargs: dict[str, Any] | None = None,
                 heartbeat_interval: int | None = None, grace_period: int | None = None
                 ) -> None:
        # Not RDBStorage.__init__: it imports alembic and runs its migration context even when
        # told to skip the checks (a quarter of a second per process); prepare_schema() does
        # what is needed instead. SQLAlchemy (another fifth of a second) is imported only when
        # something goes through Optuna's own code: see ``engine``.
        self.engine_kwargs = engine_kwargs or {}
        self.url = self._fill_storage_url_template(url) if "{" in url else url
        self.skip_compatibility_check = True
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.heartbeat_stale_trial_callback = None
        self.failed_trial_callback = None
        self._engine: Any = None
        self._scoped_session: Any = None
        self._version_manager_instance: Any = None
        self._lock = threading.RLock()  # one transaction at a time on this storage's connection
        self._tallies: dict[int, Tally] = defaultdict(Tally)
        self._checked: set[tuple[int, str, str]] = set()  # (study, param, distribution) ok
        self._settled: dict[int, int] = {}  # study -> FAIL count with nothing left to retry
        # System attributes written in the same transaction that creates (or takes) a trial: a
        # process killed right after can never leave a RUNNING trial that says nothing of its
        # owner.
        self.new_trial_attrs: dict[str, Any] = {}
        self._pending: ClaimRequest | None = None  # a claim under way (see claim)
        self._retried: FrozenTrial | None = None
        self._taken_new: FrozenTrial | None = None  # the new trial a claim is taking ...
        self._claimed_new: FrozenTrial | None = None  # ... once committed: read by Trial()
        self.stale_failed: list[int] = []  # trials the last claim failed for a lost heartbeat
        # Trial writes held back by batched(), and the thread whose writes are held back.
        self._queued: list[tuple] = []
        self._batching: int | None = None
        self._connected = False  # a connection was opened once: a lost one is tried again
        self._pinned: Any = None  # the driver connection a session lock (PostgreSQL) holds

    def prepare_schema(self) -> None:
        """Create Optuna's tables on a new database; check the schema of an existing one.
        Without alembic (nor, on SQLite, SQLAlchemy) on the common paths: an existing
        database is checked against the schema revision Optuna's own migration files name as
        the newest."""
        from .schema import prepare

        with self._lock:
            prepare(self)

    # -- dialect ---------------------------------------------------------------------------
    @property
    def _links(self) -> Any:
        """Where the fast path's connections come from: ``connect()`` lends one (dialect)."""
        return self.engine

    def _lock_trial(self, cur: Cursor, trial_id: int) -> tuple[str, int] | None:
        """(state, study_id) of a trial, locked against other writers until commit."""
        return cur.one("SELECT state, study_id FROM trials WHERE trial_id = ?", trial_id)

    def _lock_study(self, cur: Cursor, study_id: int) -> None:
        """Serialise claims on one study (dialect: SQLite's write lock already does)."""

    def _stamp(self, when: datetime.datetime) -> Any:
        """A datetime as this database stores it: naive UTC, as Optuna's models do."""
        return when.astimezone(datetime.timezone.utc).replace(tzinfo=None)

    def _when(self, value: Any) -> datetime.datetime | None:
        """A stored datetime as Optuna returns it: naive local time."""
        if value is None:
            return None
        if not isinstance(value, datetime.datetime):
            value = datetime.datetime.fromisoformat(str(value))
        return value.replace(tzinfo=datetime.timezone.utc).astimezone().replace(tzinfo=None)

    # -- studies: reads in SQL ---------------------------------------------------------
    def _study_exists(self, cur: Cursor, study_id: int) -> None:
        if cur.one("SELECT 1 FROM studies WHERE study_id = ?", study_id) is None:
            raise KeyError(f"No study with study_id {study_id} exists.")

    def get_study_id_from_name(self, study_name: str) -> int:
        with self._read_cursor() as cur:
            row = cur.one("SELECT study_id FROM studies WHERE study_name = ?", study_name)
        if row is None:
            raise KeyError(f"No such study {study_name}.")
        return row[0]

    def get_study_name_from_id(self, study_id: int) -> str:
        with self._read_cursor() as cur:
            row = cur.one("SELECT study_name FROM studies WHERE study_id = ?", study_id)
        if row is None:
            raise KeyError(f"No study with study_id {study_id} exists.")
        return row[0]

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        with self._read_cursor() as cur:
            rows = cur.all("SELECT direction FROM study_directions WHERE study_id = ? "
                           "ORDER BY objective", study_id)
            if not rows:
                self._study_exists(cur, study_id)
        return [StudyDirection[enum_name(d)] for (d,) in rows]

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._study_attrs("study_user_attributes", study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._study_attrs("study_system_attributes", study_id)

    def _study_attrs(self, table: str, study_id: int) -> dict[str, Any]:
        with self._read_cursor() as cur:
            self._study_exists(cur, study_id)
            rows = cur.all(f"SELECT key, value_json FROM {table} WHERE study_id = ?", study_id)
        return {k: json.loads(v) for k, v in rows}

    # -- studies: what Optuna's storage writes, as SQL ---------------------------------------
    def create_new_study(self, directions: Sequence[StudyDirection],
                         study_name: str | None = None) -> int:
        name = study_name if study_name is not None else (
            DEFAULT_STUDY_NAME_PREFIX + str(uuid.uuid4()))
        with self._write() as cur:
            # The unique name decides between launchers creating it together (on SQLite the
            # write lock already makes the check and the insert one step).
            if self.returning:
                row = cur.one("INSERT INTO studies (study_name) VALUES (?) ON CONFLICT "
                              "(study_name) DO NOTHING RETURNING study_id", name)
                study_id = None if row is None else row[0]
            elif cur.one("SELECT 1 FROM studies WHERE study_name = ?", name) is None:
                study_id = cur.insert("INSERT INTO studies (study_name) VALUES (?)", name,
                                      key="study_id")
            else:
                study_id = None
            if study_id is None:
                raise DuplicatedStudyError(
                    f"Another study with name '{name}' already exists. Please specify a "
                    "different name, or reuse the existing one by setting `load_if_exists` "
                    "(for Python API) or `--skip-if-exists` flag (for CLI).")
            for objective, direction in enumerate(directions):
                cur.run("INSERT INTO study_directions (direction, study_id, objective) "
                        "VALUES (?, ?, ?)", StudyDirection(direction).name, study_id, objective)
        _logger.info(f"A new study created in RDB with name: {name}")
        return study_id

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._set_study_attr("study_user_attributes", study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._set_study_attr("study_system_attributes", study_id, key, value)

    def _set_study_attr(self, table: str, study_id: int, key: str, value: Any) -> None:
        text = json.dumps(value)
        with self._write() as cur:
            self._study_exists(cur, study_id)
            cur.run(SET_STUDY_ATTR[table], study_id, key, text)

    # -- trials: writes --------------------------------------------------------------------
    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None
                          ) -> FrozenTrial:
        if template_trial is None and self._pending is not None:
            return self._claim(study_id, self._pending)
        with self._write() as cur:
            self._study_exists(cur, study_id)
            # Under the claims' lock: numbers stay unique, and a claim never misses a WAITING
            # trial added beside it (its tally reads only ids above those it has seen).
            self._lock_study(cur, study_id)
            if template_trial is None:
                trial_id, number, start = self._insert_running(cur, study_id)
                self._write_attrs(cur, "trial_system_attributes", trial_id, self.new_trial_attrs)
                return FrozenTrial(
                    number=number, state=TrialState.RUNNING, value=None, values=None,
                    datetime_start=start, datetime_complete=None, params={},
                    distributions={}, user_attrs={}, system_attrs=dict(self.new_trial_attrs),
                    intermediate_values={}, trial_id=trial_id)
            trial_id, number = self._insert_template(cur, study_id, template_trial)
        frozen = copy.deepcopy(template_trial)
        frozen.number, frozen._trial_id = number, trial_id
        return frozen

    def _insert_running(self, cur: Cursor, study_id: int) -> tuple[int, int, datetime.datetime]:
        """A new RUNNING trial numbered after the study's last one; call under the lock."""
        start = datetime.datetime.now()
        if self.returning:  # the number and the row in one round trip
            trial_id, number = cur.one(
                "INSERT INTO trials (number, study_id, state, datetime_start) "
                f"SELECT COALESCE(({NEWEST_NUMBER}) + 1, 0), ?, 'RUNNING', ? "
                "RETURNING trial_id, number", study_id, study_id, self._stamp(start))
            return trial_id, number, start
        number = self._next_number(cur, study_id)
        trial_id = cur.insert("INSERT INTO trials (number, study_id, state, datetime_start) "
                              "VALUES (?, ?, 'RUNNING', ?)", number, study_id,
                              self._stamp(start))
        return trial_id, number, start

    @staticmethod
    def _next_number(cur: Cursor, study_id: int) -> int:
        row = cur.one(NEWEST_NUMBER, study_id)
        return 0 if row is None else row[0] + 1

    def _insert_template(self, cur: Cursor, study_id: int, template: FrozenTrial
                         ) -> tuple[int, int]:
        number = self._next_number(cur, study_id)
        trial_id = cur.insert(
            "INSERT INTO trials (number, study_id, state, datetime_start, datetime_complete) "
            "VALUES (?, ?, ?, ?, ?)", number, study_id, template.state.name,
            self._stamp(template.datetime_start) if template.datetime_start else None,
            self._stamp(template.datetime_complete) if template.datetime_complete else None)
        values = template.values if template.values is not None else (
            [template.value] if template.value is not None else [])
        for objective, value in enumerate(values):
            stored, kind = stored_value(value)
            cur.run(SET_VALUE, trial_id, objective, stored, kind)
        for name, value in template.params.items():
            dist = template.distributions[name]
            self._check_distribution(cur, study_id, name, dist)
            cur.run("INSERT INTO trial_params (trial_id, param_name, param_value, "
                    "distribution_json) VALUES (?, ?, ?, ?)", trial_id, name,
                    dist.to_internal_repr(value), distributions.distribution_to_json(dist))
        self._write_attrs(cur, "trial_user_attributes", trial_id, template.user_attrs)
        self._write_attrs(cur, "trial_system_attributes", trial_id, template.system_attrs)
        for step, value in template.intermediate_values.items():
            stored, kind = stored_intermediate(value)
            cur.run(SET_INTER, trial_id, step, stored, kind)
        return trial_id, number

    def _write_attrs(self, cur: Cursor, table: str, trial_id: int, attrs: dict[str, Any]
                     ) -> None:
        rows = [(trial_id, key, json.dumps(value)) for key, value in attrs.items()]
        for start in range(0, len(rows), MAX_IDS // 3):  # within SQLite's parameter limit
            chunk = rows[start:start + MAX_IDS // 3]
            cur.run(set_attrs(table, len(chunk)), *(v for row in chunk for v in row))

    def _set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                         distribution: distributions.BaseDistribution,
                         previous_distribution: distributions.BaseDistribution | None) -> None:
        op = ("param", trial_id, param_name, param_value_internal, distribution,
              previous_distribution)
        if previous_distribution is None:
            # Optuna's cache records this distribution as the study's once the call returns:
            # the check against the database must have passed by then.
            self._run_writes([op])
            return
        if self._batching == threading.get_ident():  # checked now, where the caller sees it
            distributions.check_distribution_compatibility(previous_distribution, distribution)
        self._trial_write(op)

    @contextlib.contextmanager
    def batched(self) -> Iterator[None]:
        """Parameters and attributes this thread writes to trials in the block are committed
        together, in one transaction, before anything else is read or written (or when the
        block ends). Sampling a trial's parameters is then one transaction instead of one per
        parameter and attribute; a check that fails (a finished trial, a parameter of another
        kind) raises where the writes are committed."""
        with self._lock:
            mine = self._batching is None  # else nested, or another thread's: writes go on
            if mine:
                self._batching = threading.get_ident()
        if not mine:
            yield
            return
        try:
            yield
        except BaseException:
            with self._lock:
                self._batching = None
                with contextlib.suppress(Exception):  # the block's own error is the one to see
                    self._flush()
            raise
        with self._lock:
            self._batching = None
            self._flush()

    def _trial_write(self, op: tuple) -> None:
        """Write to a trial now, or queue the write while this thread is in batched()."""
        with self._lock:
            if self._batching == threading.get_ident():
                self._queued.append(op)
                return
        self._run_writes([op])

    def _flush(self) -> None:
        ops, self._queued = self._queued, []
        if ops:
            self._run_writes(ops)

    def _run_writes(self, ops: list[tuple]) -> None:
        with self._write() as cur:
            study_of: dict[int, int] = {}
            for op in ops:
                trial_id = op[1]
                if trial_id not in study_of:
                    study_of[trial_id] = self._updatable(cur, trial_id)
                if op[0] == "param":
                    _, _, name, value, distribution, previous = op
                    if previous is not None:
                        distributions.check_distribution_compatibility(previous, distribution)
                    else:
                        self._check_distribution(cur, study_of[trial_id], name, distribution)
                    # A second write of a parameter is ignored, as Optuna's storage does.
                    cur.run("INSERT INTO trial_params (trial_id, param_name, param_value, "
                            "distribution_json) VALUES (?, ?, ?, ?) ON CONFLICT (trial_id, "
                            "param_name) DO NOTHING", trial_id, name, value,
                            distributions.distribution_to_json(distribution))
                else:
                    _, _, table, texts = op
                    for key, text in texts.items():
                        cur.run(SET_ATTR[table], trial_id, key, text)

    def _check_distribution(self, cur: Cursor, study_id: int, name: str,
                            distribution: distributions.BaseDistribution) -> None:
        """Raise ValueError when the study already has ``name`` with an incompatible kind."""
        dist_json = distributions.distribution_to_json(distribution)
        if (study_id, name, dist_json) in self._checked:
            return
        previous = cur.one("SELECT p.distribution_json FROM trial_params p JOIN trials t ON "
                           "p.trial_id = t.trial_id WHERE t.study_id = ? AND p.param_name = ? "
                           "LIMIT 1", study_id, name)
        if previous is not None:
            distributions.check_distribution_compatibility(
                distributions.json_to_distribution(previous[0]), distribution)
        self._checked.add((study_id, name, dist_json))

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        now = self._stamp(datetime.datetime.now())
        with self._write() as cur:
            row = self._lock_trial(cur, trial_id)
            if row is None:
                raise KeyError(f"No trial with trial_id {trial_id} exists.")
            self.check_trial_is_updatable(trial_id, TrialState[enum_name(row[0])])
            for objective, value in enumerate(values or ()):
                stored, kind = stored_value(value)
                cur.run(SET_VALUE, trial_id, objective, stored, kind)
            if state == TrialState.RUNNING:
                # Taking a WAITING (enqueued) trial: two processes can never both get it.
                if enum_name(row[0]) != "WAITING":
                    return False
                cur.run("UPDATE trials SET state = 'RUNNING', datetime_start = ? WHERE "
                        "trial_id = ?", now, trial_id)
                self._write_attrs(cur, "trial_system_attributes", trial_id,
                                  self.new_trial_attrs)
                return True
            complete = now if state.is_finished() else None
            cur.run("UPDATE trials SET state = ?, datetime_complete = ? WHERE trial_id = ?",
                    state.name, complete, trial_id)
        return True

    def fail_running(self, trial_id: int, reason_key: str, reason: str) -> bool:
        """Mark a RUNNING trial FAIL with its reason, in one transaction; False when it has
        finished already (or does not exist)."""
        with self._write() as cur:
            row = self._lock_trial(cur, trial_id)
            if row is None or enum_name(row[0]) != "RUNNING":
                return False
            cur.run(SET_ATTR["trial_system_attributes"], trial_id, reason_key,
                    json.dumps(reason))
            cur.run("UPDATE trials SET state = 'FAIL', datetime_complete = ? WHERE "
                    "trial_id = ?", self._stamp(datetime.datetime.now()), trial_id)
        return True

    def set_trial_intermediate_value(self, trial_id: int, step: int,
                                     intermediate_value: float) -> None:
        stored, kind = stored_intermediate(intermediate_value)
        with self._write() as cur:
            self._updatable(cur, trial_id)
            cur.run(SET_INTER, trial_id, step, stored, kind)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._set_attrs("trial_system_attributes", trial_id, {key: value})

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._set_attrs("trial_user_attributes", trial_id, {key: value})

    def set_trial_user_attrs(self, trial_id: int, values: dict[str, Any]) -> None:
        """Several user attributes in one transaction."""
        self._set_attrs("trial_user_attributes", trial_id, values)

    def _set_attrs(self, table: str, trial_id: int, values: dict[str, Any]) -> None:
        # As JSON now: a value changed after the call, or one JSON cannot hold, shows here.
        self._trial_write(("attrs", trial_id, table,
                           {key: json.dumps(value) for key, value in values.items()}))

    def _updatable(self, cur: Cursor, trial_id: int) -> int:
        """Raise unless the trial exists and is not finished; return its study id."""
        row = self._lock_trial(cur, trial_id)
        if row is None:
            raise KeyError(f"No trial with trial_id {trial_id} exists.")
        self.check_trial_is_updatable(trial_id, TrialState[enum_name(row[0])])
        return row[1]
