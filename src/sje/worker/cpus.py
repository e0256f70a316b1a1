"""Which CPUs a worker's child processes run on (``task-cpu-affinity``).

``spread`` (the default): when the worker has at least one child for every CPU it may use
(``concurrency`` >= its CPUs, as with the default ``concurrency``), each new child is pinned to
a CPU that no SJE child on this host is pinned to yet (the host's ``sje.worker.child``
processes, as the kernel reports their affinity), so there is one pinned child per CPU; the
others, this worker's beyond one per CPU and those of a second worker on the host, run
anywhere. The pinned children neither queue behind each other on one CPU while another idles,
nor move between CPUs and lose their caches. With fewer children than CPUs nothing is pinned,
so a task may use several CPUs (threads, subprocesses). ``off``: children run wherever the
kernel puts them. A task's threads and subprocesses share its child's CPU.

Workers starting at the same moment take turns: the scan and the pinning run under an
exclusive ``flock`` on a lock file in the temporary directory (``LOCK_PATH``), so two of them
never both see a CPU free and both pin to it. A lock held past ``_LOCK_WAIT_S`` (a stuck
process) or a lock file that cannot be opened is not waited for: the worker places its
children without it from then on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

#: how a worker starts its children (``python -m sje.worker.child ...``)
CHILD_MODULE = "sje.worker.child"
#: the host's workers take turns placing children under a lock on this file
LOCK_PATH = Path(tempfile.gettempdir()) / "sje-cpu-placement.lock"
_LOCK_WAIT_S = 2.0
_LOCK_RETRY_S = 0.005


@contextlib.contextmanager
def host_lock(path: Path, wait_s: float = _LOCK_WAIT_S) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (created readable by every user, so the workers
    of all users share it); yields whether it is held. Gives up after ``wait_s``."""
    try:
        fd = os.open(path, os.O_RDONLY)  # another user's file: opened without O_CREAT
    except FileNotFoundError:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o444)
            with contextlib.suppress(OSError):  # whatever the umask: readable by every user
                os.fchmod(fd, 0o444)
        except OSError:
            fd = -1
    except OSError:
        fd = -1
    if fd < 0:
        yield False
        return
    try:
        held, end = False, time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= end:
                    break
                time.sleep(_LOCK_RETRY_S)
        yield held
    finally:
        os.close(fd)  # releases the lock


def pinned_children(exclude: set[int]) -> Counter[int]:
    """CPU -> how many SJE child processes on this host (other than ``exclude``) are pinned to
    it alone; processes this user may not inspect are not counted."""
    taken: Counter[int] = Counter()
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.pid in exclude or CHILD_MODULE not in cmdline:
            continue
        try:
            affinity = proc.cpu_affinity()
        except psutil.Error:
            continue
        if affinity is not None and len(affinity) == 1:
            taken[affinity[0]] += 1
    return taken


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask: taskset, cpusets)."""
    if not hasattr(os, "sched_getaffinity"):
        return []
    return sorted(os.sched_getaffinity(0))


class CpuPlacement:
    """Pins each new child to the lowest CPU no SJE child on the host is pinned to; forgets a
    child when it is gone. Thread-safe: the pool places children from worker threads, since a
    scan of the host's processes takes ~20 µs per process."""

    def __init__(
        self,
        children: int,
        mode: str,
        cpus: list[int] | None = None,
        neighbours: Callable[[set[int]], Counter[int]] | None = None,
        lock_path: Path = LOCK_PATH,
        lock_wait_s: float = _LOCK_WAIT_S,
    ) -> None:
        """``cpus``: the CPUs this worker may use (default: its affinity); ``neighbours``:
        CPU -> SJE children pinned to it, other than the pids given (default: the host's);
        ``lock_path``: the lock file the host's workers place their children under, waited
        for up to ``lock_wait_s``."""
        allowed = usable_cpus() if cpus is None else cpus
        self._neighbours = neighbours or pinned_children
        spread = mode == "spread" and len(allowed) > 1 and children >= len(allowed)
        self.cpus = allowed if spread else []
        self.mode = mode
        self._allowed = len(allowed)
        self._children = children
        self._held: dict[int, int] = {}  # child pid -> its CPU
        self._lock = threading.Lock()
        self._lock_path: Path | None = lock_path  # None: placing without it from now on
        self._lock_wait_s = lock_wait_s

    def place(self, pid: int) -> int | None:
        """Pin the child ``pid``; its CPU, or None when it may run anywhere."""
        if not self.cpus:
            return None
        with self._lock:
            path = self._lock_path
            if path is None:
                return self._place(pid)
            with host_lock(path, self._lock_wait_s) as held:
                if not held:  # not waited for again: each child would wait as long
                    self._lock_path = None
                    log.warning(
                        "placing children without the host's CPU placement lock %s: it cannot "
                        "be opened or locked, or another process has held it for %gs (a "
                        "stopped worker?)",
                        path,
                        self._lock_wait_s,
                    )
                return self._place(pid)

    def _place(self, pid: int) -> int | None:
        taken = Counter(self._held.values()) + self._neighbours({pid, *self._held})
        free = [cpu for cpu in self.cpus if not taken[cpu]]
        if not free:
            return None
        cpu = free[0]
        try:
            os.sched_setaffinity(pid, {cpu})
        except OSError as exc:  # the CPU was taken from this worker's set meanwhile
            log.warning("child %d runs on any CPU: pinning it to CPU %d failed: %s", pid, cpu, exc)
            return None
        self._held[pid] = cpu
        return cpu

    def forget(self, pid: int) -> None:
        with self._lock:
            self._held.pop(pid, None)

    def cpu_of(self, pid: int) -> int | None:
        return self._held.get(pid)

    def describe(self) -> str:
        """One line for the worker's start-up output."""
        if self.cpus and not self._held:
            return "children run on any CPU (each CPU has an SJE child pinned to it already)"
        if self.cpus:
            where = ", ".join(str(c) for c in sorted(self._held.values()))
            rest = self._children - len(self._held)
            more = f"; {rest} more on any CPU" if rest else ""
            return f"children pinned to CPUs {where}{more} (task-cpu-affinity spread)"
        if self.mode != "spread":
            return "children run on any CPU (task-cpu-affinity off)"
        if self._allowed <= 1:
            return "children run on any CPU (this worker may use one CPU: nothing to spread)"
        n = self._children
        return (
            f"children run on any CPU ({n} {'child' if n == 1 else 'children'} for "
            f"{self._allowed} CPUs: pinned only with a child for every CPU)"
        )
