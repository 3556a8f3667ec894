"""What a run leaves when it ends (and, for the results file, while it runs): the results
table, the tracking parent run's status, and the summary on the console."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from .. import storage as st
from ..config import display_path

if TYPE_CHECKING:
    from .launcher import Launcher


def write_results_file(launcher: Launcher) -> None:
    """Rewrite results_file with every trial (the export's table), atomically: a reader
    never sees half a file. A failure is said once per write and never stops the search."""
    from ..results import StudyReader, export, rows

    plan = launcher.plan
    launcher.next_results = time.monotonic() + launcher.cfg.progress_interval
    target = plan.results_file
    assert target is not None
    partial = target.with_name(f".{target.name}.partial")
    try:
        with StudyReader(plan.url, launcher.cfg.study_name) as reader:
            table = rows(reader)
        if not table:
            return
        export(table, target.suffix.lstrip(".").lower(), partial)
        os.replace(partial, target)
    except Exception as exc:  # noqa: BLE001 - the study itself is safe
        partial.unlink(missing_ok=True)
        launcher.out.line(f"warning: could not write {display_path(target)} ({exc})")


def summarize(launcher: Launcher, headline: str, wall_s: float) -> None:
    """The last results file, the parent run's end, and the summary lines."""
    from ..results import StudyReader

    cfg, plan = launcher.cfg, launcher.plan
    counts = launcher.counts()
    if plan.results_file:
        write_results_file(launcher)
    if launcher.tracking is not None:
        from .. import tracking

        tracking.end_study(launcher.tracking, st.finished(counts) >= cfg.n_trials,
                           launcher.out.line)
    if headline == "Search finished" and launcher.timed_out_search:
        headline = f"Search stopped at its timeout ({cfg.timeout:g}s)"
    elif headline == "Search finished" and st.finished(counts) < cfg.n_trials:
        headline = "Search ended short of its budget"
    # A few queries, not every trial: a 50,000-trial study ends as fast as a small one.
    with StudyReader(plan.url, cfg.study_name, launcher.storage) as reader:
        best = reader.best() if counts.get("COMPLETE") else []
    kinds = st.pruned_kinds(launcher.storage, st.study_id(launcher.study))
    launcher.out.summary(headline=headline, states=st.format_counts(counts, kinds), best=best,
                         directions=cfg.directions, wall_s=wall_s,
                         dashboard=st.dashboard_command(plan.url),
                         resume=plan.resume_command, show=plan.show_command)
