"""A real one-node SLURM cluster on this machine, for tests (needs root).

``local_slurm_cluster(folder)`` installs ``slurm-wlm`` and ``munge`` with apt-get when
they are missing, writes ``/etc/slurm/slurm.conf`` (the job-step side of SLURM does not
honour ``SLURM_CONF``, so the file must be there; an existing one is backed up and
restored), a munge key if there is none, starts ``munged``, ``slurmctld`` and ``slurmd``
in the foreground with their state, PID and log files under ``folder/slurm`` (munged's
socket in a temporary folder under /run: munged wants every folder above it searchable
by all), waits until the node is idle and yields a ``LocalSlurm``. On the way out it
cancels what is left in the queue, stops the three daemons by PID and restores the
configuration. One such cluster at a time per machine (a lock file).

No accounting (no slurmdbd): ``sacct`` does not work; ask ``squeue`` for job states.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel")
SLURM_CONF = Path("/etc/slurm/slurm.conf")
MUNGE_KEY = Path("/etc/munge/munge.key")
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
LOCK = Path("/run/lock/imred-local-slurm.lock")
MARKER = "# Written by imred tests/slurm_cluster.py (a throw-away test cluster)."
PARTITION = "imredtest"
START_TIMEOUT = 60.0
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin"])


class SlurmUnavailableError(RuntimeError):
    """The cluster cannot be brought up here at all (not root, packages not installable)."""


class SlurmStartError(RuntimeError):
    """The daemons were started but the node did not come up."""


@dataclass(frozen=True)
class LocalSlurm:
    """A running one-node cluster."""

    partition: str
    node: str
    cpus: int
    real_memory_mb: int
    folder: Path
    slurmctld_log: Path
    slurmd_log: Path

    def run(self, *cmd: str) -> str:
        """Run a SLURM client command; its stdout (raises on failure)."""
        proc = _run([_which(cmd[0]), *cmd[1:]])
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stdout}{proc.stderr}")
        return proc.stdout


def _which(cmd: str) -> str:
    found = shutil.which(cmd, path=_SEARCH_PATH)
    if found is None:
        raise SlurmUnavailableError(f"{cmd} not found")
    return found


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as err:
        return f"  ({path}: {err})"
    return "\n".join(f"  {ln}" for ln in text[-lines:]) or "  (empty)"


# ---------------------------------------------------------------- installation


def _missing_commands() -> list[str]:
    return [c for c in COMMANDS if shutil.which(c, path=_SEARCH_PATH) is None]


def ensure_packages() -> None:
    """Install slurm-wlm and munge with apt-get if a command is missing."""
    if not _missing_commands():
        return
    if shutil.which("apt-get") is None:
        raise SlurmUnavailableError(f"{', '.join(_missing_commands())} missing and no apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = ["apt-get", "-q", "-o", "DPkg::Lock::Timeout=600"]
    install = [*apt, "install", "-y", "--no-install-recommends", *PACKAGES]
    # No init system here, but keep package scripts from starting daemons of their own.
    own_policy = not POLICY_RC_D.exists()
    if own_policy:
        POLICY_RC_D.write_text("#!/bin/sh\nexit 101\n")
        POLICY_RC_D.chmod(0o755)
    try:
        policy = _run(["apt-cache", "policy", *PACKAGES], env=env)
        steps = [[*apt, "update"], install]
        if policy.returncode == 0 and "Candidate: (none)" not in policy.stdout:
            steps = [install, [*apt, "update"], install]  # update only if the first try fails
        proc = None
        for step in steps:
            proc = _run(step, env=env)
            if step is install and proc.returncode == 0:
                break
    finally:
        if own_policy:
            POLICY_RC_D.unlink(missing_ok=True)
    if proc is None or proc.returncode != 0 or _missing_commands():
        detail = "\n".join((proc.stdout + proc.stderr).splitlines()[-8:]) if proc else ""
        raise SlurmUnavailableError(
            f"apt-get could not install {' '.join(PACKAGES)} "
            f"(still missing: {', '.join(_missing_commands()) or '-'}):\n{detail}"
        )


# --------------------------------------------------------------- configuration


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _real_memory_mb() -> int:
    """Memory to offer: the machine's total less headroom for the daemons and the OS."""
    kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    total = kib // 1024
    return max(256, min(total - 1024, int(total * 0.8)))


def slurm_conf(folder: Path, node: str, cpus: int, memory_mb: int, munge_socket: Path) -> str:
    ctld_port, slurmd_port = _free_port(), _free_port()
    return f"""{MARKER}
# Backup of the previous file, if any: {folder / "slurm.conf.orig"}
ClusterName=imredtest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={folder / "slurmctld"}
SlurmdSpoolDir={folder / "slurmd"}
SlurmctldPidFile={folder / "slurmctld.pid"}
SlurmdPidFile={folder / "slurmd.pid"}
SlurmctldLogFile={folder / "slurmctld.log"}
SlurmdLogFile={folder / "slurmd.log"}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Finished jobs stay visible to squeue this long; Snakemake's SLURM executor falls back
# to sacct (which needs accounting) when MinJobAge < 3 x its first status-check delay.
# An hour: the test reads every job's record after a run of several minutes.
MinJobAge=3600
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _ensure_munge_key() -> None:
    if MUNGE_KEY.exists():
        return
    MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
    MUNGE_KEY.write_bytes(os.urandom(1024))
    MUNGE_KEY.chmod(0o400)
    with contextlib.suppress(KeyError, PermissionError):
        shutil.chown(MUNGE_KEY, "munge", "munge")


# ------------------------------------------------------------------ processes


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def _stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Stop one daemon we started, by its PID: SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)


@contextlib.contextmanager
def _exclusive(timeout: float = 600.0) -> Iterator[None]:
    """One test cluster at a time on this machine (it owns /etc/slurm/slurm.conf)."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("w") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SlurmStartError(f"another test cluster holds {LOCK}") from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _conf_installed(text: str, backup: Path) -> Iterator[None]:
    """Put ``text`` at /etc/slurm/slurm.conf; restore what was there on the way out."""
    had = SLURM_CONF.exists()
    # A file of ours left by a killed run is not worth restoring.
    stale = had and SLURM_CONF.read_text(errors="replace").startswith(MARKER)
    if had and not stale:
        shutil.copy2(SLURM_CONF, backup)
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SLURM_CONF.write_text(text)
    try:
        yield
    finally:
        if had and not stale:
            shutil.copy2(backup, SLURM_CONF)
        else:
            SLURM_CONF.unlink(missing_ok=True)


