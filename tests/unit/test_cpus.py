"""CPU placement of child processes, on real processes of this host (``sched_setaffinity``)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sje.worker.cpus import CHILD_MODULE, CpuPlacement, host_lock, pinned_children, usable_cpus

CPUS = usable_cpus()


def alone(exclude: set[int]) -> Counter[int]:
    """No other worker's child pinned anywhere: these tests see only their own processes."""
    return Counter()


# these pin real processes to two or more of this host's CPUs; the one-CPU case is covered
# on every host by test_a_worker_with_one_cpu_pins_nothing
needs_two_cpus = pytest.mark.skipif(len(CPUS) < 2, reason="this host has one CPU: nothing to pin")


@pytest.fixture
def spawn() -> Iterator[Callable[..., int]]:
    """Start idle processes to place (they end with the test), with ``args`` on their command
    lines; returns their pids."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> int:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()", *args], stdin=subprocess.PIPE
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
def test_a_child_for_every_cpu_gets_a_cpu_of_its_own(spawn: Callable[..., int]) -> None:
    placement = CpuPlacement(len(CPUS), "spread", neighbours=alone)
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
def test_children_beyond_one_per_cpu_run_anywhere(spawn: Callable[..., int]) -> None:
    n = 2 * len(CPUS) + 1
    placement = CpuPlacement(n, "spread", neighbours=alone)
    pids = [spawn() for _ in range(n)]
    placed = [placement.place(pid) for pid in pids]
    assert placed[: len(CPUS)] == CPUS
    assert placed[len(CPUS) :] == [None] * (n - len(CPUS))
    for pid in pids[len(CPUS) :]:
        assert os.sched_getaffinity(pid) == set(CPUS)
    assert placement.describe().endswith(
        f"; {n - len(CPUS)} more on any CPU (task-cpu-affinity spread)"
    )


@needs_two_cpus
def test_a_cpu_that_another_workers_child_is_pinned_to_is_skipped(
    spawn: Callable[..., int],
) -> None:
    """Two workers on one host: the second one's children do not double up on the CPUs the
    first one's children are pinned to (the host's ``sje.worker.child`` processes say which).
    The real scan of the host: no SJE worker may run here meanwhile."""
    assert not pinned_children(set()), "an SJE worker with pinned children runs on this host"
    other = spawn(CHILD_MODULE)  # looks like another worker's child to a scan of the host
    os.sched_setaffinity(other, {CPUS[0]})
    placement = CpuPlacement(len(CPUS), "spread")
    pids = [spawn() for _ in CPUS]
    placed = [placement.place(pid) for pid in pids]
    assert placed == [*CPUS[1:], None]
    assert os.sched_getaffinity(pids[-1]) == set(CPUS)
    os.sched_setaffinity(other, set(CPUS))  # it is no longer pinned: its CPU is free again
    placement.forget(pids[-1])
    assert placement.place(pids[-1]) == CPUS[0]


@needs_two_cpus
def test_the_cpu_of_a_child_that_is_gone_goes_to_the_next(spawn: Callable[..., int]) -> None:
    placement = CpuPlacement(len(CPUS), "spread", neighbours=alone)
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
        (1, "spread", "(1 child for 2 CPUs: pinned only with a child for every CPU)"),
        (2, "off", "(task-cpu-affinity off)"),
    ],
)
def test_fewer_children_than_cpus_or_off_pins_nothing(
    spawn: Callable[..., int], children: int, mode: str, why: str
) -> None:
    """A worker that may use two CPUs (whether or not this host has them: nothing is pinned,
    so no CPU is asked for)."""
    placement = CpuPlacement(children, mode, cpus=[0, 1], neighbours=alone)
    pid = spawn()
    assert placement.place(pid) is None
    assert os.sched_getaffinity(pid) == set(CPUS)
    assert placement.describe() == f"children run on any CPU {why}"


def test_a_cpu_taken_from_the_worker_leaves_the_child_unpinned(spawn: Callable[..., int]) -> None:
    absent = max(CPUS) + 1  # no such CPU here: as when a cpuset shrank after start-up
    placement = CpuPlacement(2, "spread", cpus=[absent, absent + 1], neighbours=alone)
    pid = spawn()
    assert placement.place(pid) is None
    assert placement.cpu_of(pid) is None
    assert os.sched_getaffinity(pid) == set(CPUS)


def test_a_worker_with_one_cpu_pins_nothing(spawn: Callable[..., int]) -> None:
    placement = CpuPlacement(4, "spread", cpus=CPUS[:1], neighbours=alone)
    pid = spawn()
    assert placement.place(pid) is None
    assert os.sched_getaffinity(pid) == set(CPUS)
    assert placement.describe() == (
        "children run on any CPU (this worker may use one CPU: nothing to spread)"
    )


#: a worker's placement in a process of its own: it places the child whose pid it is given
#: once a line arrives on its stdin, and prints the CPU (or None)
RACER = """
import sys
from pathlib import Path
from sje.worker.cpus import CpuPlacement
placement = CpuPlacement(int(sys.argv[1]), "spread", lock_path=Path(sys.argv[2]))
print("ready", flush=True)
sys.stdin.readline()
print(placement.place(int(sys.argv[3])), flush=True)
"""


@needs_two_cpus
def test_workers_placing_children_at_the_same_moment_take_turns(
    spawn: Callable[..., int], tmp_path: Path
) -> None:
    """One more worker than CPUs, each placing a child at once, with the real scan of the
    host: each free CPU gets exactly one child (without the host lock, two workers that scan
    before either pins both take the first free CPU)."""
    assert not pinned_children(set()), "an SJE worker with pinned children runs on this host"
    lock = tmp_path / "placement.lock"
    children = [spawn(CHILD_MODULE) for _ in range(len(CPUS) + 1)]
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(len(CPUS)), str(lock), str(pid)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for pid in children
    ]
    try:
        for racer in racers:
            assert racer.stdout is not None and racer.stdout.readline() == "ready\n"
        for racer in racers:  # all of them are waiting: start them together
            assert racer.stdin is not None
            racer.stdin.write("go\n")
            racer.stdin.flush()
        placed = [racer.communicate(timeout=60)[0].strip() for racer in racers]
    finally:
        for racer in racers:
            racer.kill()
            racer.wait()
    assert sorted(p for p in placed if p != "None") == [str(c) for c in CPUS]
    assert placed.count("None") == 1
    assert (
        sorted(
            next(iter(os.sched_getaffinity(pid)))
            for pid, p in zip(children, placed, strict=True)
            if p != "None"
        )
        == CPUS
    )


def test_a_host_lock_held_elsewhere_is_waited_for_only_so_long(tmp_path: Path) -> None:
    """A stuck process holding the lock does not stop a worker placing its children."""
    path = tmp_path / "placement.lock"
    old_umask = os.umask(0o077)
    try:
        with host_lock(path) as held:
            assert held
    finally:
        os.umask(old_umask)
    assert path.stat().st_mode & 0o777 == 0o444  # other users' workers can open it too
    other = os.open(path, os.O_RDONLY)  # another open file: its lock excludes ours
    try:
        fcntl.flock(other, fcntl.LOCK_EX)
        with host_lock(path, wait_s=0.05) as held:
            assert not held
    finally:
        os.close(other)
    with host_lock(path, wait_s=0.05) as held:
        assert held


@needs_two_cpus
@pytest.mark.parametrize(
    "stuck", [False, True], ids=["cannot-be-opened", "held-by-a-stuck-process"]
)
def test_a_lock_that_cannot_be_had_is_given_up_once(
    spawn: Callable[..., int], tmp_path: Path, caplog: pytest.LogCaptureFixture, stuck: bool
) -> None:
    """Placement goes on without the host lock, and the worker stops asking for it: with a
    stuck holder, every child would otherwise wait as long as the first."""
    path = tmp_path / "placement.lock" if stuck else tmp_path / "missing" / "lock"
    holder = None
    if stuck:
        path.touch()
        holder = os.open(path, os.O_RDONLY)
        fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        placement = CpuPlacement(
            len(CPUS), "spread", neighbours=alone, lock_path=path, lock_wait_s=0.05
        )
        pids = [spawn() for _ in CPUS]
        with caplog.at_level("WARNING", logger="sje.worker.cpus"):
            placed = [placement.place(pid) for pid in pids]
    finally:
        if holder is not None:
            os.close(holder)
    assert placed == CPUS
    warnings = [r.getMessage() for r in caplog.records if "placement lock" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert str(path) in warnings[0]
