"""What the launcher prints: the banner, one line per finished trial, the final summary."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, TextIO

from ._trial import TrialResult


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return repr(value) if isinstance(value, str) else str(value)


def format_params(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in params.items())


class Console:
    """Plain line output. Every line is written and flushed whole, so lines from the launcher
    and from workers' own prints never interleave mid-line."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def line(self, text: str = "") -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def banner(self, *, study: str, db: str, done: int, target: int, n_workers: int,
               start_method: str, dashboard: str, stale: list[int]) -> None:
        self.line(f"hparam_search: study '{study}'")
        self.line(f"  database   {db}")
        resumed = f" (resuming: {done} already finished)" if done else ""
        self.line(f"  trials     {target - done} to run, {target} in all{resumed}")
        self.line(f"  workers    {n_workers} ({start_method})")
        self.line(f"  dashboard  {dashboard}")
        if stale:
            self.line(f"  recovered  trials {', '.join(map(str, stale))} were left RUNNING by "
                      f"processes that died; marked FAIL (they do not count)")

    def trial(self, r: TrialResult, done: int, target: int) -> None:
        if r.state == "COMPLETE":
            outcome = f"value={_fmt(r.value)}"
        else:
            outcome = (r.reason or "").splitlines()[0] if r.reason else ""
        self.line(f"[{done}/{target}] trial {r.number} {r.state} {outcome} "
                  f"({r.duration_s:.2f}s, worker {r.rank}) {format_params(r.params)}".rstrip())

    def summary(self, *, headline: str, counts: Mapping[str, int], best: Any,
                direction: str, wall_s: float, dashboard: str, resume: str) -> None:
        states = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v) or "no trials"
        self.line("")
        self.line(f"{headline} in {wall_s:.1f}s. Trials by state: {states}.")
        if best is not None:
            self.line(f"Best trial {best.number} ({direction}): value={_fmt(best.value)}")
            for k, v in best.params.items():
                self.line(f"  {k}: {_fmt(v)}")
        self.line(f"Inspect:  {dashboard}")
        self.line(f"Resume or extend:  {resume}")
