"""CPU placement of child processes, on real processes of this host (``sched_setaffinity``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from sje.worker.cpus import CpuPlacement, usable_cpus

CPUS = usable_cpus()
needs_two_cpus = pytest.mark.skipif(len(CPUS) < 2, reason="pinning applies with 2+ CPUs")


@pytest.fixture
def spawn() -> Iterator[Callable[[], int]]:
    """Start idle processes to place (they end with the test); returns their pids."""
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> int:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
        )
        procs.append(proc)
        return proc.pid

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()
        assert proc.stdin is not None
        proc.stdin.close()


@needs_two_cpus
def test_a_child_for_every_cpu_gets_a_cpu_of_its_own(spawn: Callable[[], int]) -> None:
    placement = CpuPlacement(len(CPUS), "spread")
    pids = [spawn() for _ in CPUS]
    placed = [placement.place(pid) for pid in pids]
    assert sorted(c for c in placed if c is not None) == CPUS
    for pid, cpu in zip(pids, placed, strict=True):
        assert cpu is not None and os.sched_getaffinity(pid) == {cpu}
        assert placement.cpu_of(pid) == cpu
    assert placement.describe() == (
        f"children pinned to CPUs {', '.join(map(str, CPUS))} (task-cpu-affinity spread)"
    )


@needs_two_cpus
def test_children_beyond_a_whole_number_per_cpu_run_anywhere(spawn: Callable[[], int]) -> None:
    n = 2 * len(CPUS) + 1
    placement = CpuPlacement(n, "spread")
    pids = [spawn() for _ in range(n)]
    placed = [placement.place(pid) for pid in pids]
    assert Counter(c for c in placed if c is not None) == {cpu: 2 for cpu in CPUS}
    assert placed[-1] is None
    assert os.sched_getaffinity(pids[-1]) == set(CPUS)
    assert placement.describe().endswith("; 1 more on any CPU (task-cpu-affinity spread)")


@needs_two_cpus
def test_the_cpu_of_a_child_that_is_gone_goes_to_the_next(spawn: Callable[[], int]) -> None:
    placement = CpuPlacement(len(CPUS), "spread")
    pids = [spawn() for _ in CPUS]
    placed = [placement.place(pid) for pid in pids]
    placement.forget(pids[0])
    assert placement.cpu_of(pids[0]) is None
    newcomer = spawn()
    assert placement.place(newcomer) == placed[0]
    assert os.sched_getaffinity(newcomer) == {placed[0]}


@pytest.mark.parametrize(
    ("children", "mode", "why"),
    [
        (len(CPUS) - 1, "spread", "pinned only with a child for every CPU"),
        (len(CPUS), "off", "task-cpu-affinity off"),
    ],
)
def test_fewer_children_than_cpus_or_off_pins_nothing(
    spawn: Callable[[], int], children: int, mode: str, why: str
) -> None:
    placement = CpuPlacement(max(children, 1), mode)
    pid = spawn()
    assert placement.place(pid) is None
    assert os.sched_getaffinity(pid) == set(CPUS)
    assert (
        placement.describe().startswith("children run on any CPU") and why in placement.describe()
    )


def test_a_cpu_taken_from_the_worker_leaves_the_child_unpinned(spawn: Callable[[], int]) -> None:
    absent = max(CPUS) + 1  # no such CPU here: as when a cpuset shrank after start-up
    placement = CpuPlacement(2, "spread", cpus=[absent, absent + 1])
    pid = spawn()
    assert placement.place(pid) is None
    assert placement.cpu_of(pid) is None
    assert os.sched_getaffinity(pid) == set(CPUS)
