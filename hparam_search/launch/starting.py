"""Starting the first workers: the fork server as soon as the config is read (a fork of the
launcher itself while that is still clean), the workers beside the main thread where that is
safe, with the thread variables every worker inherits set around them."""

from __future__ import annotations

import contextlib
import os
import sys
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


# The name the fork server takes in /proc/<pid>/comm when it is a fork of the launcher (its
# command line is the launcher's): how tools tell it from the workers. At most 15 characters.
SERVER_NAME = "hparam-forksrv"


def start_fork_server(url: str, cfg: SearchConfig, *, from_script: bool) -> None:
    """Start the fork server now, so that its imports (Optuna, the storage's driver) are done
    before the first worker is wanted: the server is the longest path to the first trial. It
    is started under the thread variables the workers inherit.

    While the launcher is still clean (one thread, numpy not yet imported; the search run from
    the script itself), the server is a fork of the launcher taken right after the launcher has
    imported what the server would: one interpreter start and one import of Optuna instead of
    two that run side by side and slow each other down (0.15 s of a 0.45 s start on 2 cores).
    Otherwise it is multiprocessing's own, a new interpreter."""
    import multiprocessing.forkserver

    from ..settings import thread_environment, threads_for_workers

    threads = threads_for_workers(cfg.threads_per_worker, cfg.n_jobs)
    preload = preload_for(url)
    multiprocessing.get_context("forkserver").set_forkserver_preload(preload)
    with environment(dict(thread_environment(threads))):
        if from_script and _launcher_is_clean():
            _fork_server_from_launcher(preload)
        else:
            multiprocessing.forkserver.ensure_running()


def _launcher_is_clean() -> bool:
    """Whether a fork of this process is as good a fork server as a new interpreter: no other
    thread (the user's, a CUDA context's, a thread pool's: a lock one holds would stay locked
    in every fork), numpy not imported (it sizes its thread pool from the thread variables
    when imported, and these are only set now), and a multiprocessing whose fork server this
    module knows (3.10 to 3.13)."""
    import multiprocessing.forkserver

    if not sys.platform.startswith("linux") or sys.version_info >= (3, 14):
        return False
    server = multiprocessing.forkserver._forkserver
    if server._forkserver_pid is not None or "numpy" in sys.modules:
        return False
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def _fork_server_from_launcher(preload: list[str]) -> None:
    """Import ``preload`` here, then fork the fork server: what ``ensure_running`` does with a
    new interpreter, with a fork of this one. multiprocessing then uses it as its own."""
    import importlib
    import socket
    import types
    import warnings
    from multiprocessing import connection, forkserver, resource_tracker, util

    for name in preload:
        with contextlib.suppress(ImportError):  # as the server's own preload does
            importlib.import_module(name)
    # Not under the server's lock: a lock held across the fork stays held in the server and
    # in every worker. Nothing else runs yet (the launcher is one thread).
    resource_tracker.ensure_running()
    with socket.socket(socket.AF_UNIX) as listener:
        address = connection.arbitrary_address("AF_UNIX")
        listener.bind(address)
        if not util.is_abstract_socket_namespace(address):
            os.chmod(address, 0o600)
        listener.listen()
        alive_r, alive_w = os.pipe()
        for stream in (sys.stdout, sys.stderr):  # else the fork writes it out again
            with contextlib.suppress(Exception):
                stream.flush()
        with warnings.catch_warnings():
            # Python 3.12+ warns of any fork beside another thread; the only ones here are
            # numpy's BLAS pool (imported just now), which OpenBLAS stops around a fork.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the server: never returns into the launcher's code
            try:
                os.close(alive_w)  # it ends when the launcher and every worker are gone
                _become_server()
                # Workers import the script again as __mp_main__, as from a new server.
                sys.modules["__main__"] = types.ModuleType("__main__")
                forkserver.main(listener.fileno(), alive_r, [])
            finally:
                os._exit(0)
        os.close(alive_r)
    server = forkserver._forkserver
    server._forkserver_address = address
    server._forkserver_alive_fd = alive_w
    server._forkserver_pid = pid


def _become_server() -> None:
    """Name the server in /proc (its command line is the launcher's); each worker forked from
    it takes the launcher's name back."""
    try:
        with open("/proc/self/comm") as f:
            name = f.read().strip()
        with open("/proc/self/comm", "w") as f:
            f.write(SERVER_NAME)
    except OSError:
        return

    def rename() -> None:
        with contextlib.suppress(OSError), open("/proc/self/comm", "w") as f:
            f.write(name)

    os.register_at_fork(after_in_child=rename)


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
