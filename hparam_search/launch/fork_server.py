"""The fork server the workers start from: what it imports before the first trial, and how it
starts (as soon as the config is read: a fork of the launcher itself while that is still
clean, else a new interpreter, as multiprocessing starts one)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import TYPE_CHECKING

from .starting import environment

if TYPE_CHECKING:
    from ..config import SearchConfig

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
# The same for multiprocessing's resource tracker when it is a fork of the launcher.
TRACKER_NAME = "hparam-tracker"


def _open_fds() -> dict[int, str] | None:
    """This process's open file descriptors and what each is open on; None where /proc does
    not say (not Linux)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return None
    fds = {}
    for name in names:
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the listing's own, closed by now
            continue
    return fds


# What this process had open when the package was imported (its standard streams, and whatever
# the shell or the parent left open): anything opened later is the script's, which a fork of
# the launcher would hold open in the fork server.
FDS_AT_IMPORT = _open_fds()


def start_fork_server(url: str, cfg: SearchConfig, *, from_script: bool) -> None:
    """Start the fork server now, so that its imports (Optuna, the storage's driver) are done
    before the first worker is wanted: the server is the longest path to the first trial. It
    is started under the thread variables the workers inherit.

    While the launcher is still clean (see ``_launcher_is_clean``; the search run from the
    script itself), the server is a fork of the launcher taken right after the launcher has
    imported what the server would: one interpreter start and one import of Optuna instead of
    two that run side by side and slow each other down (the first trial 0.15 s sooner on 2
    cores). Otherwise it is multiprocessing's own, a new interpreter."""
    import multiprocessing.forkserver

    from ..settings import thread_environment, threads_for_workers

    threads = threads_for_workers(cfg.threads_per_worker, cfg.n_jobs)
    preload = preload_for(url)
    multiprocessing.get_context("forkserver").set_forkserver_preload(preload)
    with environment(dict(thread_environment(threads))):
        if not (from_script and _launcher_is_clean() and _fork_server_from_launcher(preload)):
            multiprocessing.forkserver.ensure_running()


def _launcher_is_clean() -> bool:
    """Whether a fork of this process is as good a fork server as a new interpreter:
    - no other thread (the user's, a CUDA context's, a thread pool's): a lock one holds would
      stay locked in every fork;
    - nothing opened since the package was imported (a file, a socket, a pipe to a
      subprocess), and multiprocessing's resource tracker not started: the server would hold
      it open;
    - numpy not imported: it sizes its thread pool from the thread variables when imported,
      and these are only set now;
    - Linux, and a multiprocessing whose fork server this module knows (3.10 to 3.13)."""
    import multiprocessing.forkserver

    if not sys.platform.startswith("linux") or sys.version_info >= (3, 14):
        return False
    if multiprocessing.forkserver._forkserver._forkserver_pid is not None:
        return False
    if "numpy" in sys.modules or _tracker_running():
        return False
    try:
        threads = len(os.listdir("/proc/self/task"))
    except OSError:
        return False
    # The same descriptors, open on the same things (a number reused for a new pipe differs).
    return threads == 1 and FDS_AT_IMPORT is not None and _open_fds() == FDS_AT_IMPORT


def _tracker_running() -> bool:
    """Whether multiprocessing's resource tracker was started (its pipe may predate the
    package's import)."""
    from multiprocessing import resource_tracker

    return getattr(resource_tracker._resource_tracker, "_fd", None) is not None


def _fork_server_from_launcher(preload: list[str]) -> bool:
    """Import ``preload`` here, then fork the fork server: what ``ensure_running`` does with a
    new interpreter, with a fork of this one. multiprocessing then uses it as its own. False
    when the fork failed (nothing is left behind)."""
    import importlib
    import socket
    from multiprocessing import connection, forkserver, resource_tracker, util

    for name in preload:
        with contextlib.suppress(ImportError):  # as the server's own preload does
            importlib.import_module(name)
    with socket.socket(socket.AF_UNIX) as listener:
        address = connection.arbitrary_address("AF_UNIX")
        listener.bind(address)
        if not util.is_abstract_socket_namespace(address):
            os.chmod(address, 0o600)
        listener.listen()
        alive_r, alive_w = os.pipe()
        pid, launcher_name, mask = _fork_named(SERVER_NAME)
        if pid == 0:
            _serve(listener.fileno(), alive_r, alive_w, launcher_name, mask)
        os.close(alive_r)
        if pid < 0:
            os.close(alive_w)
            return False
    server = forkserver._forkserver
    server._forkserver_address = address
    server._forkserver_alive_fd = alive_w
    server._forkserver_pid = pid
    # Only now, so that the server does not hold the tracker's pipe: the tracker ends when
    # every holder has closed it, and Pythons that wait for it at exit would wait forever.
    if not _tracker_from_launcher():
        resource_tracker.ensure_running()
    return True


def _tracker_from_launcher() -> bool:
    """Start multiprocessing's resource tracker as a fork of the launcher, as the fork server
    is: what ``ensure_running`` does with a new interpreter (about 0.05 s of CPU beside the
    first trials on 2 cores), with a fork that holds nothing but its pipe and the standard
    streams. False when the fork failed (nothing is left behind)."""
    from multiprocessing import resource_tracker

    if _tracker_running():  # one was started meanwhile (by a preloaded module)
        return True
    read_end, write_end = os.pipe()
    if min(read_end, write_end) < 3:  # a standard stream was closed: the tracker would close it
        os.close(read_end)
        os.close(write_end)
        return False
    pid, _, mask = _fork_named(TRACKER_NAME)
    if pid == 0:
        _track(read_end, mask)
    os.close(read_end)
    if pid < 0:
        os.close(write_end)
        return False
    tracker = resource_tracker._resource_tracker
    tracker._fd, tracker._pid = write_end, pid
    return True


