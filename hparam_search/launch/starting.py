"""Starting the first workers: the fork server as soon as the config is read, the workers
beside the main thread where that is safe, with the thread variables every worker inherits set
around them."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import SearchConfig
    from .launcher import Launcher

# What the trial loop imports: a forkserver imports these once for every worker. Not
# SQLAlchemy: the fast paths do without it (a fifth of a second per start).
PRELOAD = ("optuna.samplers", "hparam_search.launch.worker", "hparam_search.storage.sqlite")
# What each kind of storage adds, otherwise imported by every worker when it opens the storage
# (PostgreSQL's driver: ~0.1 s a worker, on the way to its first trial). Others: SQLAlchemy.
DRIVERS = {"sqlite:": (), "journal:": (),
           "postgresql+psycopg:": ("hparam_search.storage.postgres", "psycopg")}


def preload_for(url: str) -> list[str]:
    """The modules to import before the first trial of a search stored at ``url``."""
    extra = next((mods for prefix, mods in DRIVERS.items() if url.startswith(prefix)),
                 ("sqlalchemy.orm",))
    return [*PRELOAD, *extra]


def start_fork_server(url: str, cfg: SearchConfig) -> None:
    """Start the fork server now, so that its imports (Optuna, the storage's driver) run while
    the launcher imports its own modules and opens the study: the server is the longest path
    to the first trial. It is started under the thread variables the workers inherit."""
    import multiprocessing.forkserver

    from ..settings import thread_environment, threads_for_workers

    threads = threads_for_workers(cfg.threads_per_worker, cfg.n_jobs)
    multiprocessing.get_context("forkserver").set_forkserver_preload(preload_for(url))
    with environment(dict(thread_environment(threads))):
        multiprocessing.forkserver.ensure_running()


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
