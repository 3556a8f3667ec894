"""Starting the first workers beside the main thread where that is safe, with the thread
variables every worker inherits set around them (the fork server they start from:
fork_server.py)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .launcher import Launcher


class Starter(threading.Thread):
    """Starts the first workers beside the main thread, which meanwhile opens the study."""

    def __init__(self, launcher: Launcher, count: int) -> None:
        super().__init__(name="hparam-search-starter", daemon=True)
        self.launcher, self.count = launcher, count
        self.error: BaseException | None = None

    def start(self) -> None:
        # Only forkserver blocks on start; fork must never run beside another thread (a lock
        # held there, such as the import lock, would stay locked in the child forever).
        if self.launcher.plan.start_method == "forkserver":
            super().start()
        else:
            self.run()

    def run(self) -> None:
        try:
            for rank in range(self.count):
                self.launcher.start_worker(rank, generation=0)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread by finish()
            self.error = exc

    def join(self, timeout: float | None = None) -> None:
        if self.ident is not None:
            super().join(timeout)

    def finish(self) -> None:
        self.join()
        if self.error is not None:
            raise self.error


@contextlib.contextmanager
def environment(values: dict[str, str | None]) -> Iterator[None]:
    """Set environment variables (None: leave as is) for the block, then restore them."""
    before = {name: os.environ.get(name) for name, value in values.items() if value is not None}
    for name, value in values.items():
        if value is not None:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
