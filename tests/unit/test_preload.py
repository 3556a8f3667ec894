"""What a fork server imports before the first trial: a name it cannot import is skipped
silently (by multiprocessing), so a misspelt one would only show up as a slower start."""

from __future__ import annotations

import importlib.util

import pytest

from hparam_search.launch.fork_server import PRELOAD, preload_for


@pytest.mark.parametrize("url, extra", [
    ("sqlite:////tmp/x.db", []),
    ("journal:/tmp/x.log", []),
    ("postgresql+psycopg://u@h/db", ["hparam_search.storage.postgres", "psycopg"]),
    ("mysql+pymysql://u@h/db", ["sqlalchemy.orm"]),
])
def test_each_storage_preloads_what_it_opens_with(url: str, extra: list[str]) -> None:
    names = preload_for(url)
    assert names == [*PRELOAD, *extra]
    for name in names:
        if name.split(".")[0] == "psycopg" and importlib.util.find_spec("psycopg") is None:
            continue  # the postgres extra is optional
        assert importlib.util.find_spec(name) is not None, name


def test_the_package_imports_none_of_the_launcher_s_own_modules() -> None:
    """Every worker imports the package (through the user's script) and the launcher starts its
    fork server before importing the rest: the YAML loader, the console and the launcher come
    only when a search runs."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(root), os.environ.get("PYTHONPATH")) if p))
    code = ("import json, sys, hparam_search, hparam_search.launch.worker; "
            "print(json.dumps(sorted(sys.modules)))")
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                           capture_output=True, text=True).stdout))
    heavy = {"yaml", "rich", "sqlalchemy", "optuna", "hparam_search.config",
             "hparam_search.console", "hparam_search.launch.launcher", "hparam_search.cluster"}
    assert not heavy & loaded, heavy & loaded
