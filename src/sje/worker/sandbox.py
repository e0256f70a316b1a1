"""Task isolation for a worker's child processes: what is asked for, what the kernel allows.

``prepare`` runs once in the worker before any child starts. It makes the worker a child
subreaper, looks for a writable pids cgroup, checks the task user and whether a private network
namespace can be had, and returns the ``Isolation`` in force; it raises ``WorkerError`` when an
explicit request (``task-network: none``, ``task-user``) cannot be honoured. Each child applies
its part (``Isolation.child_spec``) in ``sje.worker.child`` before it imports any task code.
``Isolation.describe`` states only what really applies, so the start-up line never overclaims.
"""

from __future__ import annotations

import ctypes
import errno
import os
import pwd
import resource
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psutil

from sje.errors import WorkerError
from sje.worker.cgroups import ChildCgroup, PidsCgroups, find_pids_cgroups

if TYPE_CHECKING:
    from sje.config import WorkerSettings

_PR_SET_CHILD_SUBREAPER = 36
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000

#: environment variables every child keeps (``*`` ends a prefix); never any ``SJE_*``
BASE_ENV = ("PATH", "HOME", "LANG", "LC_*", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")

_UNSHARE_PROBE = (
    "import ctypes, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "sys.exit(0 if libc.unshare(int(sys.argv[1])) == 0 else 100 + ctypes.get_errno())\n"
)


@dataclass(frozen=True)
class TaskLimits:
    """What the operator asked for, from ``WorkerSettings`` (0 means unlimited)."""

    memory_mb: int = 0
    cpu_seconds: int = 0
    max_files: int = 0
    max_processes: int = 0
    nice: int = 0
    user: str | None = None
    network: str = "allow"
    env: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, s: WorkerSettings) -> TaskLimits:
        return cls(
            memory_mb=s.task_memory_mb,
            cpu_seconds=s.task_cpu_seconds,
            max_files=s.task_max_files,
            max_processes=s.task_max_processes,
            nice=s.task_nice,
            user=s.task_user or None,
            network=s.task_network,
            env=tuple(s.task_env),
        )


@dataclass(frozen=True)
class TaskUser:
    """The unprivileged account children switch to after applying their limits."""

    name: str
    uid: int
    gid: int
    home: str


# -- user, network, subreaper --------------------------------------------------------------


def resolve_task_user(name: str | None, euid: int) -> TaskUser | None:
    """The account to run tasks as; None when children keep the worker's own user."""
    if not name:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise WorkerError(
            f"task-user '{name}' does not exist on this machine; create that user or unset "
            "task-user."
        ) from None
    if entry.pw_uid == euid:
        return None
    if euid != 0:
        raise WorkerError(
            f"task-user '{name}' needs the worker to run as root (it runs as uid {euid}); "
            "start the worker as root or unset task-user."
        )
    return TaskUser(name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def network_flags(network: str, euid: int) -> int:
    """The unshare() flags a child needs for ``task-network`` (0: it shares the worker's)."""
    if network != "none":
        return 0
    return CLONE_NEWNET if euid == 0 else CLONE_NEWUSER | CLONE_NEWNET


def unshare_problem(flags: int) -> str | None:
    """Why a process here cannot unshare() with ``flags``, or None when it can.

    Probed in a short-lived interpreter: unsharing in the worker itself would cut it off.
    """
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _UNSHARE_PROBE, str(flags)],
            capture_output=True,
            timeout=30,
            env={},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode == 0:
        return None
    code = done.returncode - 100
    if code in errno.errorcode:
        return os.strerror(code)
    return f"the probe exited with code {done.returncode}"


