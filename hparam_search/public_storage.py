"""``hparam_search.open_storage``: a study's storage opened exactly as the launcher opens it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import storage as st


def open_storage(url: str) -> Any:
    """The Optuna storage the launcher uses for ``url`` (``sqlite:///PATH``, a database URL,
    a bare ``postgresql://`` URL, or ``journal:PATH``; relative paths are taken from the working
    directory), for ``optuna.load_study(study_name=..., storage=open_storage(url))``. Creates
    Optuna's tables when they are missing.

    Raises:
        HparamSearchError: the storage cannot be opened (no driver, unreachable, not writable).
    """
    return st.open_storage(st.resolve_storage(url, Path.cwd()), create=True)
