"""What a fork server imports before the first trial: a name it cannot import is skipped
silently (by multiprocessing), so a misspelt one would only show up as a slower start."""

from __future__ import annotations

import importlib.util

import pytest

from hparam_search.launch.starting import PRELOAD, preload_for


@pytest.mark.parametrize("url, extra", [
    ("sqlite:////tmp/x.db", []),
    ("journal:/tmp/x.log", []),
    ("postgresql+psycopg://u@h/db", ["sqlalchemy.orm", "hparam_search.storage.postgres",
                                     "psycopg", "sqlalchemy.dialects.postgresql.psycopg"]),
    ("mysql+pymysql://u@h/db", ["sqlalchemy.orm"]),
])
def test_each_storage_preloads_what_it_opens_with(url: str, extra: list[str]) -> None:
    names = preload_for(url)
    assert names == [*PRELOAD, *extra]
    for name in names:
        if name.split(".")[0] == "psycopg" and importlib.util.find_spec("psycopg") is None:
            continue  # the postgres extra is optional
        assert importlib.util.find_spec(name) is not None, name
