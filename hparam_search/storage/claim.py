"""The claim: in one transaction under the study's lock, count the study's trials, fail those
whose heartbeat stopped, and take the next trial (a retry of an interrupted configuration, a
WAITING one, or a new one) with its owner, user attributes and first heartbeat written beside
it. Mixed into the fast storage (fast.py), whose transactions and trial writes it uses."""

from __future__ import annotations

import copy
import datetime
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from . import retries as rt
from .sql import BEAT, MAX_IDS, SET_ATTR, Cursor, enum_name

_FINISHED = ("COMPLETE", "PRUNED")


@dataclass
class Tally:
    """One process's running count of a study's trials by state, brought up to date by reading
    only the trials that are new or were not final last time: a claim costs the same in a
    study of 50,000 trials as in an empty one."""

    max_id: int = 0
    finished: int = 0
    failed: int = 0
    open: dict[int, str] = field(default_factory=dict)  # trial_id -> RUNNING / WAITING

    def refresh(self, rows: Sequence[tuple[int, str]]) -> None:
        for trial_id, state in rows:
            known = self.open.pop(trial_id, None)
            if trial_id > self.max_id:
                self.max_id = trial_id
            elif known is None:
                continue  # already counted as final
            if state in _FINISHED:
                self.finished += 1
            elif state == "FAIL":
                self.failed += 1
            else:
                self.open[trial_id] = state

    @property
    def running(self) -> int:
        return sum(1 for s in self.open.values() if s == "RUNNING")

    def waiting(self) -> list[int]:
        return sorted(t for t, s in self.open.items() if s == "WAITING")


@dataclass(frozen=True)
class Claimed:
    """What ``claim`` took: the trial's id, and the FrozenTrial it retries, if any."""

    trial_id: int
    retried: FrozenTrial | None = None


@dataclass(frozen=True)
class ClaimRequest:
    n_trials: int
    attrs: dict[str, Any]
    retries: int
    check_stale: bool
    stale_reason: str
    user_attrs: Callable[[int, FrozenTrial | None], dict[str, Any]] | None


class BudgetSpent(Exception):
    """Raised through Optuna's cache when a claim finds no room."""


