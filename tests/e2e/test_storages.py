"""Other storages: PostgreSQL shared by several launchers, journal files, masked credentials."""

from __future__ import annotations

import datetime
import importlib.util
import json
import uuid
from pathlib import Path

import optuna
import pytest

from hparam_search import storage as st
from hparam_search.errors import HparamSearchError
from tests.conftest import PostgresServer, UserProject, kill_group, wait_for


def test_two_launchers_with_four_workers_each_share_one_postgres_study(
        project: UserProject, postgres_url: str) -> None:
    project.write_config(n_jobs=4, n_trials=40, sleep=0.05, storage=postgres_url, tag="pg")
    first, second = project.popen(), project.popen()
    out1, _ = first.communicate(timeout=300)
    out2, _ = second.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, out1 + out2
    storage = optuna.storages.RDBStorage(st.resolve_storage(postgres_url, project.root))
    try:
        study = optuna.load_study(study_name="exp_pg", storage=storage)
        trials = study.trials
        run = study.user_attrs["hparam_search.run"]
    finally:
        storage.engine.dispose()
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 40 and "RUNNING" not in states
    assert len(trials) == 40
    for out in (out1, out2):
        assert "Warning" not in out and "Traceback" not in out
        assert "s3cret" not in out
        assert "postgres:***@127.0.0.1" in out
    assert "s3cret" not in str(run)


HELD = '''
import time
from pathlib import Path
from hparam_search import hparam_search, current_trial


@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    flags, number = Path(config["flags"]), current_trial().number
    (flags / f"started_{number}").touch()
    deadline = time.monotonic() + 120
    while not (flags / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    (flags / f"done_{number}").touch()
    return config["x"] ** 2


if __name__ == "__main__":
    train()
'''


def test_a_search_rides_out_a_postgresql_restart(project: UserProject,
                                                 postgres_server: PostgresServer,
                                                 tmp_path: Path) -> None:
    flags = tmp_path / "flags"
    flags.mkdir()
    project.write_script(body=HELD)
    project.write_config(n_jobs=2, n_trials=4, storage=postgres_server.url, tag="restart",
                         flags=str(flags))
    search = project.popen()
    try:
        # Both workers inside train: every connection is idle when the server goes down.
        wait_for(lambda: len(list(flags.glob("started_*"))) == 2, timeout=120)
        postgres_server.stop()
        (flags / "release").touch()
        # Both trials have ended while the server is down: their results wait for it.
        wait_for(lambda: len(list(flags.glob("done_*"))) == 2, timeout=60)
        postgres_server.start()
        out, _ = search.communicate(timeout=180)
    finally:
        if not postgres_server.running():
            postgres_server.start()
        kill_group(search)
    assert search.returncode == 0, out
    assert "Traceback" not in out and "error" not in out.lower(), out
    storage = optuna.storages.RDBStorage(st.resolve_storage(postgres_server.url, project.root))
    try:
        trials = optuna.load_study(study_name="exp_restart", storage=storage).trials
    finally:
        storage.engine.dispose()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert all(t.value == t.params["x"] ** 2 for t in trials)


def test_a_plain_postgresql_url_uses_the_installed_driver(tmp_path: Path) -> None:
    url = st.resolve_storage("postgresql://u:p@h/db", tmp_path)
    assert url in ("postgresql+psycopg://u:p@h/db", "postgresql+psycopg2://u:p@h/db")


def test_missing_postgres_driver_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(HparamSearchError) as info:
        st.resolve_storage("postgresql://u:p@h/db", tmp_path)
    assert str(info.value) == ("storage: a postgresql:// storage needs a PostgreSQL driver, and "
                               "none is installed. pip install 'hparam-search[postgres]'")


def test_journal_file_storage(project: UserProject) -> None:
    project.write_config(n_jobs=2, n_trials=7, storage="journal:./journal/study.log")
    result = project.run()
    assert result.returncode == 0, result.stderr
    path = project.root / "journal" / "study.log"
    assert f"optuna-dashboard {path}" in result.stdout
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(path)))
    study = optuna.load_study(study_name="exp_t", storage=storage)
    assert [t.state.name for t in study.trials].count("COMPLETE") == 7
    assert not project.db().exists()


