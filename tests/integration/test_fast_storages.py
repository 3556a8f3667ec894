"""The fast paths (SQLite and PostgreSQL) read and write exactly what Optuna's own RDBStorage
does, in any time zone; the claim takes trials in the promised order within the budget."""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy

from hparam_search import storage as st
from hparam_search.storage import transactions
from hparam_search.storage.fast import FastStorage
from optuna.exceptions import StorageInternalError
from tests.conftest import PostgresServer

KINDS = ["sqlite", "postgresql"]
# Database storages send heartbeats; this test drives trials by hand, as the workers do.
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed:UserWarning")


@pytest.fixture(params=KINDS)
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind, as the launcher would address it."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 's.db'}"
        return
    server = st.resolve_storage(request.getfixturevalue("postgres_url"), tmp_path)
    with _new_database(server, f"hs_fast_{uuid.uuid4().hex[:12]}") as url:
        yield url


@contextlib.contextmanager
def _new_database(server: str, name: str) -> Iterator[str]:
    """An empty PostgreSQL database named ``name`` on ``server``'s server, dropped after."""
    server_url = sqlalchemy.make_url(server)
    admin = sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT",
                                     poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield server_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["UTC", "Asia/Kolkata"])
def time_zone(request: pytest.FixtureRequest) -> Iterator[str]:
    """Stored times are naive UTC, read back as local time: check it off UTC as well."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = request.param
    time.tzset()
    try:
        yield request.param
    finally:
        if before is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = before
        time.tzset()


def _populate(url: str, writer: optuna.storages.BaseStorage) -> optuna.Study:
    study = optuna.create_study(study_name="s", storage=writer, directions=["minimize", "maximize"])
    study.enqueue_trial({"x": 0.25, "c": "b"})
    for i in range(12):
        trial = study.ask()
        x = trial.suggest_float("x", -1, 1)
        trial.suggest_int("n", 1, 64, log=True)
        trial.suggest_categorical("c", ["a", "b", None])
        trial.set_user_attr("note", {"i": i, "tags": ["p", "q"]})
        trial.storage.set_trial_system_attr(trial._trial_id, "owner", {"pid": i})
        if i % 4 == 0:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif i % 4 == 1:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        elif i % 4 == 2:
            study.tell(trial, [x, math.inf])
        # i % 4 == 3 stays RUNNING
    study.set_user_attr("run", {"id": 1, "tags": ["a"]})
    writer.set_study_system_attr(study._study_id, "runs", [{"id": 0}])
    writer.set_study_system_attr(study._study_id, "runs", [{"id": 0}, {"id": 1}])
    # One objective, infinities among the values: the best trial is Optuna's.
    best = optuna.create_study(study_name="b", storage=writer, direction="maximize")
    for value in [1.5, math.inf, -math.inf, 7.0, math.inf, 3.0]:
        best.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=value))
    return study


@pytest.mark.parametrize("writer_kind", ["fast", "optuna"])
def test_reads_match_optuna_whoever_wrote(fresh_url: str, writer_kind: str,
                                          time_zone: str) -> None:
    url = fresh_url
    fast = st.open_storage(url, create=True)
    assert isinstance(fast, FastStorage)
    plain = optuna.storages.RDBStorage(url)
    _populate(url, fast if writer_kind == "fast" else plain)
    study_id = plain.get_study_id_from_name("s")
    expected = plain.get_all_trials(study_id)
    got = fast.get_all_trials(study_id)
    assert got == expected  # FrozenTrial equality covers every field
    assert [t.datetime_start for t in got] == [t.datetime_start for t in expected]
    for states in [(optuna.trial.TrialState.RUNNING,), (optuna.trial.TrialState.COMPLETE,
                                                        optuna.trial.TrialState.PRUNED)]:
        assert fast.get_all_trials(study_id, states=states) == \
            plain.get_all_trials(study_id, states=states)
    for t in expected:
        assert fast.get_trial(t._trial_id) == plain.get_trial(t._trial_id)
    # The incremental read Optuna's cache makes: new trials plus listed unfinished ones.
    ids = [t._trial_id for t in expected]
    assert fast._get_trials(study_id, None, {ids[3]}, ids[5]) == \
        plain._get_trials(study_id, None, {ids[3]}, ids[5])
    # The study: what this round writes in SQL on SQLite (Optuna's own code on PostgreSQL).
    for sid in (study_id, plain.get_study_id_from_name("b")):
        for read in ("get_study_directions", "get_study_user_attrs", "get_study_system_attrs"):
            assert getattr(fast, read)(sid) == getattr(plain, read)(sid), read
    assert [(s.study_name, s.directions) for s in fast.get_all_studies()] == \
        [(s.study_name, s.directions) for s in plain.get_all_studies()]
    best = plain.get_study_id_from_name("b")
    assert fast.get_best_trial(best) == plain.get_best_trial(best)
    assert fast.get_best_trial(best).number == 1  # the first +inf
    st.close_storage(fast)
    plain.engine.dispose()


def test_finished_trials_cannot_change_and_distributions_stay_compatible(fresh_url: str) -> None:
    fast = st.open_storage(fresh_url, create=True)
    study = optuna.create_study(study_name="s", storage=fast)
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    study.tell(trial, 1.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        fast.set_trial_user_attr(trial._trial_id, "k", 1)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        fast.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.COMPLETE, [2.0])
    other = study.ask()
    with pytest.raises(ValueError):
        other.suggest_categorical("x", ["a", "b"])  # x is a float in this study
    st.close_storage(fast)


def test_batched_writes_land_together_and_read_back_as_optuna_wrote_them(
        fresh_url: str) -> None:
    fast = st.open_storage(fresh_url, create=True)
    plain = optuna.storages.RDBStorage(fresh_url)
    study = optuna.create_study(study_name="s", storage=fast)
    # A parameter this process has not seen yet is checked against the study and written at
    # once (Optuna's cache then knows its kind); later ones wait for the block's end.
    first = study.ask()
    with st.batched_writes(first.storage):
        first.suggest_float("x", -1, 1)
        first.suggest_categorical("c", ["a", "b"])
        assert set(plain.get_trial(first._trial_id).params) == {"x", "c"}
    trial = study.ask()
    tid = trial._trial_id
    with st.batched_writes(trial.storage):
        trial.suggest_float("x", -1, 1)
        trial.suggest_categorical("c", ["a", "b"])
        trial.storage.set_trial_system_attr(tid, "sampler", {"k": 1})
        # Another connection sees nothing yet: the three writes are one transaction to come.
        assert plain.get_trial(tid).params == {}
    seen = plain.get_trial(tid)
    assert set(seen.params) == {"x", "c"} and seen.system_attrs["sampler"] == {"k": 1}
    assert fast.get_trial(tid) == seen
    # A read inside the block sees what the block wrote before it.
    other = study.ask()
    with st.batched_writes(other.storage):
        other.suggest_float("x", -1, 1)
        assert "x" in fast.get_trial(other._trial_id).params
    # Checks still hold, raised where the writes are committed: a parameter of another kind.
    third = study.ask()
    with pytest.raises(ValueError), st.batched_writes(third.storage):
        third.suggest_categorical("x", ["a", "b"])
    assert plain.get_trial(third._trial_id).params == {}
    with pytest.raises(ValueError):  # and the next trial is still held to the study's kind
        study.ask().suggest_categorical("x", ["a", "b"])
    # An error inside the block is the one raised; what the block wrote before it is kept.
    with pytest.raises(RuntimeError), st.batched_writes(third.storage):
        third.suggest_float("x", -1, 1)
        raise RuntimeError("the sampler failed")
    assert plain.get_trial(third._trial_id).params == {"x": fast.get_trial(
        third._trial_id).params["x"]}
    # Another thread's writes (a heartbeat's) go through at once and leave the block's alone.
    fourth = study.ask()
    with st.batched_writes(fourth.storage):
        fourth.suggest_float("x", -1, 1)
        beat = threading.Thread(target=fast.set_trial_user_attr,
                                args=(fourth._trial_id, "beat", 1))
        beat.start()
        beat.join()
        seen = plain.get_trial(fourth._trial_id)
        assert seen.user_attrs == {"beat": 1} and seen.params == {}
    assert "x" in plain.get_trial(fourth._trial_id).params
    study.tell(trial, 1.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError), \
            st.batched_writes(fast):
        fast.set_trial_user_attr(tid, "late", 1)
    st.close_storage(fast)
    plain.engine.dispose()


def test_a_lost_postgresql_connection_is_opened_again_but_never_under_a_lock(
        postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    fast = st.open_storage(st.resolve_storage(postgres_server.url, tmp_path), create=True)
    study = optuna.create_study(study_name=f"lost_{uuid.uuid4().hex[:8]}", storage=fast)
    sid = study._study_id
    try:
        monkeypatch.setattr(transactions, "RECONNECT_S", 1.0)
        postgres_server.stop()
        with pytest.raises(StorageInternalError, match="could not be opened within 1.0 s"):
            fast.get_n_trials(sid)
        # The next call keeps trying while the server comes back.
        monkeypatch.setattr(transactions, "RECONNECT_S", 60.0)
        starter = threading.Thread(target=postgres_server.start)
        starter.start()
        assert fast.get_n_trials(sid) == 0
        starter.join()
        # A session lock lives on its connection: losing it is an error, not a silent new one.
        with pytest.raises(StorageInternalError, match="the lock is gone"), \
                fast.session_lock("lost"):
            postgres_server.stop()
            postgres_server.start()
            fast.get_n_trials(sid)
        assert fast.get_n_trials(sid) == 0
        with fast.session_lock("lost"):
            assert fast.get_n_trials(sid) == 0
    finally:
        if not postgres_server.running():
            postgres_server.start()
        st.close_storage(fast)


def test_a_waiting_trial_is_taken_once(fresh_url: str) -> None:
    url = fresh_url
    fast = st.open_storage(url, create=True)
    study = optuna.create_study(study_name="s", storage=fast)
    study.enqueue_trial({"x": 0.5})
    waiting = fast.get_all_trials(study._study_id, states=(optuna.trial.TrialState.WAITING,))[0]
    second = st.open_storage(url, create=False)
    assert fast.set_trial_state_values(waiting._trial_id, optuna.trial.TrialState.RUNNING)
    assert not second.set_trial_state_values(waiting._trial_id, optuna.trial.TrialState.RUNNING)
    st.close_storage(fast)
    st.close_storage(second)


def test_claim_takes_a_retry_then_a_waiting_trial_then_a_new_one(fresh_url: str) -> None:
    fast = st.open_storage(fresh_url, create=True)
    study = optuna.create_study(study_name="s", storage=fast)
    interrupted = study.ask()
    interrupted.suggest_float("x", 0, 1)
    interrupted.report(0.5, 0)
    assert st.fail_trial(fast, interrupted._trial_id, "its worker process was killed")
    study.enqueue_trial({"x": 0.25})
    owner = {st.OWNER_ATTR: {"host": "h", "pid": 1, "started": None, "rank": 0}}
    files = lambda number, retried: {"trial_dir": f"/runs/{number}"}  # noqa: E731

    retry = fast.claim(study, 10, owner, retries=2, user_attrs=files)
    again = fast.get_trial(retry.trial_id)
    assert retry.retried.number == interrupted.number
    assert again.params == {"x": interrupted.params["x"]}
    assert again.system_attrs["failed_trial"] == 0 and again.system_attrs["retry_history"] == [0]
    assert again.intermediate_values == {0: 0.5}
    assert again.system_attrs[st.OWNER_ATTR] == owner[st.OWNER_ATTR]
    waiting = fast.get_trial(fast.claim(study, 10, owner, retries=2, user_attrs=files).trial_id)
    assert waiting.system_attrs["fixed_params"] == {"x": 0.25}
    assert waiting.state == optuna.trial.TrialState.RUNNING
    assert waiting.user_attrs["trial_dir"] == f"/runs/{waiting.number}"
    new = fast.get_trial(fast.claim(study, 10, owner, retries=2, user_attrs=files).trial_id)
    assert new.number == 3 and new.params == {}
    assert fast.claim(study, 3, owner, retries=2) is None  # 3 running: the budget is spent
    # Optuna reads the same study back, and its cache knows every claimed trial.
    plain = optuna.storages.RDBStorage(fresh_url)
    assert plain.get_all_trials(study._study_id) == fast.get_all_trials(study._study_id)
    assert [t.number for t in study.get_trials()] == [0, 1, 2, 3]
    # The first read of a new claimed trial is the claim's own copy: what Optuna reads back.
    assert new == plain.get_trial(new._trial_id) == fast.get_trial(new._trial_id)
    plain.engine.dispose()
    st.close_storage(fast)


def test_one_heartbeat_thread_beats_for_the_running_trial_only(
        postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    """A worker's heartbeat thread serves trial after trial: beats for the trial that runs,
    none once ``running()`` has returned (a beat written later would keep a trial whose
    worker moved on looking alive)."""
    monkeypatch.setenv("HPARAM_SEARCH_HEARTBEAT_GRACE", "1")  # a beat every third of a second
    fast = st.open_storage(st.resolve_storage(postgres_server.url, tmp_path), create=True)
    study = optuna.create_study(study_name=f"beats_{uuid.uuid4().hex[:8]}", storage=fast)
    owner = {st.OWNER_ATTR: {"host": "h", "pid": 1, "started": None, "rank": 0}}

    def last_beat(trial_id: int) -> Any:
        with fast._read_cursor() as cur:
            return cur.one("SELECT heartbeat FROM trial_heartbeats WHERE trial_id = ?",
                           trial_id)[0]

    beats = st.Heartbeat(fast)
    try:
        for _ in range(2):  # the same thread, trial after trial
            trial_id = fast.claim(study, 10, owner).trial_id
            claimed = last_beat(trial_id)  # the claim's own beat
            with beats.running(trial_id):
                deadline = time.monotonic() + 10
                while last_beat(trial_id) == claimed:  # the thread's first beat
                    assert time.monotonic() < deadline, "no beat while the trial ran"
                    time.sleep(0.05)
            ended = last_beat(trial_id)
            time.sleep(1.0)  # three intervals: a beat would have come by now
            assert last_beat(trial_id) == ended
    finally:
        st.close_storage(fast)


def test_a_postgresql_database_that_cannot_be_opened_is_a_clear_error(
        postgres_server: PostgresServer, tmp_path: Path) -> None:
    """The driver's own words, in the one-paragraph error, as when SQLAlchemy reported them."""
    from hparam_search.errors import HparamSearchError

    url = st.resolve_storage(postgres_server.url, tmp_path).rsplit("/", 1)[0] + "/no_such_db"
    with pytest.raises(HparamSearchError, match='cannot open the study storage: .*"no_such_db" '
                                                'does not exist'):
        st.open_storage(url, create=True)
    assert st.is_storage_error(_driver_error(url))


