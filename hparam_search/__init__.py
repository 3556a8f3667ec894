"""hparam_search: turn ``train(config) -> float`` into a parallel, resumable Optuna search."""

from typing import Any

from .decorator import hparam_search
from .errors import HparamSearchError
from .launch.trial import (TrialInfo, current_trial, report, save_artifact, should_prune,
                           stopping)
from .public_storage import open_storage

__version__ = "0.1.0"

# Users import the decorator under the package's name (`from hparam_search import
# hparam_search`), so the in-train helpers are reachable from it as well.
for _helper in (report, should_prune, current_trial, stopping, save_artifact):
    setattr(hparam_search, _helper.__name__, _helper)


def __getattr__(name: str) -> Any:
    # optuna.TrialPruned, imported on first use: the launcher starts workers before it imports
    # Optuna, so that both happen at once.
    if name == "TrialPruned":
        from optuna import TrialPruned

        return TrialPruned
    raise AttributeError(f"module 'hparam_search' has no attribute {name!r}")


__all__ = ["HparamSearchError", "TrialInfo", "TrialPruned", "current_trial", "hparam_search",
           "open_storage", "report", "save_artifact", "should_prune", "stopping",
           "__version__"]