def test_two_launchers_started_together_on_a_new_postgres_database(
        project: UserProject, postgres_url: str) -> None:
    """Both make Optuna's tables (in SQL, taking turns under the schema lock) and the study
    (the unique name decides) on an empty database: one study, exact count, and a schema
    that Optuna's own storage accepts."""
    import psycopg

    server = st.resolve_storage(postgres_url, project.root).replace("postgresql+psycopg://",
                                                                    "postgresql://")
    name = f"hs_race_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = server.rsplit("/", 1)[0] + f"/{name}"
    try:
        project.write_config(n_jobs=2, n_trials=30, storage=url.replace(
            "postgresql://", "postgresql+psycopg://"), tag="race")
        first, second = project.popen(), project.popen()
        out1, _ = first.communicate(timeout=300)
        out2, _ = second.communicate(timeout=300)
        assert first.returncode == 0 and second.returncode == 0, out1 + out2
        storage = optuna.storages.RDBStorage(url.replace("postgresql://",
                                                         "postgresql+psycopg://"))
        try:
            assert storage.get_current_version() == storage.get_head_version()
            assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == \
                ["exp_race"]
            states = [t.state.name for t in optuna.load_study(study_name="exp_race",
                                                              storage=storage).trials]
        finally:
            storage.engine.dispose()
        assert states == ["COMPLETE"] * 30
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_credentials_are_masked_everywhere_they_could_show() -> None:
    assert st.mask_secrets("python s.py --set storage=postgresql://me:pw@db:5432/x") == \
        "python s.py --set storage=postgresql://me:***@db:5432/x"
    assert st.dashboard_command("mysql+pymysql://a:b@h/d") == "optuna-dashboard mysql+pymysql://a:***@h/d"


def test_a_trial_left_running_by_a_dead_host_is_failed_after_its_heartbeat_stops(
        project: UserProject, postgres_url: str) -> None:
    project.write_config(n_jobs=2, n_trials=6, storage=postgres_url, tag="hb")
    url = st.resolve_storage(postgres_url, project.root)
    # Another machine's worker claimed a trial, beat once 10 minutes ago, then vanished.
    storage = optuna.storages.RDBStorage(url)
    try:
        study = optuna.create_study(study_name="exp_hb", storage=storage)
        trial = study.ask()
        trial.suggest_float("x", -5.0, 5.0)
        storage.set_trial_system_attr(trial._trial_id, st.OWNER_ATTR,
                                      {"host": "elsewhere", "pid": 1, "started": 1, "rank": 0})
        import sqlalchemy

        with storage.engine.begin() as conn:
            conn.execute(sqlalchemy.text(
                "INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES (:t, :h)"),
                {"t": trial._trial_id, "h": datetime.datetime.now() - datetime.timedelta(minutes=10)})
    finally:
        storage.engine.dispose()
    result = project.run()
    assert result.returncode == 0, result.stdout + result.stderr
    storage = optuna.storages.RDBStorage(url)
    try:
        trials = optuna.load_study(study_name="exp_hb", storage=storage).trials
    finally:
        storage.engine.dispose()
    assert trials[0].state.name == "FAIL"  # the dead host's trial
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 6 and "RUNNING" not in states


# Each worker notes whether SQLAlchemy was imported when its trial ran, and on PostgreSQL how
# many connections the search held then (a probe's own, told apart by its name); the
# launcher notes it at its exit.
NO_SQLALCHEMY_SCRIPT = """
    import atexit, json, os, sys
    from hparam_search import hparam_search

    @hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
    def train(config):
        report = ["sqlalchemy" in sys.modules, held_connections()]
        with open(f"worker-{os.getpid()}-{config['x']}.json", "w") as f:
            json.dump(report, f)
        return config["x"] ** 2

    def held_connections():
        if not os.environ.get("PROBE_URL"):
            return None
        import psycopg

        with psycopg.connect(os.environ["PROBE_URL"], application_name="probe") as probe:
            return probe.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                 "current_database() AND application_name <> 'probe' AND "
                                 "backend_type = 'client backend'").fetchone()[0]

    def launcher_done():
        with open("launcher.json", "w") as f:
            json.dump("sqlalchemy" in sys.modules, f)

    if __name__ == "__main__":
        atexit.register(launcher_done)
        train()
"""


