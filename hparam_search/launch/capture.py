"""Capture each trial's stdout and stderr at the file-descriptor level (print, C extensions and
child processes alike): every line goes to the trial's log file and, prefixed with the trial
number and worker, to the launcher for the console.

One pipe and one copying thread serve a worker for its whole life: a thread and a pipe for
every trial cost more than a trivial trial itself. While a trial runs, fds 1 and 2 write into
the pipe. When it ends with nothing left in the pipe, its output is complete at once;
otherwise a marker written through the pipe tells the thread where that trial's output stops,
and the trial's end waits until the thread has passed it, so the log is complete before the
result is reported."""

from __future__ import annotations

import fcntl
import os
import select
import sys
import termios
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


_CHUNK = 65536
# How long a trial's end waits for the copying thread to reach its marker (it is only behind
# when a flood of output is still queued in the pipe).
_DRAIN_S = 2.0
_LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)


class OutputCapture:
    """Routes fds 1 and 2 of one worker process, trial by trial, to the trials' logs.

    Output between two markers is one segment, one trial's; the copying thread is in segment
    ``passed``, the next trial writes segment ``started``. The thread's own state (the open
    log, the unfinished line, a partial marker) is touched by others only while it is idle."""

    def __init__(self, relay: Callable[[str], None]) -> None:
        self._relay = relay
        self._read_fd, self._write_fd = os.pipe()
        # NUL-framed and random: output that happens to contain it is practically impossible.
        self._marker = b"\x00hparam-search-end-" + os.urandom(8).hex().encode() + b"\x00"
        self._lock = threading.Condition()
        self._started = 0
        self._passed = 0
        self._targets: dict[int, tuple[Path, str]] = {}  # segment -> (log file, prefix)
        self._log: int | None = None  # the log being written, once opened (-1: cannot be)
        self._log_path: Path | None = None  # ... and its path
        self._last: tuple[Path | None, str] = (None, "")  # the last finished trial's target
        self._copying = False  # the thread holds bytes it has read and not yet written out
        self._line = b""  # the segment's unfinished last line
        self._carry = b""  # bytes that may begin a marker, held until the next read
        threading.Thread(target=self._pump, name="hparam-search-capture", daemon=True).start()

    @contextmanager
    def trial(self, log_path: Path, prefix: str) -> Iterator[None]:
        """While the block runs, what the process writes to fds 1 and 2 goes to ``log_path``
        (made at the trial's first output) and, line by line with ``prefix``, to the relay."""
        for stream in (sys.stdout, sys.stderr):
            _flush(stream)
        with self._lock:
            segment = self._started
            self._targets[segment] = (log_path, prefix)
        saved = (os.dup(1), os.dup(2))
        os.dup2(self._write_fd, 1)
        os.dup2(self._write_fd, 2)
        try:
            yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                _flush(stream)
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            self._end(segment)

    def _end(self, segment: int) -> None:
        with self._lock:
            self._started += 1
            if not self._copying and self._passed == segment and not self._carry \
                    and _unread(self._read_fd) == 0:
                # Everything written has been copied (most trials print little or nothing).
                self._finish_segment()
                return
        os.write(self._write_fd, self._marker)
        with self._lock:
            self._lock.wait_for(lambda: self._passed > segment, timeout=_DRAIN_S)

    def _pump(self) -> None:
        poller = select.poll()
        poller.register(self._read_fd, select.POLLIN)
        while True:
            poller.poll()
            # Marked before the read, under the lock: a trial's end that finds the thread idle
            # and the pipe empty knows that nothing it wrote is still on its way.
            with self._lock:
                self._copying = True
            try:
                chunk = os.read(self._read_fd, _CHUNK)
                if not chunk:
                    return
                self._take(self._carry + chunk)
            except Exception:  # noqa: BLE001 - the thread must go on reading, or writers block
                self._carry = b""
            finally:
                with self._lock:
                    self._copying = False

    def _take(self, data: bytes) -> None:
        marker = self._marker
        while True:
            at = data.find(marker)
            if at < 0:
                keep = _marker_prefix_length(data, marker)
                self._copy(data[:len(data) - keep])
                self._carry = data[len(data) - keep:]
                return
            self._copy(data[:at])
            with self._lock:
                self._finish_segment()
            data = data[at + len(marker):]

    def _copy(self, data: bytes) -> None:
        """Write ``data`` to the current trial's log and relay its complete lines."""
        if not data:
            return
        with self._lock:
            # Nothing runs (a process a trial started writes on after it ended): that trial's.
            path, prefix = self._targets.get(self._passed, self._last)
        if path != self._log_path:
            self._close_log()
            self._log_path = path
        if self._log is None and path is not None:
            # Made at the first output: creating a file cost a silent trial a third of a
            # millisecond (more than the rest of its capture).
            try:
                self._log = os.open(path, _LOG_FLAGS, 0o644)
            except OSError:  # the console still gets the output
                self._log = -1
        if self._log is not None and self._log >= 0:
            try:
                os.write(self._log, data)
            except OSError:  # a full disk: the console still gets the output
                pass
        *lines, self._line = (self._line + data).split(b"\n")
        if lines:
            self._relay("".join(f"{prefix}{line.decode(errors='replace')}\n" for line in lines))

    def _finish_segment(self) -> None:
        """Relay the segment's unfinished line, close its log and move to the next (lock held,
        by the copying thread or while it is idle)."""
        target = self._targets.pop(self._passed, None)
        prefix = (target or self._last)[1]
        if self._line:
            self._relay(f"{prefix}{self._line.decode(errors='replace')}\n")
            self._line = b""
        self._close_log()
        if target is not None:
            self._last = target
        self._passed += 1
        self._lock.notify_all()

    def _close_log(self) -> None:
        if self._log is not None and self._log >= 0:
            try:
                os.close(self._log)
            except OSError:
                pass
        self._log, self._log_path = None, None


def _unread(fd: int) -> int:
    """Bytes waiting in the pipe."""
    buffer = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, buffer)
    return int.from_bytes(buffer, sys.byteorder)


def _marker_prefix_length(data: bytes, marker: bytes) -> int:
    """How many bytes at the end of ``data`` could begin the marker (kept until more comes)."""
    for length in range(min(len(marker) - 1, len(data)), 0, -1):
        if data.endswith(marker[:length]):
            return length
    return 0


def append(log_path: Path, text: str) -> None:
    """Add ``text`` to a trial's log after its capture ended (best effort: a full disk loses
    it, as it loses the output itself)."""
    try:
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(text if text.endswith("\n") else text + "\n")
    except OSError:
        pass


def _flush(stream: object) -> None:
    try:
        stream.flush()  # type: ignore[attr-defined]
    except (OSError, ValueError, AttributeError):
        pass
