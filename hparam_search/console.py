"""What the launcher prints: the banner, one line per finished trial, the final summary."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from .launch.trial import TrialResult
from .config import SearchConfig
from .space import merge_params


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return repr(value) if isinstance(value, str) else str(value)


def format_params(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in params.items())


@dataclass
class Progress:
    """What the progress display shows; the launcher keeps it current."""

    target: int
    done: int = 0
    running: int = 0
    pruned: int = 0  # by the pruner or trial_timeout
    errors: int = 0  # pruned because train raised (or returned NaN)
    failed: int = 0
    best_value: float | None = None
    best_trial: int | None = None
    finished_this_run: int = 0
    started_at: float = field(default_factory=time.monotonic)

    def text(self, width: int = 1_000) -> str:
        """One line, at most ``width`` characters: fields are dropped, least useful first."""
        elapsed = max(time.monotonic() - self.started_at, 1e-9)
        rate = self.finished_this_run / elapsed * 60
        left = self.target - self.done
        eta = f"{left / rate * 60:.0f}s" if rate > 0 and left > 0 else "-"
        best = (f"best {_fmt(self.best_value)} (trial {self.best_trial})"
                if self.best_value is not None else "best -")
        # (priority, text): 0 is kept longest.
        fields = [(0, f"{self.done}/{self.target} done"), (3, f"{self.running} running"),
                  (4, f"{self.pruned} pruned"),
                  (2, f"{self.errors} error{'' if self.errors == 1 else 's'}"),
                  (2, f"{self.failed} failed"), (1, best), (6, f"{rate:.1f} trials/min"),
                  (5, f"ETA {eta}")]
        fields = [(p, t) for p, t in fields if not t.startswith("0 ") or p < 2 or
                  t.endswith("running")]
        while True:
            line = " | ".join(t for _, t in fields)
            if len(line) <= width or len(fields) == 1:
                return line[:width]
            fields.remove(max(fields, key=lambda f: f[0]))


class Console:
    """The launcher's output. On a terminal, a live progress line (rich) stays at the bottom and
    every other line scrolls above it; elsewhere (CI, nohup, a log file) plain lines only, with
    a progress line every ``interval`` seconds. Each line is written whole, so lines from
    different workers never interleave mid-line."""

    def __init__(self, stream: TextIO | None = None, *, live: bool | None = None,
                 interval: float = 30.0) -> None:
        self.stream = stream or sys.stdout
        if live is None:
            live = _isatty(self.stream) and os.environ.get("TERM") != "dumb"
        self.live = live
        self.interval = interval
        self._rich: Any = None
        self._live: Any = None
        self._last_plain = time.monotonic()
        self._gone = False  # the reader of the output left

    def line(self, text: str = "") -> None:
        self.raw(text + "\n")

    def raw(self, text: str) -> None:
        if self._gone:
            return
        try:
            if self._live is not None:
                self._rich.print(text, end="", markup=False, highlight=False, soft_wrap=True)
                return
            self.stream.write(text)
            self.stream.flush()
        except BrokenPipeError:
            # Piped into `head` and it left: the search goes on, silently.
            self._gone = True
            self._live = None
            if self.stream is sys.stdout:
                quiet_stdout()

    def start_progress(self, progress: Progress) -> None:
        if not self.live:
            self._last_plain = time.monotonic()
            return
        from rich.console import Console as RichConsole
        from rich.live import Live

        self._rich = RichConsole(file=self.stream, force_terminal=True)
        self._live = Live(self._render(progress), console=self._rich, refresh_per_second=4,
                          transient=True)
        self._live.start()

    def progress(self, progress: Progress) -> None:
        if self._live is not None:
            self._live.update(self._render(progress))
        elif time.monotonic() - self._last_plain >= self.interval:
            self._last_plain = time.monotonic()
            self.line(f"progress: {progress.text()}")

    def stop_progress(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _render(self, progress: Progress) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        width = self._rich.width if self._rich is not None else 80
        bar = max(10, min(30, width // 5))
        grid = Table.grid(padding=(0, 1))
        grid.add_row(ProgressBar(total=progress.target, completed=progress.done, width=bar),
                     progress.text(width - bar - 2))
        return grid

    def banner(self, *, study: str, db: str, done: int, target: int, n_workers: int,
               start_method: str, dashboard: str, stale: list[int], threads: str) -> None:
        self.line(f"hparam_search: study '{study}'")
        self.line(f"  database   {db}")
        resumed = f" (resuming: {done} already finished)" if done else ""
        self.line(f"  trials     {target - done} to run, {target} in all{resumed}")
        self.line(f"  workers    {n_workers} ({start_method})")
        self.line(f"  threads    {threads}")
        self.line(f"  dashboard  {dashboard}")
        if stale:
            self.line(f"  recovered  trials {', '.join(map(str, stale))} were left RUNNING by "
                      f"processes that died; marked FAIL (they do not count)")

    def trial(self, r: TrialResult, done: int, target: int) -> None:
        if r.state == "COMPLETE" and isinstance(r.value, list):
            outcome = "values=[" + ", ".join(_fmt(v) for v in r.value) + "]"
        elif r.state == "COMPLETE":
            outcome = f"value={_fmt(r.value)}"
        else:
            outcome = (r.reason or "").splitlines()[0] if r.reason else ""
        self.line(f"[{done}/{target}] trial {r.number} {r.state} {outcome} "
                  f"({r.duration_s:.2f}s, worker {r.rank}) {format_params(r.params)}".rstrip())

    def summary(self, *, headline: str, states: str, best: list[Any],
                directions: tuple[str, ...], wall_s: float, dashboard: str, resume: str,
                show: str) -> None:
        self.line("")
        self.line(f"{headline} in {wall_s:.1f}s. Trials by state: {states}.")
        if len(directions) == 1 and best:
            trial = best[0]
            self.line(f"Best trial {trial.number} ({directions[0]}): "
                      f"value={_fmt(trial.values[0])}")
            for k, v in trial.params.items():
                self.line(f"  {k}: {_fmt(v)}")
        elif best:
            self.line(f"Pareto front ({', '.join(directions)}): {len(best)} trials")
            for trial in sorted(best, key=lambda t: t.values):
                values = ", ".join(_fmt(v) for v in trial.values)
                self.line(f"  trial {trial.number}: values=[{values}] "
                          f"{format_params(trial.params)}")
        self.line(f"Inspect:  {show}")
        self.line(f"          {dashboard}")
        self.line(f"Resume or extend:  {resume}")


def quiet_stdout() -> None:
    """The reader of our output went away (``| head``): stop writing, like Unix tools, and
    keep the interpreter's final flush from complaining."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def explicit_configs(cfg: SearchConfig) -> list[dict[str, Any]]:
    """The whole config ``train`` gets for each explicit trial (grid point or enqueue entry);
    parameters an entry leaves out are sampled and so absent here."""
    return [merge_params(cfg.fixed, entry) for entry in cfg.explicit]


