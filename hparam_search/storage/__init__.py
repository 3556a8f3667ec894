"""The study storage: URLs, opening, the study and its runs, the trial budget, recovery of
abandoned trials, and the SQLite fast path. The only package that knows Optuna's tables."""

from .attrs import (FAIL_REASON_ATTR, OWNER_ATTR, RUN_ATTR, RUN_ATTR_OF_TRIAL, RUNS_ATTR,
                    study_id, trial_id)
from .budget import budget_lock
from .counts import (claimed, count_pruned_kinds, finished, format_counts, pruned_kind,
                     pruned_kinds, state_counts)
from .connect import close_storage, failure_message, is_storage_error, open_storage
from .recovery import Owner, fail_stale, fail_trial, fail_trials_of, heartbeat
from .study import (create_or_load_study, enqueue_once, record_run, run_of_trial, runs_of,
                    runs_of_study, stored_distributions)
from .urls import (JOURNAL_PREFIX, dashboard_command, describe, is_database, journal_path, mask_secrets,
                   resolve_storage, sqlite_path, sqlite_url)

__all__ = [
    "FAIL_REASON_ATTR", "JOURNAL_PREFIX", "OWNER_ATTR", "RUN_ATTR", "RUN_ATTR_OF_TRIAL", "RUNS_ATTR", "Owner",
    "budget_lock", "claimed", "count_pruned_kinds", "format_counts", "pruned_kind",
    "pruned_kinds", "close_storage", "create_or_load_study", "dashboard_command",
    "describe", "enqueue_once", "failure_message", "is_storage_error", "fail_stale", "fail_trial", "fail_trials_of", "finished",
    "heartbeat", "is_database", "journal_path", "mask_secrets", "open_storage", "record_run",
    "resolve_storage", "run_of_trial", "runs_of", "runs_of_study", "sqlite_path", "sqlite_url", "state_counts", "stored_distributions",
    "study_id", "trial_id",
]