def _driver_error(url: str) -> BaseException:
    from hparam_search.storage.postgres import FastPostgresStorage

    try:
        FastPostgresStorage(url).get_study_id_from_name("x")
    except Exception as exc:  # noqa: BLE001 - the error itself is the result
        return exc
    raise AssertionError("no error")


def test_a_new_database_is_at_optunas_newest_schema_and_an_old_one_is_refused(
        fresh_url: str) -> None:
    fast = st.open_storage(fresh_url, create=True)
    st.close_storage(fast)
    plain = optuna.storages.RDBStorage(fresh_url)  # checks the schema itself
    assert plain.get_current_version() == plain.get_head_version()
    with plain.engine.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE alembic_version SET version_num = 'v3.0.0.d'"))
    plain.engine.dispose()
    with pytest.raises(Exception) as caught:
        st.open_storage(fresh_url, create=True)
    assert "optuna storage upgrade" in str(caught.value)


def _schema(path: Path) -> list[tuple]:
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as conn:
        return [*conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master "
                              "ORDER BY type, name"),
                *conn.execute("SELECT version_info_id, schema_version, library_version "
                              "FROM version_info"),
                *conn.execute("SELECT version_num FROM alembic_version")]


def test_a_new_sqlite_database_gets_exactly_the_tables_optuna_makes(tmp_path: Path) -> None:
    """optuna_tables.py holds Optuna's tables as SQL, so that a new study needs no SQLAlchemy:
    the file must be the one Optuna's own storage makes, down to the statements' text."""
    from hparam_search.storage import optuna_tables, schema

    if schema.head_revision() != optuna_tables.REVISION:
        pytest.skip("this Optuna has another schema: its models make the tables (tested below)")
    theirs, ours = tmp_path / "optuna.db", tmp_path / "ours.db"
    optuna.storages.RDBStorage(f"sqlite:///{theirs}").engine.dispose()
    st.close_storage(st.open_storage(f"sqlite:///{ours}", create=True))
    assert _schema(ours) == _schema(theirs)
    assert len(_schema(ours)) > len(optuna_tables.STATEMENTS)