def set_child_subreaper() -> bool:
    """Adopt orphaned descendants (Linux): a task's setsid() grandchild stays ours to reap."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def death_hint(returncode: int | None) -> str:
    """Why a child process that ended with ``returncode`` most likely died."""
    if returncode == -signal.SIGXCPU:
        return "it used more CPU time than task-cpu-seconds allows"
    return "it may have run out of memory or crashed in native code"


def threads_of_user(uid: int) -> int:
    """Processes and threads the user runs now: RLIMIT_NPROC counts them all."""
    total = 0
    for proc in psutil.process_iter(["uids", "num_threads"]):
        uids, threads = proc.info["uids"], proc.info["num_threads"]
        if uids is not None and uids.real == uid and threads:
            total += int(threads)
    return total


def scrub_env(
    environ: Mapping[str, str], allowed: Iterable[str], home: str | None = None
) -> dict[str, str]:
    """Only the allowed variables (``BASE_ENV`` and ``allowed``), never an ``SJE_*`` one."""
    exact = {p for p in (*BASE_ENV, *allowed) if not p.endswith("*")}
    prefixes = tuple(p[:-1] for p in (*BASE_ENV, *allowed) if p.endswith("*"))
    env = {
        k: v
        for k, v in environ.items()
        if not k.startswith("SJE_") and (k in exact or (prefixes and k.startswith(prefixes)))
    }
    if home is not None:
        env["HOME"] = home
    return env


# -- what is in force ----------------------------------------------------------------------


@dataclass(frozen=True)
class Isolation:
    """The isolation this worker's children get, decided once by ``prepare``.

    ``process_guard`` says what enforces ``max_processes``: ``cgroup`` (pids.max, per child),
    ``rlimit`` (RLIMIT_NPROC ``nproc``, per user), ``watchdog`` (the pool counts descendants
    and kills the tree) or ``none``.
    """

    limits: TaskLimits
    subreaper: bool
    euid: int
    user: TaskUser | None = None
    cgroups: PidsCgroups | None = None
    process_guard: str = "none"
    nproc: int = 0
    max_files: int = 0
    unshare: int = 0

    def child_env(self, environ: Mapping[str, str]) -> dict[str, str]:
        return scrub_env(environ, self.limits.env, self.user.home if self.user else None)

    def child_spec(self, cgroup: ChildCgroup | None) -> dict[str, Any]:
        """The JSON a child applies to itself at start-up (see ``sje.worker.child``)."""
        return {
            "cgroup": str(cgroup.path) if cgroup else None,
            "memory_mb": self.limits.memory_mb,
            "cpu_seconds": self.limits.cpu_seconds,
            "max_files": self.max_files,
            "nproc": self.nproc,
            "nice": self.limits.nice,
            "unshare": self.unshare,
            "user": self.user.name if self.user else None,
            "uid": self.user.uid if self.user else None,
            "gid": self.user.gid if self.user else None,
        }

    def describe(self) -> str:
        """One line for the worker's start-up output."""
        lim = self.limits
        parts = ["own process group", "subreaper" if self.subreaper else "no subreaper"]
        parts.append(f"memory {lim.memory_mb} MB" if lim.memory_mb else "memory unlimited")
        parts.append(f"cpu {lim.cpu_seconds} s per task" if lim.cpu_seconds else "cpu unlimited")
        parts.append(f"files {self.max_files}" if self.max_files else "files unlimited")
        parts.append(self._describe_processes())
        parts.append(f"uid {self.user.name if self.user else _user_name(self.euid)}")
        parts.append(f"nice +{lim.nice}" if lim.nice else "nice unchanged")
        parts.append("env scrubbed")
        parts.append("no network" if self.unshare else "network allowed")
        return ", ".join(parts)

    def _describe_processes(self) -> str:
        n = self.limits.max_processes
        if self.process_guard == "cgroup":
            return f"processes {n} per child (pids cgroup)"
        if self.process_guard == "rlimit":
            return f"processes {self.nproc} for the user (rlimit; no writable pids cgroup)"
        if self.process_guard == "watchdog":
            return f"processes {n} per child (watchdog; no writable pids cgroup)"
        return "processes unlimited"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _effective_max_files(requested: int) -> int:
    if not requested:
        return 0
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return requested if hard == resource.RLIM_INFINITY else min(requested, hard)


def choose_process_guard(
    limits: TaskLimits, cgroups: PidsCgroups | None, child_uid: int, pool_size: int
) -> tuple[str, int]:
    """What enforces ``max_processes`` (see ``Isolation``), and the RLIMIT_NPROC to set.

    RLIMIT_NPROC counts every process and thread of a user and binds no root process, so it
    serves only children that are not root, sized for all of the pool plus what runs already.
    """
    if not limits.max_processes:
        return "none", 0
    if cgroups is not None:
        return "cgroup", 0
    if child_uid != 0:
        return "rlimit", limits.max_processes * pool_size + threads_of_user(child_uid)
    return "watchdog", 0


def prepare(limits: TaskLimits, pool_size: int) -> Isolation:
    """Probe this machine and decide what isolation the children get (in the worker)."""
    euid = os.geteuid()
    user = resolve_task_user(limits.user, euid)
    flags = network_flags(limits.network, euid)
    if flags:
        problem = unshare_problem(flags)
        if problem is not None:
            raise WorkerError(
                f"task-network is none but this machine cannot give tasks their own network "
                f"namespace (unshare: {problem}); run the worker as root or enable user "
                "namespaces, or set task-network: allow."
            )
    subreaper = set_child_subreaper()
    cgroups = find_pids_cgroups(os.getpid()) if limits.max_processes else None
    guard, nproc = choose_process_guard(limits, cgroups, user.uid if user else euid, pool_size)
    return Isolation(
        limits=limits,
        subreaper=subreaper,
        euid=euid,
        user=user,
        cgroups=cgroups,
        process_guard=guard,
        nproc=nproc,
        max_files=_effective_max_files(limits.max_files),
        unshare=flags,
    )