def _node_state(node: str) -> str:
    proc = _run([_which("sinfo"), "-h", "-N", "-n", node, "-o", "%t"])
    return proc.stdout.strip() if proc.returncode == 0 else f"(sinfo: {proc.stderr.strip()})"


def _wait_idle(node: str, procs: dict[str, subprocess.Popen], logs: dict[str, Path]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    state = ""
    while time.monotonic() < deadline:
        dead = [name for name, p in procs.items() if p.poll() is not None]
        if dead:
            break
        state = _node_state(node)
        if state == "idle":
            return
        if state.startswith("inval"):  # slurmctld rejected the node's registration
            break
        time.sleep(1)
    status = ", ".join(
        f"{name} pid {p.pid} " + ("running" if p.poll() is None else f"exited {p.returncode}")
        for name, p in procs.items()
    )
    tails = "\n".join(f"--- {name} log ({log}):\n{_tail(log)}" for name, log in logs.items())
    raise SlurmStartError(
        f"SLURM node {node} did not come up (idle) within {START_TIMEOUT:.0f} s: "
        f"last sinfo state {state or '-'}; {status}.\n{tails}"
    )


def _cancel_all() -> None:
    """Cancel what is left in the queue and give slurmd time to end the job steps."""
    if _run([_which("scancel"), "--partition", PARTITION]).returncode != 0:
        return
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        proc = _run([_which("squeue"), "-h", "-p", PARTITION, "-t", "PD,R,CG", "-o", "%i"])
        if proc.returncode != 0 or not proc.stdout.strip():
            return
        time.sleep(1)


def _write_private(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400), "wb") as fh:
        fh.write(data)


@contextlib.contextmanager
def local_slurm_cluster(folder: Path) -> Iterator[LocalSlurm]:
    """Bring up munged + slurmctld + slurmd (node = this host) for the ``with`` block.

    Raises SlurmUnavailableError when not root or when apt-get cannot install the packages
    (callers skip), SlurmStartError when the node does not come up (callers fail).
    """
    if os.geteuid() != 0:
        raise SlurmUnavailableError("a local SLURM cluster needs root (daemons, /etc/slurm)")
    ensure_packages()
    folder = Path(folder).resolve() / "slurm"
    for sub in ("slurmctld", "slurmd", "munge"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    node = _run(["hostname", "-s"]).stdout.strip() or socket.gethostname().split(".")[0]
    cpus, memory = min(2, os.cpu_count() or 1), _real_memory_mb()
    logs = {
        "munged": folder / "munged.log",
        "slurmctld": folder / "slurmctld.log",
        "slurmd": folder / "slurmd.log",
    }
    procs: dict[str, subprocess.Popen] = {}
    with _exclusive(), tempfile.TemporaryDirectory(dir="/run", prefix="imred-munge-") as run:
        # munged wants every folder above its socket searchable by all (pytest's are not)
        Path(run).chmod(0o755)
        munge_socket = Path(run) / "munge.socket"
        _ensure_munge_key()
        # munged runs as root here and wants a key owned by the user it runs as: give it
        # a root-owned copy, removed as soon as munged has read it.
        key = folder / "munge" / "munge.key"
        _write_private(key, MUNGE_KEY.read_bytes())
        text = slurm_conf(folder, node, cpus, memory, munge_socket)
        with _conf_installed(text, folder / "slurm.conf.orig"):
            try:
                procs["munged"] = _start(
                    [_which("munged"), "--foreground",
                     f"--socket={munge_socket}", f"--key-file={key}",
                     f"--pid-file={folder / 'munge' / 'munged.pid'}",
                     f"--seed-file={folder / 'munge' / 'munged.seed'}",
                     f"--log-file={logs['munged']}"],
                    logs["munged"],
                )  # fmt: skip
                deadline = time.monotonic() + 15
                while not munge_socket.exists() and time.monotonic() < deadline:
                    if procs["munged"].poll() is not None:
                        break
                    time.sleep(0.2)
                key.unlink(missing_ok=True)
                procs["slurmctld"] = _start(
                    [_which("slurmctld"), "-D", "-i"], folder / "slurmctld.out"
                )
                procs["slurmd"] = _start([_which("slurmd"), "-D"], folder / "slurmd.out")
                _wait_idle(node, procs, logs)
                yield LocalSlurm(
                    partition=PARTITION,
                    node=node,
                    cpus=cpus,
                    real_memory_mb=memory,
                    folder=folder,
                    slurmctld_log=logs["slurmctld"],
                    slurmd_log=logs["slurmd"],
                )
            finally:
                key.unlink(missing_ok=True)
                if procs.get("slurmctld") and procs["slurmctld"].poll() is None:
                    with contextlib.suppress(SlurmUnavailableError, OSError):
                        _cancel_all()
                for name in ("slurmd", "slurmctld", "munged"):
                    if name in procs:
                        _stop(procs[name])