@pytest.fixture()
def second_url(fresh_url: str) -> Iterator[str]:
    """Another empty PostgreSQL database beside ``fresh_url``."""
    with _new_database(fresh_url, f"{sqlalchemy.make_url(fresh_url).database}_2") as url:
        yield url


_PG_CATALOG = (
    "SELECT table_name, column_name, ordinal_position, data_type, udt_name, is_nullable, "
    "column_default, character_maximum_length, numeric_precision FROM information_schema.columns "
    "WHERE table_schema = current_schema() ORDER BY 1, 3",
    "SELECT t.relname, c.conname, c.contype, pg_get_constraintdef(c.oid) FROM pg_constraint c "
    "JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
    "WHERE n.nspname = current_schema() ORDER BY 1, 2",
    "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
    "ORDER BY 1, 2",
    "SELECT t.typname, e.enumsortorder, e.enumlabel FROM pg_enum e JOIN pg_type t "
    "ON t.oid = e.enumtypid ORDER BY 1, 2",
    "SELECT sequencename, data_type, increment_by FROM pg_sequences "
    "WHERE schemaname = current_schema() ORDER BY 1",
    "SELECT version_info_id, schema_version, library_version FROM version_info",
    "SELECT version_num FROM alembic_version",
)


@pytest.mark.parametrize("fresh_url", ["postgresql"], indirect=True)
def test_a_new_postgresql_database_gets_exactly_the_tables_optuna_makes(
        fresh_url: str, second_url: str) -> None:
    """The same on PostgreSQL, compared in its catalog: columns and their types, constraints,
    indexes, the enum types and their labels, sequences, the version rows."""
    from hparam_search.storage import optuna_tables, schema

    if schema.head_revision() != optuna_tables.REVISION:
        pytest.skip("this Optuna has another schema: its models make the tables")
    optuna.storages.RDBStorage(fresh_url).engine.dispose()
    ours = st.open_storage(second_url, create=True)
    assert ours._engine is None  # made without SQLAlchemy
    st.close_storage(ours)
    catalogs = []
    for url in (fresh_url, second_url):
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as conn:
            catalogs.append([[tuple(r) for r in conn.execute(sqlalchemy.text(q))]
                             for q in _PG_CATALOG])
        engine.dispose()
    assert catalogs[1] == catalogs[0]
    assert len(catalogs[0][0]) > 40 and len(catalogs[0][3]) == 15


