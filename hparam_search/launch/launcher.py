"""Start, watch, replace and join worker processes; signals and exit codes."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from .. import storage as st
from ..cluster import slurm
from ..console import Console, Progress
from ..errors import HparamSearchError
from ..settings import thread_environment, threads_for_workers
from . import ending, opening, signals
from . import trial as _trial
from . import worker as _worker
from .fork_server import preload_for
from .plan import LaunchPlan
from .starting import Starter, environment
from .trial import TrialResult

EXIT_OK = 0
EXIT_SEARCH_FAILED = 1
EXIT_SIGINT = 130
EXIT_SIGTERM = 143
RECHECK_S = 1.0  # how often to look again while other processes hold the last slots


@dataclass
class _Slot:
    rank: int
    generation: int
    process: Any
    conn: multiprocessing.connection.Connection
    ready: bool = False
    exited: bool = False
    trial: tuple[int, int] | None = None  # (number, trial_id) of the trial it runs
    trial_started: float = 0.0
    timed_out: bool = False


class Launcher:
    """Runs one search to its end. ``run()`` returns the process exit code; when the search
    stopped on an error, ``fatal`` says why."""

    def __init__(self, plan: LaunchPlan, console: Console | None = None) -> None:
        self.plan = plan
        self.cfg = plan.config
        self.out = console or Console(interval=self.cfg.progress_interval)
        self.progress = Progress(target=self.cfg.n_trials)
        self.ctx = multiprocessing.get_context(plan.start_method)
        if plan.start_method == "forkserver":
            # The server imports Optuna and the storage once; each worker is then a cheap fork
            # that imports the script itself. Not "__main__": Pythons that honour it (CPython
            # issue 126631) would run the script's top level in the server, and a script that
            # touches CUDA there would leave every worker a fork of a CUDA process.
            self.ctx.set_forkserver_preload(preload_for(plan.url))
        self.slots: list[_Slot] = []
        self.storage: Any = None
        self.study: Any = None
        self.done = 0
        self.done_at_start = 0
        self.accepting = True
        self.fatal: str | None = None
        self.crashes_in_a_row = 0
        self.all_pids: set[int] = set()
        self.wanted = 0
        self.deadline: float | None = None  # wall clock: no trial starts after it (`timeout`)
        self.timed_out_search = False
        self.run_id = 0  # this run's index in the study's run records
        # A fair share of the cores for each worker's OpenMP/MKL/OpenBLAS (and torch) threads,
        # unless the user's own environment says otherwise.
        self.threads = threads_for_workers(self.cfg.threads_per_worker, self.cfg.n_jobs)
        self.thread_env = thread_environment(self.threads)
        self.slurm = slurm.owner_info()  # the job, array task and node, inside a Slurm job
        self.next_results = time.monotonic() + self.cfg.progress_interval  # results_file
        self.tracking: Any = None  # tracking.Context, when tracking is on and reachable
        self.later_stops = signals.LaterStops()  # what Ctrl-C does once the stop began
        self._sinks: Any = None  # this process's own, to end the runs of lost trials

    # -- public --------------------------------------------------------------------------
    def run(self) -> int:
        # Workers (and the fork server) inherit their numeric libraries' thread counts.
        with environment(dict(self.thread_env)):
            try:
                return self._run()
            finally:
                if self.storage is not None:
                    st.close_storage(self.storage)

    def _run(self) -> int:
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        code = EXIT_SEARCH_FAILED
        try:
            code = self._search()
            return code
        finally:
            if code in (EXIT_SIGINT, EXIT_SIGTERM) and self.plan.module == "__main__":
                # The script exits with this code now, not by a late stop's signal (after a
                # second stop, a third may end it at once, as promised).
                if not self.later_stops.pressed:
                    signals.ignore_stops()
            else:  # a search run from a module (a notebook, a larger program) may go on
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    def _search(self) -> int:
        started = time.monotonic()
        signals.raise_on_stops()
        code, headline = EXIT_OK, "Search finished"
        starter = Starter(self, min(self.cfg.n_jobs, self.cfg.n_trials))
        try:
            # Workers import their (possibly heavy) modules while the parent opens the study;
            # with forkserver, starting them blocks until the server has imported the script.
            starter.start()
            ready = opening.open_study(self)
            starter.finish()
            if not ready:
                return EXIT_OK
            self._watch()
            if self.fatal:
                code, headline = EXIT_SEARCH_FAILED, "Search stopped on an error"
        except HparamSearchError:
            raise
        except KeyboardInterrupt:
            code, headline = EXIT_SIGINT, "Search interrupted (Ctrl-C)"
        except signals.Terminated:
            code, headline = EXIT_SIGTERM, "Search terminated (SIGTERM)"
        except Exception as exc:  # noqa: BLE001 - the storage failed under the launcher
            if os.environ.get("HPARAM_SEARCH_DEBUG"):
                raise
            self.fatal = st.failure_message(exc, "the launcher")
            code, headline = EXIT_SEARCH_FAILED, "Search stopped on an error"
        finally:
            self.later_stops.install()
            self.out.stop_progress()  # plain lines now: an exit at once leaves no hidden cursor
            starter.join()
            self._stop_all()
        if self.study is not None:
            try:
                ending.summarize(self, headline, time.monotonic() - started)
            except Exception as exc:  # noqa: BLE001 - never hide the real outcome behind this
                self.out.line(f"{headline}; the summary could not be read ({exc}).")
        return code

    # -- study ---------------------------------------------------------------------------
    def fail_dead(self, pids: set[int] | None, reason: str) -> list[int]:
        """Mark FAIL the trials of these (or of dead) processes on this host and, with
        ``pids=None``, those whose heartbeat stopped (a host lost: while every worker here waits
        for the last slots, no claim would find them); end their tracking runs. Returns their
        numbers."""
        sid = st.study_id(self.study)
        failed = st.fail_trials_of(self.storage, sid, pids, reason)
        if pids is None:
            failed += [self.storage.get_trial(t) for t in st.fail_stale(self.storage, sid)]
        self._end_runs([st.trial_id(t) for t in failed], "FAIL")
        return [t.number for t in failed]

    def _end_runs(self, trial_ids: list[int], state: str) -> None:
        """End the tracking runs of trials this process ended from outside their worker."""
        if not trial_ids or self.tracking is None:
            return
        from ..tracking import TrialSinks

        if self._sinks is None:
            self._sinks = TrialSinks(self.tracking)
        self._sinks.end_interrupted([self.storage.get_trial(t) for t in trial_ids], state)

    def counts(self) -> dict[str, int]:
        return st.state_counts(self.storage, st.study_id(self.study))

    # -- workers -------------------------------------------------------------------------
    def start_worker(self, rank: int, generation: int) -> None:
        parent_conn, child_conn = self.ctx.Pipe(duplex=True)
        spec = _worker.WorkerSpec(
            script=str(self.plan.script), module=self.plan.module, qualname=self.plan.qualname,
            url=self.plan.url, study_name=self.cfg.study_name, fixed=self.cfg.fixed,
            params=self.cfg.params, n_trials=self.cfg.n_trials, n_jobs=self.cfg.n_jobs,
            sampler=self.cfg.sampler, pruner=self.cfg.pruner,
            objective=_trial.Objective(self.cfg.directions, self.cfg.metric, self.cfg.metrics),
            fail_fast=self.cfg.fail_fast, rank=rank, generation=generation, resumed_from=0,
            trials_root=str(self.plan.trials_root), trial_logs=self.cfg.trial_logs,
            artifacts_dir=str(self.plan.artifacts_dir), retries=self.cfg.retries,
            retry_exceptions=self.cfg.retry_exceptions,
            one_trial=self.cfg.isolate_trials, gpu=self.gpu_of(rank),
            threads=self.threads if "OMP_NUM_THREADS" in self.thread_env else None,
            slurm=self.slurm)
        process = self.ctx.Process(target=_worker.main, args=(spec, child_conn),
                                   name=f"hparam-search-worker-{rank}", daemon=False)
        with environment({"CUDA_VISIBLE_DEVICES": spec.gpu}):
            process.start()  # spawn: the new interpreter sees its GPU from its first line
        child_conn.close()
        self.all_pids.add(process.pid)
        self.slots.append(_Slot(rank, generation, process, parent_conn))

    def gpu_of(self, rank: int) -> str | None:
        gpus = self.cfg.gpus
        return None if not gpus else gpus[(rank // self.cfg.workers_per_gpu) % len(gpus)]

    def _live(self) -> list[_Slot]:
        return [s for s in self.slots if not s.exited]

    def _watch(self) -> None:
        while True:
            live = self._live()
            if not live:
                if self.fatal or not self._restart_if_short():
                    return
                continue
            waitables = [s.conn for s in live] + [s.process.sentinel for s in live]
            tick = 0.25 if self.cfg.trial_timeout or self.deadline else 1.0
            ready = multiprocessing.connection.wait(waitables, timeout=tick)
            self.out.progress(self.progress)
            self._enforce_timeouts()
            if self.plan.results_file and time.monotonic() >= self.next_results:
                ending.write_results_file(self)
            for slot in live:
                if slot.conn in ready or slot.process.sentinel in ready:
                    self._drain(slot)
                if slot.process.sentinel in ready:
                    self._on_exit(slot)

    def _drain(self, slot: _Slot) -> None:
        try:
            while slot.conn.poll():
                self._on_message(slot, slot.conn.recv())
        except (EOFError, OSError):
            pass

    def _on_message(self, slot: _Slot, msg: tuple) -> None:
        kind = msg[0]
        if kind == "ready":
            slot.ready = True
            busy = sum(1 for s in self._live() if s.ready and s is not slot)
            go = self.accepting and not self.fatal and busy < self.wanted
            slot.conn.send(("go", {"resumed_from": self.done_at_start, "deadline": self.deadline,
                                   "run_id": self.run_id, "tracking": self.tracking})
                           if go else ("quit",))
        elif kind == "start":
            number, trial_id, retry_of, attempt = msg[1:]
            slot.trial, slot.trial_started = (number, trial_id), time.monotonic()
            self.progress.running += 1
            if retry_of is not None:
                self.out.line(f"trial {number} RETRY of trial {retry_of} (attempt {attempt}/"
                              f"{self.cfg.retries + 1}, worker {slot.rank})")
            self.out.progress(self.progress)
        elif kind == "out":
            self.out.raw(msg[1])
        elif kind == "trial":
            slot.trial = None
            result: TrialResult = msg[1]
            self._count(result)
            self.out.trial(result, self.done, self.cfg.n_trials)
            self.out.progress(self.progress)
        elif kind == "fatal":
            if self.fatal is None:
                self.fatal = msg[1]
            self.accepting = False
            self._terminate_live()

    def _count(self, result: TrialResult) -> None:
        p = self.progress
        p.running = max(0, p.running - 1)
        if result.state in ("COMPLETE", "PRUNED"):
            self.done += 1
            p.done, p.finished_this_run = self.done, p.finished_this_run + 1
        if result.state == "PRUNED":
            if result.pruned_by == "error":
                p.errors += 1
            else:
                p.pruned += 1
        p.failed += result.state == "FAIL"
        if result.state == "COMPLETE":
            self.crashes_in_a_row = 0
            if isinstance(result.value, float):
                better = (p.best_value is None or
                          (result.value < p.best_value if self.cfg.directions[0] == "minimize"
                           else result.value > p.best_value))
                if better:
                    p.best_value, p.best_trial = result.value, result.number

    def _enforce_timeouts(self) -> None:
        if self.deadline is not None and not self.timed_out_search and time.time() >= self.deadline:
            # Workers start no new trial after the deadline; running ones finish.
            self.timed_out_search = True
            self.out.line(f"timeout: {self.cfg.timeout:g}s reached; no new trials start, "
                          f"running ones finish (Ctrl-C stops them)")
        limit = self.cfg.trial_timeout
        if limit is None:
            return
        from optuna.trial import TrialState

        for slot in self._live():
            if slot.trial and not slot.timed_out and \
                    time.monotonic() - slot.trial_started > limit:
                slot.timed_out = True
                slot.process.kill()
                slot.process.join()
                signals.end_group(slot.process.pid)  # what the trial started goes with it
                number, trial_id = slot.trial
                reason = f"timeout: still running after {limit:g}s"
                try:
                    self.storage.set_trial_user_attr(trial_id, _trial.PRUNE_REASON_ATTR, reason)
                    self.storage.set_trial_state_values(trial_id, TrialState.PRUNED)
                except RuntimeError:  # it finished in the meantime
                    continue
                self._end_runs([trial_id], "PRUNED")
                self._drain(slot)
                params = self.storage.get_trial(trial_id).params
                result = TrialResult(number, "PRUNED", None, params, time.monotonic()
                                     - slot.trial_started, slot.rank, reason,
                                     pruned_by="timeout")
                self._count(result)
                self.out.trial(result, self.done, self.cfg.n_trials)

    def _on_exit(self, slot: _Slot) -> None:
        slot.process.join()
        slot.exited = True
        signals.end_group(slot.process.pid)  # processes its trials left behind
        code = slot.process.exitcode
        if slot.timed_out or code == _worker.EXIT_RECYCLE:
            if self.accepting and not self.timed_out_search:
                self.start_worker(slot.rank, slot.generation + 1)  # a fresh process for the slot
            return
        if code == _worker.EXIT_DONE or not self.accepting:
            return
        if code == _worker.EXIT_FATAL:
            self.fatal = self.fatal or "a worker stopped on an error"
            self.accepting = False
            self._terminate_live()
            return
        if not slot.ready and code == 1:
            self.fatal = ("a worker process could not start (see the error above); "
                          "check that your script runs on its own")
            self.accepting = False
            self._terminate_live()
            return
        how = (f"was killed by {signals.signal_name(-code)}" if code < 0
               else f"exited with code {code}")
        numbers = self.fail_dead({slot.process.pid}, f"its worker process {how}")
        again = " and will be retried" if self.cfg.retries else ""
        lost = f"; trial {', '.join(map(str, numbers))} marked FAIL{again}" if numbers else ""
        self.out.line(f"worker {slot.rank} (pid {slot.process.pid}) {how}{lost}")
        self.progress.running = max(0, self.progress.running - len(numbers))
        self.progress.failed += len(numbers)
        self.crashes_in_a_row += 1
        if self.cfg.fail_fast and self.crashes_in_a_row >= self.cfg.fail_fast + self.cfg.n_jobs:
            self.fatal = (f"worker processes died {self.crashes_in_a_row} times in a row without "
                          f"a trial completing; the last one {how}")
            self.accepting = False
            self._terminate_live()
            return
        self.out.line(f"starting a replacement for worker {slot.rank}")
        self.start_worker(slot.rank, slot.generation + 1)

    def _restart_if_short(self) -> bool:
        """All workers left but the budget is not met: a trial failed after the others had found
        no free slot, or trials are still running elsewhere (another launcher, a process that
        died). Start another round when a slot is free, wait while others hold the slots.
        False when the search is complete."""
        self._enforce_timeouts()
        if self.timed_out_search:
            return False
        while self.accepting:
            self.fail_dead(None, "its process died while the search ran")
            counts = self.counts()
            remaining = self.cfg.n_trials - st.finished(counts)
            if remaining <= 0:
                return False
            free = self.cfg.n_trials - st.claimed(counts)
            if free > 0:
                generation = max(s.generation for s in self.slots) + 1
                for rank in range(min(self.cfg.n_jobs, free)):
                    self.start_worker(rank, generation)
                return True
            time.sleep(RECHECK_S)
        return False

    # -- stopping ------------------------------------------------------------------------
    def _terminate_live(self) -> None:
        for slot in self._live():
            if slot.process.is_alive():
                slot.process.terminate()

    def _stop_all(self) -> None:
        """SIGTERM to every worker (train gets the stop as an exception: its ``finally`` blocks
        run), stop_grace seconds to leave, then SIGKILL to each worker's whole group."""
        self.accepting = False
        self._terminate_live()
        deadline = time.monotonic() + self.cfg.stop_grace
        stops = self.later_stops
        try:
            # Wait for them, still showing what they print (a last checkpoint being saved)
            # and counting a trial that finishes in the meantime; not after a second stop.
            stops.waiting = not stops.pressed
            while stops.waiting and time.monotonic() < deadline:
                live = [s for s in self.slots if s.process.is_alive()]
                if not live:
                    break
                ready = multiprocessing.connection.wait(
                    [s.conn for s in live] + [s.process.sentinel for s in live],
                    timeout=max(0.0, deadline - time.monotonic()))
                for slot in live:
                    if slot.conn in ready:
                        self._drain(slot)
            stops.waiting = False
        except signals.StopWaiting:
            pass
        for slot in self.slots:
            if slot.process.is_alive():
                slot.process.kill()
            slot.process.join()
            signals.end_group(slot.process.pid)
            if not slot.exited:
                self._drain(slot)  # what it said before leaving (a worker gone before the wait)
            slot.exited = True
            slot.conn.close()
        if self.storage is not None and self.study is not None:
            try:
                self.fail_dead(self.all_pids, "interrupted: the search was stopped")
            except Exception as exc:  # noqa: BLE001 - storage down or full: the next run recovers
                self.out.line(f"could not mark interrupted trials FAIL ({exc}); the next run "
                              "of this command will")