def describe_search(cfg: SearchConfig, where: str) -> str:
    """What ``--dry-run`` prints: everything resolved, nothing started."""
    import yaml

    from .storage import mask_secrets

    lines = [f"hparam_search dry run: study '{cfg.study_name}' in {where}",
             "(nothing is started and no study is written)", "",
             "Config (fixed values, after --set):"]
    dumped = mask_secrets(yaml.safe_dump(cfg.fixed, sort_keys=False,
                                         default_flow_style=False)).rstrip()
    lines += ["  " + line for line in dumped.splitlines()]
    lines += ["", "Search space:"]
    lines += [f"  {p.describe()}" for p in cfg.params] or ["  (no sweep_parameters)"]
    seed = f", seed {cfg.sampler.seed}" if cfg.sampler.seed is not None else ""
    lines += ["", f"Sampler: {cfg.sampler.describe()}{seed}", f"Pruner: {cfg.pruner.describe()}",
              f"Objective: {', '.join(cfg.directions)}"
              + (f" of {', '.join(cfg.metrics or (cfg.metric,))}" if cfg.metrics or cfg.metric
                 else ""),
              f"Budget: n_trials={cfg.n_trials}, n_jobs={cfg.n_jobs}"]
    if cfg.explicit:
        kind = "Grid points" if cfg.sampler.type == "grid" else "Enqueued trials"
        lines += ["", f"{kind} ({len(cfg.explicit)}, run first, each exactly once):"]
        lines += [f"  {i}: {format_params(entry)}" for i, entry in enumerate(cfg.explicit)]
    return "\n".join(lines)
