"""The fast path: Optuna's RDB storage with its per-trial reads and writes as plain SQL.

A search with a fast objective spends most of its time in the ORM: samplers re-read the running
and new trials before every suggestion, and each trial writes its row, parameters, attributes
and result. The same statements issued directly on the driver cost a fraction of that. The
schema, the stored formats and the checks (a finished trial cannot change; a parameter keeps one
distribution kind per study; unknown ids raise KeyError) are Optuna's, and Optuna's own storage
test suite runs against this class. Anything else (study creation and attributes, migrations,
other databases) goes through Optuna's own code.

The SQL is written once for SQLite and PostgreSQL; a small dialect (sqlite.py, postgres.py)
supplies what differs: placeholders, the write lock, timestamps, the connection.

``claim`` is this package's own operation: in one transaction under the study's lock it counts
the trials, fails trials whose heartbeat stopped, and takes the next trial (a retry of an
interrupted one, a WAITING one, or a new one) with its owner written beside it.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import threading
from collections import defaultdict
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy
from optuna import distributions
from optuna.exceptions import StorageInternalError
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from . import retries as rt

_VALUE_TYPE = models.TrialValueModel.TrialValueType
_INTER_TYPE = models.TrialIntermediateValueModel.TrialIntermediateValueType
_VALUE_OF = models.TrialValueModel.stored_repr_to_value
_INTER_OF = models.TrialIntermediateValueModel.stored_repr_to_intermediate_value
# Everything hanging off some trials, in one query (a round trip counts on a database server):
# (kind, trial_id, order, name, number, text) rows of params (0), values (1), user (2) and
# system (3) attributes and intermediate values (4).
_CHILDREN = " UNION ALL ".join([
    "SELECT 0, trial_id, param_id, param_name, param_value, distribution_json "
    "FROM trial_params WHERE trial_id IN ({ids})",
    "SELECT 1, trial_id, objective, CAST(value_type AS VARCHAR(16)), value, NULL "
    "FROM trial_values WHERE trial_id IN ({ids})",
    "SELECT 2, trial_id, trial_user_attribute_id, key, NULL, value_json "
    "FROM trial_user_attributes WHERE trial_id IN ({ids})",
    "SELECT 3, trial_id, trial_system_attribute_id, key, NULL, value_json "
    "FROM trial_system_attributes WHERE trial_id IN ({ids})",
    "SELECT 4, trial_id, step, CAST(intermediate_value_type AS VARCHAR(16)), "
    "intermediate_value, NULL FROM trial_intermediate_values WHERE trial_id IN ({ids})",
]) + " ORDER BY 1, 2, 3"
_KIDS = ("params", "values", "user", "system", "inter")
_TRIALS = ("SELECT trial_id, number, state, datetime_start, datetime_complete FROM trials "
           "WHERE {where} ORDER BY trial_id")
_MAX_IDS = 900  # below SQLite's bound-variable limit
_KID_IDS = _MAX_IDS // 5  # the children query repeats its id list five times
_FINISHED = ("COMPLETE", "PRUNED")
_NOT_FINAL = ("RUNNING", "WAITING")


def _upsert(table: str, keys: str, columns: str, update: str) -> str:
    """An INSERT that updates the row already there (SQLite and PostgreSQL share the form)."""
    marks = ", ".join("?" * (len(keys.split(", ")) + len(columns.split(", "))))
    sets = ", ".join(f"{c} = excluded.{c}" for c in update.split(", "))
    return (f"INSERT INTO {table} ({keys}, {columns}) VALUES ({marks}) "
            f"ON CONFLICT ({keys}) DO UPDATE SET {sets}")


_SET_ATTR = {t: _upsert(t, "trial_id, key", "value_json", "value_json")
             for t in ("trial_user_attributes", "trial_system_attributes")}
_SET_VALUE = _upsert("trial_values", "trial_id, objective", "value, value_type",
                     "value, value_type")
_BEAT = ("INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES (?, CURRENT_TIMESTAMP) "
         "ON CONFLICT (trial_id) DO UPDATE SET heartbeat = CURRENT_TIMESTAMP")
_SET_INTER = _upsert("trial_intermediate_values", "trial_id, step",
                     "intermediate_value, intermediate_value_type",
                     "intermediate_value, intermediate_value_type")


@dataclass
class _Tally:
    """One process's running count of a study's trials by state, brought up to date by reading
    only the trials that are new or were not final last time: a claim costs the same in a
    study of 50,000 trials as in an empty one."""

    max_id: int = 0
    finished: int = 0
    failed: int = 0
    open: dict[int, str] = field(default_factory=dict)  # trial_id -> RUNNING / WAITING

    def refresh(self, rows: Sequence[tuple[int, str]]) -> None:
        for trial_id, state in rows:
            known = self.open.pop(trial_id, None)
            if trial_id > self.max_id:
                self.max_id = trial_id
            elif known is None:
                continue  # already counted as final
            if state in _FINISHED:
                self.finished += 1
            elif state == "FAIL":
                self.failed += 1
            else:
                self.open[trial_id] = state

    @property
    def running(self) -> int:
        return sum(1 for s in self.open.values() if s == "RUNNING")

    def waiting(self) -> list[int]:
        return sorted(t for t, s in self.open.items() if s == "WAITING")


@dataclass(frozen=True)
class Claimed:
    """What ``claim`` took: the trial's id, and the FrozenTrial it retries, if any."""

    trial_id: int
    retried: FrozenTrial | None = None