def test_another_optuna_schema_makes_its_tables_through_optuna(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hparam_search.storage import optuna_tables

    monkeypatch.setattr(optuna_tables, "REVISION", "some-other-revision")
    url = f"sqlite:///{tmp_path / 'other.db'}"
    storage = st.open_storage(url, create=True)
    try:
        assert storage._engine is not None  # Optuna's models made them, through SQLAlchemy
        optuna.create_study(study_name="s", storage=storage).optimize(
            lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    finally:
        st.close_storage(storage)
    assert _trials_through_optuna(url, "s") == 2


def test_opening_a_ready_sqlite_study_only_reads(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A launcher starting while another process writes must not queue behind it (nor fail
    when the write outlasts the busy timeout) just to check the schema."""
    import sqlite3

    from hparam_search.storage import connect

    url = f"sqlite:///{tmp_path / 'ready.db'}"
    st.close_storage(st.open_storage(url, create=True))
    monkeypatch.setattr(connect, "SQLITE_BUSY_TIMEOUT_S", 0.2)
    with contextlib.closing(sqlite3.connect(tmp_path / "ready.db")) as writer:
        writer.execute("BEGIN IMMEDIATE")
        storage = st.open_storage(url, create=True)
        st.close_storage(storage)
        writer.rollback()


def test_a_locked_new_database_is_a_clear_error(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    from hparam_search.errors import HparamSearchError
    from hparam_search.storage import connect

    path = tmp_path / "new.db"
    monkeypatch.setattr(connect, "SQLITE_BUSY_TIMEOUT_S", 0.2)
    with contextlib.closing(sqlite3.connect(path)) as writer:
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("CREATE TABLE other (x INTEGER)")
        with pytest.raises(HparamSearchError, match="cannot open the study storage"):
            st.open_storage(f"sqlite:///{path}", create=True)
        writer.rollback()


def test_fast_path_and_optuna_open_the_same_file_for_any_sqlite_url(tmp_path: Path) -> None:
    """SQLAlchemy decodes %-escapes in a URL's path: such URLs go through it for every use."""
    (tmp_path / "a b").mkdir()
    url = f"sqlite:///{tmp_path}/a%20b/s.db"
    storage = st.open_storage(url, create=True)
    try:
        optuna.create_study(study_name="s", storage=storage).optimize(
            lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    finally:
        st.close_storage(storage)
    assert _trials_through_optuna(url, "s") == 2


# Python 3.12+ warns about fork() when another test left a thread running; none runs here.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_never_uses_its_parents_sqlite_connections(tmp_path: Path) -> None:
    from hparam_search.storage import driver_pool

    url = f"sqlite:///{tmp_path / 'f.db'}"
    storage = st.open_storage(url, create=True)
    optuna.create_study(study_name="f", storage=storage).optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    parents = list(storage._direct._idle)
    assert parents
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its pool starts empty, and a trial opens its own connection
        ok = not storage._direct._idle and all(c in driver_pool._INHERITED for c in parents)
        optuna.load_study(study_name="f", storage=storage).optimize(
            lambda t: t.suggest_float("x", 0, 1), n_trials=1)
        ok = ok and all(c not in parents for c in storage._direct._idle)
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    try:
        assert storage._direct._idle == parents
        assert len(optuna.load_study(study_name="f", storage=storage).trials) == 3
    finally:
        st.close_storage(storage)


def test_a_sqlite_storage_nobody_holds_closes_its_connections(tmp_path: Path) -> None:
    """As SQLAlchemy's pool did: an unclosed connection is a ResourceWarning on Python 3.13."""
    import gc
    import sqlite3

    storage = st.open_storage(f"sqlite:///{tmp_path / 'g.db'}", create=True)
    optuna.create_study(study_name="g", storage=storage)
    connections = list(storage._direct._idle)
    assert connections
    del storage
    gc.collect()
    for conn in connections:
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            conn.execute("SELECT 1")


def _trials_through_optuna(url: str, name: str) -> int:
    """How many trials Optuna's own storage reads at ``url`` (its connections closed after)."""
    storage = optuna.storages.RDBStorage(url)
    try:
        return len(optuna.load_study(study_name=name, storage=storage).trials)
    finally:
        storage.engine.dispose()


class _Stop(BaseException):
    """What a stop raises in the launcher's main thread (KeyboardInterrupt, Terminated)."""


def test_a_stop_that_lands_inside_a_postgresql_statement_leaves_the_storage_usable(
        postgres_server: PostgresServer, tmp_path: Path) -> None:
    """Ctrl-C or SIGTERM raises in the launcher wherever it is, also in the middle of a
    statement the server has not answered yet: the stop itself must come out (not the
    driver's "another command is already in progress"), and the next call must work."""
    import signal

    import psycopg

    fast = st.open_storage(st.resolve_storage(postgres_server.url, tmp_path), create=True)
    study = optuna.create_study(study_name=f"stop_{uuid.uuid4().hex[:8]}", storage=fast)
    tid = study.ask()._trial_id
    holder = psycopg.connect(postgres_server.url)
    previous = signal.getsignal(signal.SIGALRM)

    def stop(*_: object) -> None:
        raise _Stop

    try:
        # Another session holds the trial's row: the write waits for the server's answer.
        holder.execute("SELECT 1 FROM trials WHERE trial_id = %s FOR UPDATE", (tid,))
        signal.signal(signal.SIGALRM, stop)
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(_Stop):
            fast.set_trial_user_attr(tid, "k", 1)
        holder.rollback()
        fast.set_trial_user_attr(tid, "k", 2)
        assert fast.get_trial(tid).user_attrs == {"k": 2}
        assert study.trials[0].user_attrs == {"k": 2}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        holder.close()
        st.close_storage(fast)