def _fork_named(name: str) -> tuple[int, str | None, set[signal.Signals]]:
    """Fork; the child has ``name`` from its first instant, and SIGINT and SIGTERM blocked
    until it has left the launcher's code (nor does the launcher carry that name, or block
    them, once this returns or raises). The pid (0 in the child, -1 when the fork failed),
    the launcher's name (None: unknown) and its signal mask, for the child to restore."""
    import warnings

    for stream in (sys.stdout, sys.stderr):  # else the fork writes it out again
        with contextlib.suppress(Exception):
            stream.flush()
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    launcher_name = _set_name(name)
    pid = -1
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns of any fork beside another thread; the only ones here are
            # numpy's BLAS pool (imported by the preload), which OpenBLAS stops around a fork.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError:
        pid = -1
    finally:
        if pid != 0:
            if launcher_name is not None:
                _set_name(launcher_name)
            signal.pthread_sigmask(signal.SIG_SETMASK, before)
    return pid, launcher_name, before


def _drop_script_handlers() -> None:
    """Signal dispositions as a new interpreter has them: none of the script's handlers,
    Python's own for SIGINT, and SIGPIPE and SIGXFSZ ignored (a script may have set SIGPIPE
    back to the default, which kills a process at its first write to a closed pipe)."""
    for sig in signal.valid_signals():
        with contextlib.suppress(OSError, ValueError, TypeError):
            handler = signal.getsignal(sig)
            if sig == signal.SIGINT:
                signal.signal(sig, signal.default_int_handler)
            elif sig in (getattr(signal, "SIGPIPE", None), getattr(signal, "SIGXFSZ", None)):
                signal.signal(sig, signal.SIG_IGN)
            elif callable(handler):
                signal.signal(sig, signal.SIG_DFL)


def _close_all_but(keep: int) -> None:
    """Close every descriptor above the standard streams but ``keep``: those open, as listed
    in /proc (a range up to the limit may mean a million calls without ``close_range``)."""
    listed = _open_fds()
    for fd in listed if listed is not None else range(3, os.sysconf("SC_OPEN_MAX")):
        if fd > 2 and fd != keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _track(read_end: int, mask: set[signal.Signals]) -> None:
    """The resource tracker, in the fork: every descriptor closed but its pipe and the
    standard streams (a copy of the fork server's or a worker's pipe would keep them waiting),
    Python's own stderr, excepthook and warning filters back (the script's could hide or
    break its report of what it cleaned up), then multiprocessing's own loop, which ends when
    every holder of the pipe has closed it. Never returns into the launcher's code."""
    import gc
    import traceback
    import warnings

    code = 0
    try:
        _close_all_but(read_end)
        # Its loop lives as long as the search: no full collection of the launcher's objects,
        # which would copy the pages it shares with the launcher.
        gc.freeze()
        _drop_script_handlers()
        sys.stderr, sys.excepthook = sys.__stderr__, sys.__excepthook__
        warnings.resetwarnings()
        # Its loop ignores SIGINT and SIGTERM, then unblocks them: a Ctrl-C of the whole
        # group leaves the tracker to clean up after the workers, as it is meant to.
        signal.pthread_sigmask(signal.SIG_SETMASK, mask | {signal.SIGINT, signal.SIGTERM})
        from multiprocessing import resource_tracker

        resource_tracker.main(read_end)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - reported, then the process ends
        code = 1
        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stderr.flush()
        os._exit(code)


def _serve(listener_fd: int, alive_r: int, alive_w: int, launcher_name: str | None,
           mask: set[signal.Signals]) -> None:
    """The fork server, in the fork: first made what a new interpreter would be (no handler of
    the script's for any signal, no script as ``__main__``: each worker imports it again as
    ``__mp_main__``), then multiprocessing's own loop. Never returns into the launcher's
    code; says why if it fails, as a new interpreter would."""
    import traceback
    import types
    from multiprocessing import forkserver

    code = 0
    try:
        os.close(alive_w)  # it ends when the launcher and every worker are gone
        _drop_script_handlers()
        sys.modules["__main__"] = sys.modules["__mp_main__"] = types.ModuleType("__main__")
        if launcher_name is not None:
            server = os.getpid()

            def rename_worker() -> None:  # not the processes a worker forks in turn
                if os.getppid() == server:
                    _set_name(launcher_name)

            os.register_at_fork(after_in_child=rename_worker)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        forkserver.main(listener_fd, alive_r, [])
    except (SystemExit, KeyboardInterrupt):
        pass
    except BaseException:  # noqa: BLE001 - reported, then the process ends
        code = 1
        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        os._exit(code)


def _set_name(name: str) -> str | None:
    """Set this process's name in /proc/self/comm; return the one before (None: cannot)."""
    try:
        with open("/proc/self/comm") as f:
            before = f.read().strip()
        with open("/proc/self/comm", "w") as f:
            f.write(name)
    except OSError:
        return None
    return before