def _reports(project: UserProject) -> tuple[list[list], bool]:
    """The workers' notes (one per trial) and the launcher's."""
    workers = [json.loads(p.read_text()) for p in project.root.glob("worker-*.json")]
    return workers, json.loads((project.root / "launcher.json").read_text())


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_a_sqlite_search_never_imports_sqlalchemy(project: UserProject, start_method: str
                                                  ) -> None:
    """Its import is a fifth of a second of every start: neither the launcher creating the
    study, nor a worker running trials, nor the summary needs it on SQLite."""
    project.write_script(body=NO_SQLALCHEMY_SCRIPT)
    project.write_config(n_jobs=2, n_trials=4, start_method=start_method)
    result = project.run()
    assert result.returncode == 0, result.stderr
    assert project.states() == {"COMPLETE": 4}
    workers, launcher = _reports(project)
    assert len(workers) == 4 and not any(imported for imported, _ in workers), workers
    assert launcher is False


def test_a_postgresql_search_never_imports_sqlalchemy_and_holds_one_connection_a_process(
        project: UserProject, postgres_url: str) -> None:
    """The launcher (making Optuna's tables and the study) and its workers (running trials) go
    through the driver's own connection, one each: SQLAlchemy would be a fifth of a second of
    every start."""
    project.write_script(body=NO_SQLALCHEMY_SCRIPT)
    project.write_config(n_jobs=2, n_trials=6, storage=postgres_url, tag="nosa")
    url = st.resolve_storage(postgres_url, project.root)
    result = project.run(env={"PROBE_URL": url.replace("postgresql+psycopg://", "postgresql://")})
    assert result.returncode == 0, result.stdout + result.stderr
    workers, launcher = _reports(project)
    assert len(workers) == 6 and not any(imported for imported, _ in workers), workers
    assert launcher is False
    # The launcher and two workers: one connection each.
    assert max(held for _, held in workers) == 3, workers
    storage = optuna.storages.RDBStorage(url)
    try:
        states = [t.state.name for t in optuna.load_study(study_name="exp_nosa",
                                                          storage=storage).trials]
    finally:
        storage.engine.dispose()
    assert states == ["COMPLETE"] * 6


def test_a_trial_longer_than_the_grace_period_keeps_beating_and_is_not_taken_for_lost(
        project: UserProject, postgres_url: str) -> None:
    """Each worker's heartbeat thread serves trial after trial: the long trial must be beaten
    for all along (the other worker checks for stale trials before each claim)."""
    project.write_script(body="""
        import time
        from hparam_search import hparam_search

        @hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
        def train(config):
            time.sleep(4.0 if config["x"] == 0.5 else 0.05)
            return config["x"] ** 2

        if __name__ == "__main__":
            train()
    """)
    project.write_config(n_jobs=2, n_trials=30, enqueue=[{"x": 0.5}], storage=postgres_url,
                         tag="beats")
    result = project.run(env={"HPARAM_SEARCH_HEARTBEAT_GRACE": "1.5"})
    assert result.returncode == 0, result.stdout + result.stderr
    import sqlalchemy

    storage = optuna.storages.RDBStorage(st.resolve_storage(postgres_url, project.root))
    try:
        trials = optuna.load_study(study_name="exp_beats", storage=storage).trials
        with storage.engine.connect() as conn:
            beats = dict(conn.execute(sqlalchemy.text(
                "SELECT trial_id, heartbeat FROM trial_heartbeats")).all())
    finally:
        storage.engine.dispose()
    assert [t.state.name for t in trials].count("COMPLETE") == 30
    long = next(t for t in trials if t.params["x"] == 0.5)
    # Beaten until near its end (beats come every half second).
    assert beats[long._trial_id] >= long.datetime_complete - datetime.timedelta(seconds=1.5)
