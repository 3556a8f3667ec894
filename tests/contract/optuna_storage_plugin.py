"""Pytest plugin that points Optuna's own storage tests at hparam_search's storages.

Loaded (``-p optuna_storage_plugin``) into a pytest run over the ``tests/storages_tests`` of
Optuna's sdist. Optuna's suite picks storages by name from ``optuna.testing.storages``: its
tests are parametrized over ``STORAGE_MODES`` and ``StorageSupplier(mode)`` builds each one.
This plugin replaces those modes with ours, teaches ``StorageSupplier`` to build them, and
deselects every test that does not run on one of them (those test Optuna's own storages).

Environment (set by test_optuna_storage_suite.py):
  HPARAM_SEARCH_CONTRACT_KIND      "sqlite" or "postgresql"
  HPARAM_SEARCH_CONTRACT_PG_URL    postgresql kind: a server URL whose user may CREATE DATABASE
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import types
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest

KIND = os.environ.get("HPARAM_SEARCH_CONTRACT_KIND", "sqlite")
# Like Optuna's "sqlite" / "cached_sqlite": the launcher's study sees its storage through
# _CachedStorage (optuna.storages.get_storage wraps every RDBStorage), other callers see it bare.
MODES = [f"hparam_search_{KIND}", f"cached_hparam_search_{KIND}"]


def build_storage(url: str) -> Any:
    """Our storage for ``url``, built exactly as the launcher builds it: the public
    ``hparam_search.open_storage`` (which picks the PostgreSQL driver, as for a ``storage:``
    setting)."""
    import hparam_search

    return hparam_search.open_storage(url)


def _fresh_sqlite() -> tuple[str, Callable[[], None]]:
    folder = tempfile.mkdtemp(prefix="hparam-search-contract-")
    return f"sqlite:///{folder}/study.db", lambda: shutil.rmtree(folder, ignore_errors=True)


def _fresh_postgresql() -> tuple[str, Callable[[], None]]:
    """A new, empty database on the server, dropped afterwards: each test starts clean."""
    import sqlalchemy

    from hparam_search.storage import resolve_storage

    server = sqlalchemy.make_url(resolve_storage(os.environ["HPARAM_SEARCH_CONTRACT_PG_URL"],
                                                 Path.cwd()))
    name = f"hs_contract_{uuid.uuid4().hex}"
    admin = sqlalchemy.create_engine(server, isolation_level="AUTOCOMMIT",
                                     poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        # FORCE: a test may leave connections open (e.g. the engine of an unpickled copy).
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    url = server.set(drivername="postgresql", database=name)
    return url.render_as_string(hide_password=False), drop


FRESH_DATABASE: dict[str, Callable[[], tuple[str, Callable[[], None]]]] = {
    "sqlite": _fresh_sqlite,
    "postgresql": _fresh_postgresql,
}

if importlib.util.find_spec("fakeredis") is None:
    # optuna.testing.storages imports fakeredis at the top, but only its redis mode (not run
    # here) uses it; it is in Optuna's test extras, not ours.
    _stub = types.ModuleType("fakeredis")

    def _no_fakeredis(*_args: Any, **_kwargs: Any) -> Any:
        raise ModuleNotFoundError("fakeredis is not installed")

    _stub.FakeStrictRedis = _no_fakeredis  # type: ignore[attr-defined]
    sys.modules["fakeredis"] = _stub

from optuna.testing import storages as optuna_testing  # noqa: E402

# In place, before any test module runs `from optuna.testing.storages import STORAGE_MODES`.
optuna_testing.STORAGE_MODES[:] = MODES
# Optuna's heartbeat tests pass their own heartbeat options to the constructor; the launcher's
# storage takes none (open_storage decides them), so those tests do not apply.
optuna_testing.STORAGE_MODES_HEARTBEAT[:] = []

_optuna_enter = optuna_testing.StorageSupplier.__enter__
_optuna_exit = optuna_testing.StorageSupplier.__exit__
_built = 0


def _enter(self: optuna_testing.StorageSupplier) -> Any:
    global _built
    if self.storage_specifier.startswith("grpc") and importlib.util.find_spec("grpc") is None:
        pytest.skip("grpcio is not installed")
    if self.storage_specifier not in MODES:
        return _optuna_enter(self)
    if self.extra_args:
        pytest.skip(f"the launcher builds its storage without options ({self.extra_args})")
    url, cleanup = FRESH_DATABASE[KIND]()
    try:
        backend = build_storage(url)
    except BaseException:
        cleanup()  # __exit__ does not run when __enter__ raises
        raise
    self._hparam_search_cleanup = cleanup
    _built += 1
    cached = self.storage_specifier.startswith("cached_")
    self.storage = optuna.storages._CachedStorage(backend) if cached else backend
    return self.storage


def _exit(self: optuna_testing.StorageSupplier, *exc_info: Any) -> None:
    try:
        _optuna_exit(self, *exc_info)  # disposes the engine of an RDBStorage, cached or not
    finally:
        cleanup = getattr(self, "_hparam_search_cleanup", None)
        if cleanup is not None:
            cleanup()


optuna_testing.StorageSupplier.__enter__ = _enter  # type: ignore[method-assign]
optuna_testing.StorageSupplier.__exit__ = _exit  # type: ignore[method-assign]


def _runs_on_our_storage(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    return callspec is not None and any(
        isinstance(value, str) and value in MODES for value in callspec.params.values())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours, others = [], []
    for item in items:
        (ours if _runs_on_our_storage(item) else others).append(item)
    if others:
        config.hook.pytest_deselected(items=others)
    items[:] = ours


def pytest_terminal_summary(terminalreporter: Any) -> None:
    # Read by the calling test: proof that the tests really ran on storages built here.
    terminalreporter.write_line(f"hparam_search storages built: {_built} ({KIND})")
