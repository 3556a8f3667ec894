"""The SQLite fast path reads and writes exactly what Optuna's own RDBStorage does."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from hparam_search import storage as st
from hparam_search.storage.sqlite import FastSQLiteStorage


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
    return study


@pytest.mark.parametrize("writer_kind", ["fast", "optuna"])
def test_reads_match_optuna_whoever_wrote(tmp_path: Path, writer_kind: str) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    fast = st.open_storage(url, create=True)
    assert isinstance(fast, FastSQLiteStorage)
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


def test_finished_trials_cannot_change_and_distributions_stay_compatible(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    fast = st.open_storage(url, create=True)
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


def test_a_waiting_trial_is_taken_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    fast = st.open_storage(url, create=True)
    study = optuna.create_study(study_name="s", storage=fast)
    study.enqueue_trial({"x": 0.5})
    waiting = fast.get_all_trials(study._study_id, states=(optuna.trial.TrialState.WAITING,))[0]
    second = st.open_storage(url, create=False)
    assert fast.set_trial_state_values(waiting._trial_id, optuna.trial.TrialState.RUNNING)
    assert not second.set_trial_state_values(waiting._trial_id, optuna.trial.TrialState.RUNNING)
