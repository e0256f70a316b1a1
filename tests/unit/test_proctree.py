"""Counting a child's process tree from /proc, on real processes."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest

from sje.worker import proctree
from tests.support import wait_until

# a root with two children, one of which has a child of its own in a new session (as a task's
# forks that leave its process group): 4 processes; each sleeps until the test kills the tree
TREE = """
import os, subprocess, sys, time
sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
subprocess.Popen(sleeper)
subprocess.Popen([sys.executable, "-c",
    "import os, subprocess, sys, time; os.setsid(); subprocess.Popen(sys.argv[1:]); "
    "time.sleep(60)", *sleeper])
time.sleep(60)
"""


@pytest.fixture
def tree() -> Iterator[psutil.Process]:
    root = subprocess.Popen([sys.executable, "-c", TREE])
    proc = psutil.Process(root.pid)
    try:
        wait_until(lambda: len(proc.children(recursive=True)) == 3, 10, "the tree of 4")
        yield proc
    finally:
        for p in [*proc.children(recursive=True), proc]:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        root.wait(10)


def test_a_tree_is_counted_from_its_children_lists(tree: psutil.Process) -> None:
    leaf = tree.children(recursive=True)[-1]
    assert proctree.tree_sizes([tree.pid, leaf.pid]) == {tree.pid: 4, leaf.pid: 1}


def test_without_children_lists_one_pass_over_the_process_table_counts_the_same(
    tree: psutil.Process, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_lists(_: int) -> int:
        raise proctree._NoChildrenLists  # as on a kernel without CONFIG_PROC_CHILDREN

    monkeypatch.setattr(proctree, "_walk", no_lists)
    leaf = tree.children(recursive=True)[-1]
    assert proctree.tree_sizes([tree.pid, leaf.pid]) == {tree.pid: 4, leaf.pid: 1}


def test_a_root_that_is_gone_counts_nothing() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(10)
    assert proctree.tree_sizes([gone.pid]) == {gone.pid: 0}