class Claims:
    """The claim and the heartbeats of the fast storage (state kept by its ``__init__``)."""

    # -- the claim ------------------------------------------------------------------------
    def claim(self, study: Any, n_trials: int, attrs: dict[str, Any], *, retries: int = 0,
              check_stale: bool = False, stale_reason: str = "",
              user_attrs: Callable[[int, FrozenTrial | None], dict[str, Any]] | None = None
              ) -> Claimed | None:
        """Take the study's next trial if the budget has room (finished + running trials below
        ``n_trials``), in one transaction under the study's lock: a retry of an interrupted
        configuration first, then a WAITING (enqueued) trial, then a new one. ``attrs`` are
        written as system attributes of the trial taken, and ``user_attrs(number, retried)``
        as its user attributes. None when the budget is spent.

        The trial is taken through ``study``'s storage (Optuna's cache over this one), so the
        cache knows it as it knows a trial made by ``Study.ask``."""
        self._pending = ClaimRequest(n_trials, attrs, retries, check_stale, stale_reason,
                                 user_attrs)
        self._retried, self.stale_failed = None, []
        self._claimed_new = self._taken_new = None
        try:
            trial_id = study._storage.create_new_trial(study._study_id)
        except BudgetSpent:
            return None
        finally:
            self._pending = None
        self._claimed_new, self._taken_new = self._taken_new, None  # committed: readable
        return Claimed(trial_id, self._retried)

    def _claim(self, study_id: int, request: ClaimRequest) -> FrozenTrial:
        n_trials, check_stale = request.n_trials, request.check_stale
        with self._write() as cur:
            self._lock_study(cur, study_id)
            tally = self._tally(cur, study_id)
            if check_stale and tally.running:
                self._fail_stale(cur, tally, request.stale_reason)
            if tally.finished + tally.running < n_trials:
                return self._take(cur, study_id, tally, request)
        # Raised after the commit: trials failed above for a stale heartbeat stay failed, as
        # the tally and stale_failed already say.
        raise BudgetSpent()

    def _take(self, cur: Cursor, study_id: int, tally: Tally, request: ClaimRequest
              ) -> FrozenTrial:
        """Within the claim's transaction: a retry of an interrupted configuration, else a
        WAITING trial, else a new one."""
        attrs, retries = request.attrs, request.retries
        if retries > 0 and tally.failed and self._settled.get(study_id) != tally.failed:
            failed = self._next_retry(cur, study_id, retries)
            if failed is None:
                self._settled[study_id] = tally.failed
            else:
                template = rt.retry_template(failed, attrs)
                trial_id, number = self._insert_template(cur, study_id, template)
                extra = self._user_attrs(cur, trial_id, number, failed, request)
                template.user_attrs.update(extra)
                tally.open[trial_id] = "RUNNING"
                tally.max_id = max(tally.max_id, trial_id)
                self._retried = failed
                frozen = copy.deepcopy(template)
                frozen.number, frozen._trial_id = number, trial_id
                return frozen
        now = datetime.datetime.now()
        for waiting in tally.waiting():
            taken = cur.run("UPDATE trials SET state = 'RUNNING', datetime_start = ? WHERE "
                            "trial_id = ? AND state = 'WAITING'", self._stamp(now), waiting)
            tally.open.pop(waiting, None)
            if taken == 1:
                tally.open[waiting] = "RUNNING"
                self._write_attrs(cur, "trial_system_attributes", waiting, attrs)
                number = cur.one("SELECT number FROM trials WHERE trial_id = ?", waiting)[0]
                self._user_attrs(cur, waiting, number, None, request)
                return self._read(cur, "trial_id = ?", [waiting])[0]
        trial_id, number, start = self._insert_running(cur, study_id)
        tally.open[trial_id] = "RUNNING"
        tally.max_id = max(tally.max_id, trial_id)
        self._write_attrs(cur, "trial_system_attributes", trial_id, attrs)
        extra = self._user_attrs(cur, trial_id, number, None, request)
        frozen = FrozenTrial(
            number=number, state=TrialState.RUNNING, value=None, values=None,
            datetime_start=start, datetime_complete=None, params={}, distributions={},
            user_attrs=extra, system_attrs=dict(attrs), intermediate_values={},
            trial_id=trial_id)
        self._taken_new = frozen
        return frozen

    def _user_attrs(self, cur: Cursor, trial_id: int, number: int,
                    retried: FrozenTrial | None, request: ClaimRequest) -> dict[str, Any]:
        """The taken trial's user attributes, and its first heartbeat (database storages):
        written with the claim, not in transactions of their own."""
        extra = request.user_attrs(number, retried) if request.user_attrs else {}
        self._write_attrs(cur, "trial_user_attributes", trial_id, extra)
        if self.heartbeat_interval is not None:
            cur.run(BEAT, trial_id)
        return extra

    def _tally(self, cur: Cursor, study_id: int) -> Tally:
        tally = self._tallies[study_id]
        if not tally.max_id:
            self._study_exists(cur, study_id)
        opened = list(tally.open)
        rows: list[tuple] = []
        for start in range(0, max(len(opened), 1), MAX_IDS):
            chunk = opened[start:start + MAX_IDS]
            extra = f" OR trial_id IN ({','.join('?' * len(chunk))})" if chunk else ""
            rows += cur.all(f"SELECT trial_id, state FROM trials WHERE study_id = ? AND "
                            f"(trial_id > ?{extra})", study_id, tally.max_id, *chunk)
        tally.refresh([(r[0], enum_name(r[1])) for r in sorted(set(rows))])
        return tally

    def _fail_stale(self, cur: Cursor, tally: Tally, reason: str) -> None:
        """Fail the RUNNING trials whose heartbeat stopped more than the grace period ago."""
        running = [t for t, s in tally.open.items() if s == "RUNNING"]
        grace = self.grace_period or 2 * (self.heartbeat_interval or 1)
        for trial_id in self._stale_among(cur, running, grace):
            cur.run(SET_ATTR["trial_system_attributes"], trial_id, "fail_reason",
                    json.dumps(reason))
            cur.run("UPDATE trials SET state = 'FAIL', datetime_complete = ? WHERE trial_id = ? "
                    "AND state = 'RUNNING'", self._stamp(datetime.datetime.now()), trial_id)
            tally.open.pop(trial_id, None)
            tally.failed += 1
            self.stale_failed.append(trial_id)

    def _stale_among(self, cur: Cursor, trial_ids: list[int], grace: float) -> list[int]:
        """Of these trials, those whose last heartbeat is older than ``grace`` s (dialect)."""
        return []

    def _next_retry(self, cur: Cursor, study_id: int, retries: int) -> FrozenTrial | None:
        fails = [r[0] for r in cur.all("SELECT trial_id FROM trials WHERE study_id = ? AND "
                                       "state = 'FAIL'", study_id)]
        if not fails:
            return None
        candidates = rt.retryable(self._read_rows(cur, fails), retries)
        if not candidates:
            return None
        histories = cur.all("SELECT a.value_json FROM trial_system_attributes a JOIN trials t "
                            "ON a.trial_id = t.trial_id WHERE t.study_id = ? AND a.key = ?",
                            study_id, rt.RETRY_HISTORY_ATTR)
        done = {json.loads(h)[-1] for (h,) in histories if json.loads(h)}
        return next((t for t in candidates if t.number not in done), None)

    # -- heartbeats ------------------------------------------------------------------------
    def record_heartbeat(self, trial_id: int) -> None:
        with self._write() as cur:
            cur.run(BEAT, trial_id)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        grace = self.grace_period or 2 * (self.heartbeat_interval or 1)
        with self._read_cursor() as cur:
            running = [r[0] for r in cur.all("SELECT trial_id FROM trials WHERE study_id = ? "
                                             "AND state = 'RUNNING'", study_id)]
            return self._stale_among(cur, running, grace)