@dataclass(frozen=True)
class _Request:
    n_trials: int
    attrs: dict[str, Any]
    retries: int
    check_stale: bool
    stale_reason: str
    user_attrs: Callable[[int, FrozenTrial | None], dict[str, Any]] | None


class _BudgetSpent(Exception):
    """Raised through Optuna's cache when a claim finds no room."""


class FastStorage(RDBStorage):
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
        # what is needed instead.
        self.engine_kwargs = engine_kwargs or {}
        self.url = self._fill_storage_url_template(url)
        self.skip_compatibility_check = True
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.heartbeat_stale_trial_callback = None
        self.failed_trial_callback = None
        self.engine = sqlalchemy.engine.create_engine(self.url, **self.engine_kwargs)
        self.scoped_session = sqlalchemy.orm.scoped_session(
            sqlalchemy.orm.sessionmaker(bind=self.engine))
        self._version_manager_instance: Any = None
        self._lock = threading.RLock()  # one transaction at a time on this storage's connection
        self._tallies: dict[int, _Tally] = defaultdict(_Tally)
        self._checked: set[tuple[int, str, str]] = set()  # (study, param, distribution) ok
        self._settled: dict[int, int] = {}  # study -> FAIL count with nothing left to retry
        # System attributes written in the same transaction that creates (or takes) a trial: a
        # process killed right after can never leave a RUNNING trial that says nothing of its
        # owner.
        self.new_trial_attrs: dict[str, Any] = {}
        self._pending: _Request | None = None  # a claim under way (see claim)
        self._retried: FrozenTrial | None = None
        self.stale_failed: list[int] = []  # trials the last claim failed for a lost heartbeat

    # -- Optuna internals this class replaces ------------------------------------------------
    @property
    def _version_manager(self) -> Any:
        """Optuna's schema-version manager, made only for the rare calls that need it."""
        if self._version_manager_instance is None:
            from optuna.storages._rdb.storage import _VersionManager

            self._version_manager_instance = _VersionManager(self.url, self.engine,
                                                             self.scoped_session)
        return self._version_manager_instance

    def __getstate__(self) -> dict[Any, Any]:
        state = {k: v for k, v in self.__dict__.items()
                 if k not in ("engine", "scoped_session", "_version_manager_instance", "_lock")}
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        self.__dict__.update(state)
        self.engine = sqlalchemy.engine.create_engine(self.url, **self.engine_kwargs)
        self.scoped_session = sqlalchemy.orm.scoped_session(
            sqlalchemy.orm.sessionmaker(bind=self.engine))
        self._version_manager_instance = None
        self._lock = threading.RLock()

    def prepare_schema(self) -> None:
        """Create Optuna's tables on a new database; check the schema of an existing one.
        Without alembic on the common paths: an existing database is checked against the
        schema revision Optuna's own migration files name as the newest."""
        from .schema import prepare

        with self._lock:
            prepare(self)

    # -- plumbing ------------------------------------------------------------------------
    def _sql(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    @contextlib.contextmanager
    def _raw(self) -> Iterator[Any]:
        """The driver connection, under this storage's lock (its heartbeat thread shares it)."""
        with self._lock, self.engine.connect() as conn:
            yield conn.connection.driver_connection

    @contextlib.contextmanager
    def _read_cursor(self) -> Iterator[_Cursor]:
        with self._raw() as raw:
            cur = raw.cursor()
            try:
                yield _Cursor(cur, self._sql, self.returning)
            finally:
                cur.close()
                raw.rollback()  # end the read transaction (a snapshot, on PostgreSQL)

    @contextlib.contextmanager
    def _write(self) -> Iterator[_Cursor]:
        """One write transaction that holds the dialect's write lock from its first statement,
        so a check and the write that depends on it cannot be separated by another process."""
        with self._raw() as raw:
            cur = raw.cursor()
            try:
                self._begin_write(cur)
                yield _Cursor(cur, self._sql, self.returning)
            except BaseException as exc:
                raw.rollback()
                cur.close()
                if self._is_operational(exc):
                    raise StorageInternalError(f"the database failed: {exc}") from exc
                raise
            try:
                raw.commit()
            except Exception as exc:  # noqa: BLE001 - the driver's error, as Optuna reports it
                raise StorageInternalError(f"the commit failed: {exc}") from exc
            finally:
                cur.close()

    def _begin_write(self, cur: Any) -> None:
        """Start a transaction that holds the write lock (dialect)."""

    def _lock_trial(self, cur: _Cursor, trial_id: int) -> tuple[str, int] | None:
        """(state, study_id) of a trial, locked against other writers until commit."""
        return cur.one("SELECT state, study_id FROM trials WHERE trial_id = ?", trial_id)

    def _lock_study(self, cur: _Cursor, study_id: int) -> None:
        """Serialise claims on one study (dialect: SQLite's write lock already does)."""

    @staticmethod
    def _is_operational(exc: BaseException) -> bool:
        return False

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

    # -- studies: reads in SQL, writes through Optuna (rare) -----------------------------
    def create_new_study(self, *args: Any, **kwargs: Any) -> int:
        with self._lock:
            return super().create_new_study(*args, **kwargs)

    def delete_study(self, study_id: int) -> None:
        with self._lock:
            super().delete_study(study_id)
            # A new study may be given this id: nothing known of the old one may survive.
            self._tallies.pop(study_id, None)
            self._settled.pop(study_id, None)
            self._checked = {c for c in self._checked if c[0] != study_id}

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        with self._lock:
            super().set_study_user_attr(study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        with self._lock:
            super().set_study_system_attr(study_id, key, value)

    def get_all_studies(self) -> Any:
        with self._lock:
            return super().get_all_studies()

    def _study_exists(self, cur: _Cursor, study_id: int) -> None:
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
        return [StudyDirection[_name(d)] for (d,) in rows]

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._study_attrs("study_user_attributes", study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._study_attrs("study_system_attributes", study_id)

    def _study_attrs(self, table: str, study_id: int) -> dict[str, Any]:
        with self._read_cursor() as cur:
            self._study_exists(cur, study_id)
            rows = cur.all(f"SELECT key, value_json FROM {table} WHERE study_id = ?", study_id)
        return {k: json.loads(v) for k, v in rows}

    # -- trials: writes --------------------------------------------------------------------
    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None
                          ) -> FrozenTrial:
        if template_trial is None and self._pending is not None:
            return self._claim(study_id, self._pending)
        with self._write() as cur:
            self._study_exists(cur, study_id)
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

    def _insert_running(self, cur: _Cursor, study_id: int) -> tuple[int, int, datetime.datetime]:
        """A new RUNNING trial numbered after the study's last one; call under the lock."""
        start = datetime.datetime.now()
        number = self._next_number(cur, study_id)
        trial_id = cur.insert("INSERT INTO trials (number, study_id, state, datetime_start) "
                              "VALUES (?, ?, 'RUNNING', ?)", number, study_id,
                              self._stamp(start))
        return trial_id, number, start

    @staticmethod
    def _next_number(cur: _Cursor, study_id: int) -> int:
        # Numbers run 0, 1, 2, ... per study (Optuna numbers a trial by the trials before it):
        # the newest trial's number + 1, found through the study index, not by counting.
        row = cur.one("SELECT number FROM trials WHERE study_id = ? ORDER BY trial_id DESC "
                      "LIMIT 1", study_id)
        return 0 if row is None else row[0] + 1

    def _insert_template(self, cur: _Cursor, study_id: int, template: FrozenTrial
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
            stored, kind = models.TrialValueModel.value_to_stored_repr(value)
            cur.run(_SET_VALUE, trial_id, objective, stored, kind.name)
        for name, value in template.params.items():
            dist = template.distributions[name]
            self._check_distribution(cur, study_id, name, dist)
            cur.run("INSERT INTO trial_params (trial_id, param_name, param_value, "
                    "distribution_json) VALUES (?, ?, ?, ?)", trial_id, name,
                    dist.to_internal_repr(value), distributions.distribution_to_json(dist))
        self._write_attrs(cur, "trial_user_attributes", trial_id, template.user_attrs)
        self._write_attrs(cur, "trial_system_attributes", trial_id, template.system_attrs)
        for step, value in template.intermediate_values.items():
            stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(
                value)
            cur.run(_SET_INTER, trial_id, step, stored, kind.name)
        return trial_id, number

    def _write_attrs(self, cur: _Cursor, table: str, trial_id: int, attrs: dict[str, Any]
                     ) -> None:
        for key, value in attrs.items():
            cur.run(_SET_ATTR[table], trial_id, key, json.dumps(value))

    def _set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                         distribution: distributions.BaseDistribution,
                         previous_distribution: distributions.BaseDistribution | None) -> None:
        with self._write() as cur:
            study_id = self._updatable(cur, trial_id)
            if previous_distribution is not None:
                distributions.check_distribution_compatibility(previous_distribution,
                                                               distribution)
            else:
                self._check_distribution(cur, study_id, param_name, distribution)
            # A second write of a parameter is ignored, as Optuna's storage does.
            cur.run("INSERT INTO trial_params (trial_id, param_name, param_value, "
                    "distribution_json) VALUES (?, ?, ?, ?) ON CONFLICT (trial_id, param_name) "
                    "DO NOTHING", trial_id, param_name, param_value_internal,
                    distributions.distribution_to_json(distribution))

    def _check_distribution(self, cur: _Cursor, study_id: int, name: str,
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
            self.check_trial_is_updatable(trial_id, TrialState[_name(row[0])])
            for objective, value in enumerate(values or ()):
                stored, kind = models.TrialValueModel.value_to_stored_repr(value)
                cur.run(_SET_VALUE, trial_id, objective, stored, kind.name)
            if state == TrialState.RUNNING:
                # Taking a WAITING (enqueued) trial: two processes can never both get it.
                if _name(row[0]) != "WAITING":
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
            if row is None or _name(row[0]) != "RUNNING":
                return False
            cur.run(_SET_ATTR["trial_system_attributes"], trial_id, reason_key,
                    json.dumps(reason))
            cur.run("UPDATE trials SET state = 'FAIL', datetime_complete = ? WHERE "
                    "trial_id = ?", self._stamp(datetime.datetime.now()), trial_id)
        return True

    def set_trial_intermediate_value(self, trial_id: int, step: int,
                                     intermediate_value: float) -> None:
        stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(
            intermediate_value)
        with self._write() as cur:
            self._updatable(cur, trial_id)
            cur.run(_SET_INTER, trial_id, step, stored, kind.name)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._set_attrs("trial_system_attributes", trial_id, {key: value})

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._set_attrs("trial_user_attributes", trial_id, {key: value})

    def set_trial_user_attrs(self, trial_id: int, values: dict[str, Any]) -> None:
        """Several user attributes in one transaction."""
        self._set_attrs("trial_user_attributes", trial_id, values)

    def _set_attrs(self, table: str, trial_id: int, values: dict[str, Any]) -> None:
        with self._write() as cur:
            self._updatable(cur, trial_id)
            self._write_attrs(cur, table, trial_id, values)

    def _updatable(self, cur: _Cursor, trial_id: int) -> int:
        """Raise unless the trial exists and is not finished; return its study id."""
        row = self._lock_trial(cur, trial_id)
        if row is None:
            raise KeyError(f"No trial with trial_id {trial_id} exists.")
        self.check_trial_is_updatable(trial_id, TrialState[_name(row[0])])
        return row[1]

    # -- the claim ------------------------------------------------------------------------
    def claim(self, study: Any, n_trials: int, attrs: dict[str, Any], *, retries: int = 0,
              check_stale: bool = False, stale_reason: str = "",
              user_attrs: Callable[[int, FrozenTrial | None], dict[str, Any]] | None = None
              ) -> Claimed | None:
        """Take the study's next trial if the budget has room (finished + running trials below
        ``n_trials``), in one transaction under the study's lock: a retry of an interrupted
        configuration first, then a WAITING (enqueued) trial, then a new one. ``attrs`` are
        written as system attributes of the trial taken, and ``user_attrs(number, retried)``
        as its user attributes. None when the budget is spent.

        The trial is taken through ``study``'s storage (Optuna's cache over this one), so the
        cache knows it as it knows a trial made by ``Study.ask``."""
        self._pending = _Request(n_trials, attrs, retries, check_stale, stale_reason,
                                 user_attrs)
        self._retried, self.stale_failed = None, []
        try:
            trial_id = study._storage.create_new_trial(study._study_id)
        except _BudgetSpent:
            return None
        finally:
            self._pending = None
        return Claimed(trial_id, self._retried)

    def _claim(self, study_id: int, request: _Request) -> FrozenTrial:
        n_trials, attrs, retries = request.n_trials, request.attrs, request.retries
        check_stale, stale_reason = request.check_stale, request.stale_reason
        with self._write() as cur:
            self._lock_study(cur, study_id)
            tally = self._tally(cur, study_id)
            if check_stale and tally.running:
                self._fail_stale(cur, tally, stale_reason)
            if tally.finished + tally.running >= n_trials:
                raise _BudgetSpent()
            if retries > 0 and tally.failed and self._settled.get(study_id) != tally.failed:
                failed = self._next_retry(cur, study_id, retries)
                if failed is None:
                    self._settled[study_id] = tally.failed
                else:
                    template = rt.retry_template(failed, attrs)
                    trial_id, number = self._insert_template(cur, study_id, template)
                    extra = self._user_attrs(cur, trial_id, number, failed, request)
                    template.user_attrs.update(extra)
                    tally.open[trial_id] = "RUNNING"
                    tally.max_id = max(tally.max_id, trial_id)
                    self._retried = failed
                    frozen = copy.deepcopy(template)
                    frozen.number, frozen._trial_id = number, trial_id
                    return frozen
            now = datetime.datetime.now()
            for waiting in tally.waiting():
                taken = cur.run("UPDATE trials SET state = 'RUNNING', datetime_start = ? WHERE "
                                "trial_id = ? AND state = 'WAITING'", self._stamp(now), waiting)
                tally.open.pop(waiting, None)
                if taken == 1:
                    tally.open[waiting] = "RUNNING"
                    self._write_attrs(cur, "trial_system_attributes", waiting, attrs)
                    number = cur.one("SELECT number FROM trials WHERE trial_id = ?", waiting)[0]
                    self._user_attrs(cur, waiting, number, None, request)
                    return self._read(cur, "trial_id = ?", [waiting])[0]
            trial_id, number, start = self._insert_running(cur, study_id)
            tally.open[trial_id] = "RUNNING"
            tally.max_id = max(tally.max_id, trial_id)
            self._write_attrs(cur, "trial_system_attributes", trial_id, attrs)
            extra = self._user_attrs(cur, trial_id, number, None, request)
            return FrozenTrial(
                number=number, state=TrialState.RUNNING, value=None, values=None,
                datetime_start=start, datetime_complete=None, params={}, distributions={},
                user_attrs=extra, system_attrs=dict(attrs), intermediate_values={},
                trial_id=trial_id)

    def _user_attrs(self, cur: _Cursor, trial_id: int, number: int,
                    retried: FrozenTrial | None, request: _Request) -> dict[str, Any]:
        """The taken trial's user attributes, and its first heartbeat (database storages):
        written with the claim, not in transactions of their own."""
        extra = request.user_attrs(number, retried) if request.user_attrs else {}
        self._write_attrs(cur, "trial_user_attributes", trial_id, extra)
        if self.heartbeat_interval is not None:
            cur.run(_BEAT, trial_id)
        return extra

    def _tally(self, cur: _Cursor, study_id: int) -> _Tally:
        tally = self._tallies[study_id]
        if not tally.max_id:
            self._study_exists(cur, study_id)
        opened = list(tally.open)
        rows: list[tuple] = []
        for start in range(0, max(len(opened), 1), _MAX_IDS):
            chunk = opened[start:start + _MAX_IDS]
            extra = f" OR trial_id IN ({','.join('?' * len(chunk))})" if chunk else ""
            rows += cur.all(f"SELECT trial_id, state FROM trials WHERE study_id = ? AND "
                            f"(trial_id > ?{extra})", study_id, tally.max_id, *chunk)
        tally.refresh([(r[0], _name(r[1])) for r in sorted(set(rows))])
        return tally

    def _fail_stale(self, cur: _Cursor, tally: _Tally, reason: str) -> None:
        """Fail the RUNNING trials whose heartbeat stopped more than the grace period ago."""
        running = [t for t, s in tally.open.items() if s == "RUNNING"]
        grace = self.grace_period or 2 * (self.heartbeat_interval or 1)
        for trial_id in self._stale_among(cur, running, grace):
            cur.run(_SET_ATTR["trial_system_attributes"], trial_id, "fail_reason",
                    json.dumps(reason))
            cur.run("UPDATE trials SET state = 'FAIL', datetime_complete = ? WHERE trial_id = ? "
                    "AND state = 'RUNNING'", self._stamp(datetime.datetime.now()), trial_id)
            tally.open.pop(trial_id, None)
            tally.failed += 1
            self.stale_failed.append(trial_id)

    def _stale_among(self, cur: _Cursor, trial_ids: list[int], grace: float) -> list[int]:
        """Of these trials, those whose last heartbeat is older than ``grace`` s (dialect)."""
        return []

    def _next_retry(self, cur: _Cursor, study_id: int, retries: int) -> FrozenTrial | None:
        fails = [r[0] for r in cur.all("SELECT trial_id FROM trials WHERE study_id = ? AND "
                                       "state = 'FAIL'", study_id)]
        if not fails:
            return None
        candidates = rt.retryable(self._read_rows(cur, fails), retries)
        if not candidates:
            return None
        histories = cur.all("SELECT a.value_json FROM trial_system_attributes a JOIN trials t "
                            "ON a.trial_id = t.trial_id WHERE t.study_id = ? AND a.key = ?",
                            study_id, rt.RETRY_HISTORY_ATTR)
        done = {json.loads(h)[-1] for (h,) in histories if json.loads(h)}
        return next((t for t in candidates if t.number not in done), None)

    # -- heartbeats ------------------------------------------------------------------------
    def record_heartbeat(self, trial_id: int) -> None:
        with self._write() as cur:
            cur.run(_BEAT, trial_id)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        grace = self.grace_period or 2 * (self.heartbeat_interval or 1)
        with self._read_cursor() as cur:
            running = [r[0] for r in cur.all("SELECT trial_id FROM trials WHERE study_id = ? "
                                             "AND state = 'RUNNING'", study_id)]
            return self._stale_among(cur, running, grace)

    # -- trials: reads -----------------------------------------------------------------
    def get_trial(self, trial_id: int) -> FrozenTrial:
        with self._read_cursor() as cur:
            trials = self._read(cur, "trial_id = ?", [trial_id])
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
        order = "DESC" if directions[0] == StudyDirection.MAXIMIZE else "ASC"
        with self._read_cursor() as cur:
            row = cur.one(
                "SELECT t.trial_id FROM trials t JOIN trial_values v ON v.trial_id = t.trial_id "
                "WHERE t.study_id = ? AND t.state = 'COMPLETE' AND v.objective = 0 ORDER BY "
                f"CASE v.value_type WHEN 'INF_NEG' THEN -1 WHEN 'FINITE' THEN 0 ELSE 1 END "
                f"{order}, v.value {order}, t.trial_id LIMIT 1", study_id)
        if row is None:
            raise ValueError("No trials are completed yet.")
        return self.get_trial(row[0])

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
            trials = self._read(cur, " AND ".join(where), args)
            if not trials:
                self._study_exists(cur, study_id)
        return trials

    def _read_rows(self, cur: _Cursor, ids: list[int]) -> list[FrozenTrial]:
        out: list[FrozenTrial] = []
        for start in range(0, len(ids), _MAX_IDS):
            chunk = ids[start:start + _MAX_IDS]
            out += self._read(cur, f"trial_id IN ({','.join('?' * len(chunk))})", chunk)
        return out

    def _read(self, cur: _Cursor, where: str, args: Sequence[Any]) -> list[FrozenTrial]:
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

    def _frozen(self, row: tuple, kids: dict[str, dict[int, list[tuple]]]) -> FrozenTrial:
        tid, number, state, start, complete = row
        params = kids["params"].get(tid, [])  # (trial_id, name, value, distribution)
        dists = {p[1]: _distribution(p[3]) for p in params}
        values = [_VALUE_OF(v[2], _VALUE_TYPE[v[1]]) for v in kids["values"].get(tid, [])]
        return FrozenTrial(
            number=number, state=TrialState[_name(state)], value=None, values=values or None,
            datetime_start=self._when(start), datetime_complete=self._when(complete),
            params={p[1]: dists[p[1]].to_external_repr(p[2]) for p in params},
            distributions=dists,
            user_attrs={a[1]: json.loads(a[3]) for a in kids["user"].get(tid, [])},
            system_attrs={a[1]: json.loads(a[3]) for a in kids["system"].get(tid, [])},
            intermediate_values={v[4]: _INTER_OF(v[2], _INTER_TYPE[v[1]])
                                 for v in kids["inter"].get(tid, [])},
            trial_id=tid,
        )


class _Cursor:
    """A driver cursor that takes ``?`` placeholders whatever the driver's style."""

    def __init__(self, cur: Any, translate: Any, returning: bool = True) -> None:
        self._cur, self._translate, self._returning = cur, translate, returning

    def run(self, sql: str, *args: Any) -> int:
        self._cur.execute(self._translate(sql), args)
        return self._cur.rowcount

    def insert(self, sql: str, *args: Any) -> int:
        """Run an INSERT into ``trials``; the new trial_id."""
        if not self._returning:  # SQLite before 3.35
            self._cur.execute(self._translate(sql), args)
            return self._cur.lastrowid
        self._cur.execute(self._translate(sql + " RETURNING trial_id"), args)
        return self._cur.fetchone()[0]

    def one(self, sql: str, *args: Any) -> tuple | None:
        self._cur.execute(self._translate(sql), args)
        return self._cur.fetchone()

    def all(self, sql: str, *args: Any) -> list[tuple]:
        self._cur.execute(self._translate(sql), args)
        return self._cur.fetchall()


_DISTRIBUTIONS: dict[str, distributions.BaseDistribution] = {}


def _distribution(text: str) -> distributions.BaseDistribution:
    """Distributions parsed once per process: a study has a handful of distinct ones."""
    found = _DISTRIBUTIONS.get(text)
    if found is None:
        found = _DISTRIBUTIONS[text] = distributions.json_to_distribution(text)
    return found


def _name(value: Any) -> str:
    """An enum column as its name (SQLite gives text; other drivers may give an enum)."""
    return value.name if hasattr(value, "name") else str(value)
