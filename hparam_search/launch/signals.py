"""Signals and process groups: a worker and every process its trials start form one group,
ended as a group, so a stopped trial leaves nothing running (PyTorch DataLoader workers, a
data-prep subprocess). A process that detaches into a session of its own is out of reach."""

from __future__ import annotations

import os
import signal
import sys
import threading


class Terminated(BaseException):
    """SIGTERM reached the launcher."""


def raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def raise_on_stops() -> None:
    """Ctrl-C raises KeyboardInterrupt and SIGTERM raises Terminated (main thread only)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, raise_terminated)


def ignore_stops() -> None:
    """Ctrl-C and SIGTERM do nothing: for a script that is exiting after a stop (the
    interpreter's teardown resets Python handlers, so only SIG_IGN keeps a late Ctrl-C from
    ending it by the signal)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class StopWaiting(BaseException):
    """Another Ctrl-C or SIGTERM came while the launcher waited for its workers to leave."""


class LaterStops:
    """Ctrl-C and SIGTERM once the launcher is stopping (or done). The next one cuts the wait
    for the workers short (or skips it, when it comes first); the one after that gets the
    signal's default action and ends the launcher at once, even inside a call that blocks (a
    database that does not answer): the next run marks FAIL the trials it leaves RUNNING.
    Never a traceback."""

    def __init__(self) -> None:
        self.waiting = False
        self.pressed = False

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.pressed = True
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.write(2, b"Stopping without waiting for the workers; one more Ctrl-C or SIGTERM ends "
                    b"the launcher at once (the next run marks FAIL what it leaves RUNNING).\n")
        if self.waiting:
            self.waiting = False
            raise StopWaiting()


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def lead_own_group() -> None:
    """Make this process (a worker) the leader of a new process group: its trials' children
    join it, and the launcher ends the group with one signal."""
    try:
        os.setpgid(0, 0)
    except OSError:  # already a group (or session) leader
        pass


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``signum`` when the parent process dies (Linux); elsewhere the
    worker's watchdog thread notices alone."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signum, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def end_group(leader: int, signum: int = signal.SIGKILL) -> None:
    """Signal every process left in the group that ``leader`` led (it may be gone already)."""
    try:
        os.killpg(leader, signum)
    except (ProcessLookupError, PermissionError):
        pass


def end_rest_of_group() -> None:
    """From a worker that is leaving: SIGTERM the processes its trials started; the launcher
    SIGKILLs whatever outlives it. Safe from any thread."""
    me = os.getpid()
    if os.getpgrp() != me:
        return  # not a group of our own: the others in it are not ours to end
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            os.killpg(me, signal.SIGTERM)
        except OSError:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
        return
    # Another thread (the watchdog) cannot change signal handling: signal the others one by one.
    for pid in group_members(me):
        if pid != me:
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass


def group_members(pgid: int) -> list[int]:
    """The processes in group ``pgid`` (Linux /proc; empty elsewhere)."""
    out = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for entry in entries:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                if int(fields[2]) == pgid:
                    out.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return out
