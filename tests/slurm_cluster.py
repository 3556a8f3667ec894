"""A real single-node Slurm cluster (Debian's `slurm-wlm` and `munge`) for tests.

Everything lives in one private directory under /tmp: its own MUNGE key and socket, a
`slurm.conf` on free TCP ports, state, spool, pid and log files. Clients reach it through
`SLURM_CONF` alone (the conf names the MUNGE socket), so `cluster.env` is all a subprocess
needs. Timers are tuned for tests: jobs start within 1-2 s, a requeued job may run
again about `cred_expire` (5 s, Slurm's minimum) after its old run ended, and finished jobs
are purged from slurmctld about 2-12 s after they end.

    with SlurmCluster.start() as cluster:
        subprocess.run(["sbatch", "--wrap", "true"], env=cluster.env, check=True)
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from typing_extensions import Self

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")
# Inherited from an enclosing allocation, these would redirect or reshape every client call.
_CLIENT_ENV_PREFIXES = ("SLURM_", "SBATCH_", "SQUEUE_", "SALLOC_", "SRUN_", "SINFO_", "SCANCEL_")


class SlurmStartError(RuntimeError):
    """The cluster could not be started; the message carries the relevant log tails."""


def _find(name: str) -> str | None:
    # Daemons live in /usr/sbin, which is not on every root PATH (e.g. some containers).
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")


def missing_binaries() -> list[str]:
    return [name for name in (*DAEMONS, *CLIENTS) if _find(name) is None]


def _free_ports(n: int) -> list[int]:
    # All sockets stay open until every port is picked, so the ports are distinct.
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"--- {path.name}: (missing)"
    return f"--- {path.name} (last {lines} lines):\n" + "\n".join(text.splitlines()[-lines:])


def _node_hardware(slurmd: str) -> str:
    """`CPUs=... RealMemory=...` for this machine, as slurmd itself sees it (so the node does
    not drain for a hardware mismatch)."""
    try:
        out = subprocess.run([slurmd, "-C"], capture_output=True, text=True, timeout=30,
                             check=False).stdout
        first = out.splitlines()[0].split()
        fields = dict(tok.split("=", 1) for tok in first if "=" in tok)
    except (OSError, IndexError, ValueError, subprocess.TimeoutExpired):
        fields = {}
    if "CPUs" not in fields:
        return f"CPUs={os.cpu_count() or 1}"
    fields.pop("NodeName", None)
    if "RealMemory" in fields:
        # A little under the total: a reading that dips later would otherwise drain the node.
        fields["RealMemory"] = str(max(1, int(int(fields["RealMemory"]) * 0.95)))
    return " ".join(f"{k}={v}" for k, v in fields.items())


class SlurmCluster:
    """munged + slurmctld + slurmd on this host, all owned by this object; see `start`."""

    partition = "debug"

    def __init__(self, root: Path, *, kill_wait: int, extra_conf: Sequence[str]) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.logs = root / "log"
        self.node = socket.gethostname().split(".")[0]
        self.kill_wait = kill_wait
        self.extra_conf = list(extra_conf)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._files: list[IO[bytes]] = []
        env = {k: v for k, v in os.environ.items() if not k.startswith(_CLIENT_ENV_PREFIXES)}
        env["SLURM_CONF"] = str(self.conf)
        # The daemons are in /usr/sbin; jobs and clients see the same PATH.
        if "/usr/sbin" not in env.get("PATH", "").split(":"):
            env["PATH"] = env.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin"
        self.env: dict[str, str] = env

    # ----------------------------------------------------------------------------- start
    @classmethod
    def start(cls, base_dir: Path | str | None = None, *, kill_wait: int = 5,
              extra_conf: Sequence[str] = (), timeout: float = 60.0,
              attempts: int = 3) -> SlurmCluster:
        """Start a fresh cluster in a new directory under `base_dir` (default /tmp: unix socket
        paths must stay short) and wait until its node is idle.

        `kill_wait` is Slurm's KillWait: seconds between SIGTERM and SIGKILL when a job is
        cancelled, requeued or times out. `extra_conf` lines are appended to slurm.conf (a later
        line overrides an earlier one). Raises SlurmStartError with the daemons' log tails.
        """
        missing = missing_binaries()
        if missing:
            raise SlurmStartError(f"not installed: {', '.join(missing)} "
                                  "(apt-get install slurm-wlm munge)")
        if os.geteuid() != 0:
            raise SlurmStartError("the test cluster runs its daemons as root (SlurmUser=root)")
        last: SlurmStartError | None = None
        for _ in range(attempts):
            root = Path(tempfile.mkdtemp(prefix="slurm-", dir=base_dir or "/tmp"))
            cluster = cls(root, kill_wait=kill_wait, extra_conf=extra_conf)
            try:
                cluster._start(timeout)
                return cluster
            except SlurmStartError as exc:
                cluster.stop(keep_dir=True)
                last = exc
                # A free port picked here can be taken by someone else before the daemon
                # binds it; only that race is worth another try.
                if "Address already in use" not in str(exc):
                    raise
            except BaseException:
                cluster.stop(keep_dir=True)
                raise
        assert last is not None
        raise last

    def _start(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        # munged insists that the socket's directory be reachable by everyone.
        self.root.chmod(0o755)
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(mode=0o755)
        (self.root / "keys").mkdir(mode=0o700)
        self._start_munged(deadline)
        ctld_port, slurmd_port = _free_ports(2)
        self._write_conf(ctld_port, slurmd_port)
        self._spawn("slurmctld", [_find("slurmctld") or "slurmctld", "-D", "-f", str(self.conf)])
        self._spawn("slurmd", [_find("slurmd") or "slurmd", "-D", "-f", str(self.conf),
                               "-N", self.node])
        self._wait_idle(deadline)

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    def _start_munged(self, deadline: float) -> None:
        key = self.root / "keys" / "munge.key"
        if _find("mungekey"):
            res = subprocess.run([_find("mungekey") or "mungekey", "--create", "--keyfile",
                                  str(key)], capture_output=True, text=True, timeout=30,
                                 check=False)
            if res.returncode != 0:
                raise SlurmStartError(f"mungekey failed: {res.stderr.strip()}")
        else:  # munge < 0.5.14 has no mungekey
            key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        # --force: as root munged may refuse over ownership/permission checks that do not
        # matter for a private, throw-away key.
        self._spawn("munged", [
            _find("munged") or "munged", "--foreground", "--force",
            f"--socket={self.munge_socket}", f"--key-file={key}",
            f"--pid-file={self.root / 'munge' / 'munged.pid'}",
            f"--seed-file={self.root / 'munge' / 'munged.seed'}",
            f"--log-file={self.logs / 'munged.log'}"])
        while not self.munge_socket.exists():
            self._check_alive("munged")
            if time.monotonic() > deadline:
                raise SlurmStartError("munged did not create its socket\n" + self.log_tails())
            time.sleep(0.05)

    def _write_conf(self, ctld_port: int, slurmd_port: int) -> None:
        r = self.root
        (r / "plugstack.conf").write_text("")  # keep /etc/slurm/plugstack.conf out
        lines = [
            f"ClusterName=t{re.sub('[^a-z0-9]', '', r.name.split('-')[-1].lower())}",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire is also how long a requeued job waits before it may start again
            # (Slurm's default 120 s); 5 is the smallest value Slurm accepts.
            f"AuthInfo=socket={self.munge_socket},cred_expire=5",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.logs / 'slurmctld.log'}",
            f"SlurmdLogFile={self.logs / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            f"PlugStackConfig={r / 'plugstack.conf'}",
            "MailProg=/bin/true",
            # No cgroups or systemd in a container: track job processes by parentage.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobContainerType=job_container/none",
            "SwitchType=switch/none",
            "MpiDefault=none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/backfill",
            # Schedule pending jobs every second rather than every 60 s, and start batch jobs
            # without the default 3 s batching delay.
            "SchedulerParameters=batch_sched_delay=0,sched_interval=1",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "ReturnToService=2",
            "JobRequeue=1",
            f"KillWait={self.kill_wait}",
            # Finished jobs leave slurmctld quickly (it purges every max(10, MinJobAge) s).
            "MinJobAge=2",
            "InactiveLimit=0",
            "Waittime=0",
            "OverTimeLimit=0",
            "MessageTimeout=10",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            # Trust the node line below even if the hardware reads slightly differently later.
            "SlurmdParameters=config_overrides",
            (f"NodeName={self.node} NodeHostname={self.node} NodeAddr=127.0.0.1 "
             f"{_node_hardware(_find('slurmd') or 'slurmd')} State=UNKNOWN"),
            (f"PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE "
             "State=UP OverSubscribe=NO"),
            *self.extra_conf,
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        # stderr catches what a daemon says before (or instead of) opening its log file.
        err = open(self.logs / f"{name}.stderr", "wb")  # noqa: SIM115 - closed in stop()
        self._files.append(err)
        self.procs[name] = subprocess.Popen(
            cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
            cwd=self.root, start_new_session=True)  # keep the test's Ctrl-C away from them

    def _check_alive(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise SlurmStartError(f"{name} exited with status {proc.returncode}\n"
                                  + self.log_tails())

    def _wait_idle(self, deadline: float) -> None:
        state = ""
        while True:
            for name in self.procs:
                self._check_alive(name)
            res = self.run("sinfo", "-h", "-N", "-n", self.node, "-o", "%T", check=False,
                           timeout=15)
            state = res.stdout.strip() or res.stderr.strip()
            if res.returncode == 0 and state == "idle":
                return
            if time.monotonic() > deadline:
                raise SlurmStartError(f"node {self.node} not idle in time (sinfo: {state!r})\n"
                                      + self.log_tails())
            time.sleep(0.2)

    # ----------------------------------------------------------------------------- use
    def run(self, *args: str, check: bool = True,
            timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client (`cluster.run("squeue", "-h")`) against this cluster."""
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True,
                              check=check, timeout=timeout)

    def sbatch(self, *args: str, cwd: Path | str | None = None) -> int:
        """Submit with `sbatch --parsable ARGS`; the job id (for an array, the array's id)."""
        res = subprocess.run(["sbatch", "--parsable", *args], env=self.env, cwd=cwd,
                             capture_output=True, text=True, timeout=30, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)} failed: {res.stderr.strip()}")
        return int(res.stdout.strip().split(";")[0])

    def log_tails(self, lines: int = 40) -> str:
        names = ("munged.stderr", "munged.log", "slurmctld.stderr", "slurmctld.log",
                 "slurmd.stderr", "slurmd.log")
        tails = [_tail(self.logs / n, lines) for n in names if (self.logs / n).exists()]
        return "\n".join([f"(logs in {self.logs})", *tails])

    # ----------------------------------------------------------------------------- stop
    def stop(self, *, keep_dir: bool = False, timeout: float = 15.0) -> None:
        """Cancel remaining jobs, stop the three daemons (SIGTERM, SIGKILL after `timeout`),
        kill anything still carrying this cluster's SLURM_CONF, and remove the directory
        unless `keep_dir` (logs for a failed run)."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            self._cancel_all(deadline=time.monotonic() + self.kill_wait + 5)
        # slurmd first so it does not try to report to a vanished controller; munged last.
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout)
        self._kill_strays()
        for f in self._files:
            f.close()
        self._files.clear()
        if not keep_dir:
            shutil.rmtree(self.root, ignore_errors=True)

    def _cancel_all(self, deadline: float) -> None:
        try:
            ids = self.run("squeue", "-h", "-o", "%A", check=False, timeout=15).stdout.split()
            if ids:
                self.run("scancel", *ids, check=False, timeout=15)
            # Let slurmstepd clean up (SIGTERM, KillWait, SIGKILL) before the daemons go.
            while time.monotonic() < deadline:
                if not self.run("squeue", "-h", "-o", "%A", check=False,
                                timeout=15).stdout.strip():
                    return
                time.sleep(0.2)
        except subprocess.TimeoutExpired:
            pass

    def _stray_pids(self) -> Iterator[int]:
        """Processes of this cluster that outlived the daemons: slurmstepd (it detaches into
        its own session) and job processes. Both inherit this cluster's SLURM_CONF."""
        marker = f"SLURM_CONF={self.conf}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    yield int(entry.name)
            except OSError:
                continue

    def _kill_strays(self) -> None:
        for pid in self._stray_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop(keep_dir=exc_type is not None)


@pytest.fixture(scope="session")
def slurm_cluster(request: pytest.FixtureRequest) -> Iterator[SlurmCluster]:
    """One real Slurm cluster for the session. Skips when Slurm cannot start, but fails under
    CI, where .ci/run installs slurm-wlm and munge. Its directory (logs included) is kept when
    a test failed."""
    cluster: SlurmCluster | None = None
    reason = ""
    try:
        # KillWait 15 s (Slurm's default is 30): room for a launcher's stop_grace and its
        # end-of-run summary on a loaded 2-core machine before SIGKILL.
        cluster = SlurmCluster.start(kill_wait=15)
    except (SlurmStartError, OSError, subprocess.SubprocessError) as exc:
        reason = f"cannot start a Slurm test cluster: {exc}"
    if cluster is None:
        # Outside the except block, so the report is not chained to the start-up traceback.
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    try:
        yield cluster
    finally:
        keep = request.session.testsfailed > 0
        cluster.stop(keep_dir=keep)
        if keep:
            print(f"\nSlurm test cluster files kept in {cluster.root}")
