"""Which CPUs a worker's child processes run on (``task-cpu-affinity``).

``spread`` (the default): when the worker has at least one child for every CPU it may use
(``concurrency`` >= its CPUs, as with the default ``concurrency``), each child is pinned to a
CPU of its own, ``concurrency // CPUs`` children per CPU, the rest left free to run anywhere.
The children then neither queue behind each other on one CPU while another idles, nor move
between CPUs and lose their caches; with fewer children than CPUs nothing is pinned, so a task
may use several CPUs (threads, subprocesses). ``off``: children run wherever the kernel puts
them. A task's threads and subprocesses share its child's CPU.
"""

from __future__ import annotations

import logging
import os
from collections import Counter

log = logging.getLogger(__name__)


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask: taskset, cpusets)."""
    if not hasattr(os, "sched_getaffinity"):
        return []
    return sorted(os.sched_getaffinity(0))


class CpuPlacement:
    """Pins each new child to the CPU with the fewest of this worker's children, up to
    ``children // len(cpus)`` on each; forgets a child when it is gone."""

    def __init__(self, children: int, mode: str, cpus: list[int] | None = None) -> None:
        allowed = usable_cpus() if cpus is None else cpus
        spread = mode == "spread" and len(allowed) > 1 and children >= len(allowed)
        self.cpus = allowed if spread else []
        self.per_cpu = children // len(allowed) if spread else 0
        self.mode = mode
        self._allowed = len(allowed)
        self._children = children
        self._held: dict[int, int] = {}  # child pid -> its CPU

    def place(self, pid: int) -> int | None:
        """Pin the child ``pid``; its CPU, or None when it may run anywhere."""
        counts = Counter(self._held.values())
        free = [cpu for cpu in self.cpus if counts[cpu] < self.per_cpu]
        if not free:
            return None
        cpu = min(free, key=lambda c: (counts[c], c))
        try:
            os.sched_setaffinity(pid, {cpu})
        except OSError as exc:  # the CPU was taken from this worker's set meanwhile
            log.warning("child %d runs on any CPU: pinning it to CPU %d failed: %s", pid, cpu, exc)
            return None
        self._held[pid] = cpu
        return cpu

    def forget(self, pid: int) -> None:
        self._held.pop(pid, None)

    def cpu_of(self, pid: int) -> int | None:
        return self._held.get(pid)

    def describe(self) -> str:
        """One line for the worker's start-up output."""
        if self.cpus:
            where = ", ".join(str(c) for c in sorted(self._held.values()))
            rest = self._children - len(self._held)
            more = f"; {rest} more on any CPU" if rest else ""
            return f"children pinned to CPUs {where}{more} (task-cpu-affinity spread)"
        if self.mode != "spread":
            return "children run on any CPU (task-cpu-affinity off)"
        return (
            f"children run on any CPU ({self._children} children for {self._allowed} CPUs: "
            "pinned only with a child for every CPU)"
        )
