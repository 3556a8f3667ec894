"""Trials whose process died: who owns a trial, heartbeats, and marking abandoned trials FAIL."""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import attrs
from .attrs import FAIL_REASON_ATTR, OWNER_ATTR
from .connect import heartbeat_timing

if TYPE_CHECKING:
    import optuna
    from optuna.storages import RDBStorage

ORPHAN_S = 120  # a RUNNING trial with no owner recorded this long is abandoned


@dataclass(frozen=True)
class Owner:
    """Which process runs a trial, to tell a live trial from one whose process died."""

    host: str
    pid: int
    started: int | None  # process start time in clock ticks: guards against pid reuse
    rank: int
    slurm: dict[str, Any] | None = None  # job, task and node, inside a Slurm job

    @classmethod
    def me(cls, rank: int, slurm: dict[str, Any] | None = None) -> Owner:
        return cls(socket.gethostname(), os.getpid(), _process_start(os.getpid()), rank, slurm)

    def as_attr(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None or k == "started"}

    @classmethod
    def from_attr(cls, value: Any) -> Owner | None:
        if not isinstance(value, dict):
            return None
        try:
            return cls(**{k: v for k, v in value.items() if k in cls.__dataclass_fields__})
        except TypeError:
            return None

    def is_alive(self) -> bool:
        """Whether the process is still running (only answerable on its own host)."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        stat = _proc_stat(self.pid)
        if stat is None:  # no /proc (macOS): the pid exists, trust it
            return True
        state, started = stat
        # A zombie has exited (where no init reaps orphans, it lingers); a different start
        # time means the pid was reused by another process.
        return state != "Z" and (self.started is None or started == self.started)


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) from /proc, or None where there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # The command name (field 2) may hold spaces, so split after its closing ')'.
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _process_start(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def fail_trial(storage: RDBStorage, trial_id: int, reason: str) -> bool:
    """Mark a RUNNING trial FAIL with ``reason``; False when it had already finished."""
    from optuna.trial import TrialState

    backend = getattr(storage, "_backend", storage)  # under Optuna's cache
    if hasattr(backend, "fail_running"):  # the fast path: reason and state in one transaction
        return backend.fail_running(trial_id, FAIL_REASON_ATTR, reason)
    try:
        storage.set_trial_system_attr(trial_id, FAIL_REASON_ATTR, reason)
        return storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except RuntimeError:  # UpdateFinishedTrialError: it finished meanwhile
        return False


def running_trials(storage: RDBStorage, study_id: int) -> list[optuna.trial.FrozenTrial]:
    from optuna.trial import TrialState

    return storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))


def fail_trials_of(storage: RDBStorage, study_id: int, pids: set[int] | None, reason: str
                   ) -> list[Any]:
    """Mark FAIL the RUNNING trials whose process on this host is in ``pids`` or, with
    ``pids=None``, is dead. Returns those trials (as they were, still RUNNING)."""
    host = socket.gethostname()
    failed = []
    for trial in running_trials(storage, study_id):
        owner = Owner.from_attr(trial.system_attrs.get(OWNER_ATTR))
        if owner is None:
            # Created by a process that died before saying who it was (only possible where the
            # owner is a separate write, i.e. not on SQLite): fail it once clearly abandoned.
            age = datetime.datetime.now() - (trial.datetime_start or datetime.datetime.now())
            if pids is None and age.total_seconds() > ORPHAN_S and \
                    fail_trial(storage, attrs.trial_id(trial), reason):
                failed.append(trial)
            continue
        if owner.host != host:
            continue
        hit = owner.pid in pids if pids is not None else not owner.is_alive()
        if hit and fail_trial(storage, attrs.trial_id(trial), reason):
            failed.append(trial)
    return failed


class Heartbeat:
    """While a trial runs on a database storage, record a heartbeat every few seconds, so that
    if this process or its host dies, the trial is failed by a worker elsewhere (fail_stale).
    One thread serves a worker for its life (one per trial cost more than a trivial trial);
    the fast path's claim wrote the first beat with the trial itself."""

    def __init__(self, storage: Any) -> None:
        self._storage = storage
        self._enabled = getattr(storage, "heartbeat_interval", None) is not None
        self._claimed_with_beat = hasattr(storage, "claim")
        self._changed = threading.Condition()
        self._running: int | None = None  # the trial being beaten for
        self._due = 0.0  # monotonic time of its next beat
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def running(self, trial_id: int) -> Iterator[None]:
        if not self._enabled:
            yield
            return
        interval = heartbeat_timing()[0]
        with self._changed:
            self._running = trial_id
            self._due = time.monotonic() + (interval if self._claimed_with_beat else 0.0)
            if not self._claimed_with_beat:
                self._changed.notify_all()
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="hparam-search-heartbeat",
                                            daemon=True)
            self._thread.start()
        try:
            yield
        finally:
            # Under the lock: once this returns, no beat for the trial is still being written.
            with self._changed:
                self._running = None

    def _beat(self) -> None:
        with self._changed:
            while True:
                # Woken a few times per interval rather than at every trial's start and end,
                # which would cost short trials two thread switches each.
                interval = heartbeat_timing()[0]
                now = time.monotonic()
                if self._running is None or now < self._due:
                    wait = interval / 4 if self._running is None else self._due - now
                    self._changed.wait(min(interval / 4, wait))
                    continue
                try:
                    self._storage.record_heartbeat(self._running)
                except Exception:  # noqa: BLE001 - missed: the grace period covers a few
                    pass
                self._due = time.monotonic() + heartbeat_timing()[0]


def fail_stale(storage: Any, sid: int) -> list[int]:
    """Fail the trials whose heartbeat stopped more than the grace period ago (database
    storages: their process or host died). Returns their ids."""
    if getattr(storage, "heartbeat_interval", None) is None:
        return []
    failed = []
    for stale in storage._get_stale_trial_ids(sid):
        if fail_trial(storage, stale, "its heartbeat stopped: its process or host was lost"):
            failed.append(stale)
    return failed
