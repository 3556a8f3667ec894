"""The way into Optuna's own RDB storage code, for what only its ORM does (deleting and listing
studies, migrations, other databases): SQLAlchemy's engine, its sessions and Optuna's
schema-version manager, made the first time that code needs them. A process that only runs the
fast path never imports SQLAlchemy (a fifth of a second at every start). Mixed into the fast
storage, before ``RDBStorage``, whose methods these calls reach."""

from __future__ import annotations

import threading
from typing import Any


class OrmPath:
    """Mixed into the fast storage, which supplies ``url``, ``engine_kwargs``, ``_lock``,
    ``_engine``, ``_scoped_session``, ``_version_manager_instance`` and what it knows of a
    study (``_tallies``, ``_settled``, ``_checked``), forgotten when the study is deleted."""

    @property
    def engine(self) -> Any:
        """SQLAlchemy's engine, made when first needed: by Optuna's own code (study deletion,
        listing studies, migrations) and by the connections of ``_links``."""
        with self._lock:
            if self._engine is None:
                self._engine = self._make_engine()
            return self._engine

    def _make_engine(self) -> Any:
        import sqlalchemy

        return sqlalchemy.engine.create_engine(self.url, **self.engine_kwargs)

    @property
    def scoped_session(self) -> Any:
        with self._lock:
            if self._scoped_session is None:
                import sqlalchemy.orm

                self._scoped_session = sqlalchemy.orm.scoped_session(
                    sqlalchemy.orm.sessionmaker(bind=self.engine))
            return self._scoped_session

    def remove_session(self) -> None:
        if self._scoped_session is not None:
            self._scoped_session.remove()

    def close(self) -> None:
        """Close this process's connections (a later use opens new ones)."""
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()

    @property
    def _version_manager(self) -> Any:
        """Optuna's schema-version manager, made only for the rare calls that need it."""
        if self._version_manager_instance is None:
            from optuna.storages._rdb.storage import _VersionManager

            self._version_manager_instance = _VersionManager(self.url, self.engine,
                                                             self.scoped_session)
        return self._version_manager_instance

    _UNPICKLED = ("_engine", "_scoped_session", "_version_manager_instance", "_lock")

    def __getstate__(self) -> dict[Any, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in self._UNPICKLED}

    def __setstate__(self, state: dict[Any, Any]) -> None:
        self.__dict__.update(state)
        self._engine = self._scoped_session = self._version_manager_instance = None
        self._lock = threading.RLock()

    # -- studies: through Optuna (rare) ------------------------------------------------------
    def delete_study(self, study_id: int) -> None:
        with self._lock:
            super().delete_study(study_id)
            # A new study may be given this id: nothing known of the old one may survive.
            self._tallies.pop(study_id, None)
            self._settled.pop(study_id, None)
            self._checked = {c for c in self._checked if c[0] != study_id}

    def get_all_studies(self) -> Any:
        with self._lock:
            return super().get_all_studies()
