"""The study storage: URLs, opening, the study and its runs, the trial budget, recovery of
abandoned trials, retries, and the fast path for SQLite and PostgreSQL (fast.py, claim.py,
trial_reads.py, transactions.py, sql.py, driver_pool.py; Optuna's tables in optuna_tables.py,
Optuna's own code reached through orm.py). The package that writes Optuna's tables
(results/reader.py only reads them)."""

from .attrs import (FAIL_REASON_ATTR, OWNER_ATTR, RUN_ATTR, RUN_ATTR_OF_TRIAL, RUNS_ATTR,
                    batched_writes, frozen_of, replace_intermediate, set_user_attrs, study_id,
                    trial_id)
from .budget import budget_lock
from .connect import close_storage, failure_message, is_storage_error, open_storage
from .counts import (STATES, claimed, count_pruned_kinds, finished, format_counts,
                     pruned_kind, pruned_kinds, state_counts)
from .recovery import Heartbeat, Owner, fail_stale, fail_trial, fail_trials_of
from .retries import (FAILED_TRIAL_ATTR, NO_RETRY_ATTR, RETRY_HISTORY_ATTR, TRIAL_DIR_ATTR,
                      RetryPlanner, attempt_of, optuna_trial, retry_of)
from .study import (create_or_load_study, enqueue_once, record_run, run_of_trial, runs_of,
                    runs_of_study, stored_distributions)
from .urls import (JOURNAL_PREFIX, dashboard_command, describe, is_database, journal_path,
                   mask_secrets, resolve_storage, sqlite_path, sqlite_url)

__all__ = [
    "FAILED_TRIAL_ATTR", "FAIL_REASON_ATTR", "Heartbeat", "JOURNAL_PREFIX", "NO_RETRY_ATTR",
    "OWNER_ATTR", "RETRY_HISTORY_ATTR", "RUNS_ATTR", "RUN_ATTR", "RUN_ATTR_OF_TRIAL", "STATES",
    "TRIAL_DIR_ATTR", "Owner", "RetryPlanner", "attempt_of", "batched_writes", "budget_lock",
    "claimed", "close_storage", "count_pruned_kinds", "create_or_load_study", "dashboard_command",
    "describe", "enqueue_once", "fail_stale", "fail_trial", "fail_trials_of", "failure_message",
    "finished", "format_counts", "frozen_of", "is_database", "is_storage_error", "journal_path",
    "mask_secrets", "open_storage", "optuna_trial", "pruned_kind", "pruned_kinds", "record_run",
    "replace_intermediate", "resolve_storage", "retry_of", "run_of_trial", "runs_of",
    "runs_of_study", "set_user_attrs", "sqlite_path", "sqlite_url", "state_counts",
    "stored_distributions", "study_id", "trial_id",
]
