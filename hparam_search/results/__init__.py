"""Reading studies for the toolbox: find them, read them with a few queries, tabulate, export
and plot. Plotting and table libraries are imported only by the functions that need them."""

from .artifacts import artifact_store, copy_artifacts, trial_artifacts
from .locate import DEFAULT_DIR, StudyRef, resolve, storage_url_of, study_folder, study_names
from .reader import StudyReader, TrialRecord
from ..storage import TRIAL_DIR_ATTR
from .tables import (EXPORT_FORMATS, LOG_ATTR, best_config, export, format_of,
                     format_table, rows, run_fixed, summary, trial_config, varying_config)

__all__ = [
    "DEFAULT_DIR", "EXPORT_FORMATS", "LOG_ATTR", "TRIAL_DIR_ATTR", "StudyReader", "StudyRef",
    "TrialRecord", "artifact_store", "best_config", "copy_artifacts", "export", "format_of",
    "format_table", "resolve", "rows", "run_fixed", "storage_url_of", "study_folder",
    "study_names", "summary", "trial_artifacts", "trial_config", "varying_config",
]
