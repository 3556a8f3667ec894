"""hparam_search: turn ``train(config) -> float`` into a parallel, resumable Optuna search."""

from ._trial import TrialInfo, current_trial
from .decorator import hparam_search
from .errors import HparamSearchError

__version__ = "0.1.0"

__all__ = ["HparamSearchError", "TrialInfo", "current_trial", "hparam_search", "__version__"]
