"""Capture one trial's stdout and stderr at the file-descriptor level (print, C extensions and
child processes alike): every line goes to the trial's log file and, prefixed with the trial
number and worker, to the launcher for the console."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_CHUNK = 65536


@contextmanager
def captured(log_path: Path, prefix: str, relay: Callable[[str], None]) -> Iterator[None]:
    """While the block runs, fds 1 and 2 write into a pipe; a thread copies what arrives to
    ``log_path`` and hands complete lines, prefixed, to ``relay``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        _flush(stream)
    read_fd, write_fd = os.pipe()
    saved = (os.dup(1), os.dup(2))
    pump = threading.Thread(target=_pump, args=(read_fd, log_path, prefix, relay),
                            name="hparam-search-capture", daemon=True)
    pump.start()
    os.dup2(write_fd, 1)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            _flush(stream)
        os.dup2(saved[0], 1)  # the pipe's last write end closes: the pump sees EOF
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        # A process train started may still hold the pipe open; do not wait on it forever.
        pump.join(timeout=2.0)


def _pump(read_fd: int, log_path: Path, prefix: str, relay: Callable[[str], None]) -> None:
    pending = b""
    log = _open_log(log_path)
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while True:
            chunk = pipe.read(_CHUNK)
            if not chunk:
                break
            if log is not None:
                try:
                    log.write(chunk)
                except OSError:  # a full disk: the console still gets the output
                    log.close()
                    log = None
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if lines:
                relay("".join(f"{prefix}{line.decode(errors='replace')}\n" for line in lines))
        if pending:
            relay(f"{prefix}{pending.decode(errors='replace')}\n")
    if log is not None:
        try:
            log.close()
        except OSError:
            pass


def _open_log(log_path: Path) -> Any:
    try:
        return open(log_path, "ab", buffering=0)  # noqa: SIM115 - closed by _pump
    except OSError:
        return None


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
