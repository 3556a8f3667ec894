"""hparam_search: turn ``train(config) -> float`` into a parallel, resumable Optuna search."""

from typing import Any

from ._trial import TrialInfo, current_trial, report, should_prune
from .decorator import hparam_search
from .errors import HparamSearchError

__version__ = "0.1.0"

# Users import the decorator under the package's name (`from hparam_search import
# hparam_search`), so the in-train helpers are reachable from it as well.
hparam_search.report = report  # type: ignore[attr-defined]
hparam_search.should_prune = should_prune  # type: ignore[attr-defined]
hparam_search.current_trial = current_trial  # type: ignore[attr-defined]


def __getattr__(name: str) -> Any:
    # optuna.TrialPruned, imported on first use: the launcher starts workers before it imports
    # Optuna, so that both happen at once.
    if name == "TrialPruned":
        from optuna import TrialPruned

        return TrialPruned
    raise AttributeError(f"module 'hparam_search' has no attribute {name!r}")

__all__ = ["HparamSearchError", "TrialInfo", "TrialPruned", "current_trial", "hparam_search",
           "report", "should_prune", "__version__"]
