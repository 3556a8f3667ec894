"""What a run meets in the stored study before it starts: a search space the stored trials
cannot take (an error), a config that differs from the previous run (a notice), and how many
trials are left. Shared by the launcher and ``--dry-run``."""

from __future__ import annotations

from typing import Any

import yaml

from . import drift, storage as st
from .config import SearchConfig
from .space import check_against_study


def check(cfg: SearchConfig, storage: Any, study_id: int) -> str | None:
    """Raise HparamSearchError when the space cannot join the study; else the notice for a
    changed config, or None."""
    check_against_study(cfg.params, st.stored_distributions(storage, study_id), cfg.study_name,
                        cfg.where)
    runs = st.runs_of_study(storage, study_id)
    if not runs:
        return None
    previous = yaml.safe_load(runs[-1].get("config") or "{}") or {}
    # Stored configs have their passwords masked: compare like with like.
    current = yaml.safe_load(st.mask_secrets(yaml.safe_dump(cfg.resolved, sort_keys=False)))
    changed = drift.changes(previous, current)
    return drift.notice(cfg.study_name, runs[-1], changed) if changed else None


def describe_existing(cfg: SearchConfig, url: str) -> list[str]:
    """For ``--dry-run``: whether the study exists and what a run would add, read without
    creating or changing anything. Raises like :func:`check`."""
    path = st.sqlite_path(url) or st.journal_path(url)
    if path is not None and not path.exists():
        return [f"Study: new (a run creates it and runs {cfg.n_trials} trials)"]
    try:
        storage = st.open_storage(url, create=False)
    except Exception as exc:  # noqa: BLE001 - a dry run reports, it does not fail on this
        return [f"Study: could not read the storage ({exc})"]
    try:
        try:
            study_id = storage.get_study_id_from_name(cfg.study_name)
        except Exception:  # noqa: BLE001 - KeyError, or a database without Optuna's tables
            return [f"Study: new (a run creates it and runs {cfg.n_trials} trials)"]
        notice = check(cfg, storage, study_id)
        counts = st.state_counts(storage, study_id)
        kinds = st.pruned_kinds(storage, study_id) if counts.get("PRUNED") else None
    finally:
        st.close_storage(storage)
    done = st.finished(counts)
    left = max(0, cfg.n_trials - done)
    states = st.format_counts(counts, kinds)
    lines = [f"Study: exists with {sum(counts.values())} trials ({states}); {done} count toward "
             f"n_trials={cfg.n_trials}, so a run would add "
             f"{left} trial{'s' if left != 1 else ''}"]
    if notice:
        lines.append(notice)
    return lines
