"""What a fork server imports before the first trial: a name it cannot import is skipped
silently (by multiprocessing), so a misspelt one would only show up as a slower start."""

from __future__ import annotations

import importlib.util

import pytest

from hparam_search.launch.worker import PRELOAD, preload_for


@pytest.mark.parametrize("url, driver", [
    ("sqlite:////tmp/x.db", "sqlalchemy.dialects.sqlite.pysqlite"),
    ("postgresql+psycopg://u@h/db", "psycopg"),
])
def test_each_fast_path_preloads_its_driver(url: str, driver: str) -> None:
    names = preload_for(url)
    assert names[:len(PRELOAD)] == list(PRELOAD)
    assert driver in names
    for name in names:
        if name.split(".")[0] == "psycopg" and importlib.util.find_spec("psycopg") is None:
            continue  # the postgres extra is optional
        assert importlib.util.find_spec(name) is not None, name


def test_other_storages_preload_no_driver() -> None:
    assert preload_for("journal:/tmp/x.log") == list(PRELOAD)
    assert preload_for("mysql+pymysql://u@h/db") == list(PRELOAD)
