"""The process tree of a worker's children, read cheaply from /proc (psutil where it cannot):
who descends from whom, whether a child left processes behind, killing and reaping them."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import psutil


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def direct_children() -> list[int]:
    """Pids whose parent is this process (any of its threads), read cheaply from /proc."""
    pids: list[int] = []
    try:
        for tid in os.listdir("/proc/self/task"):
            pids.extend(int(p) for p in Path(f"/proc/self/task/{tid}/children").read_text().split())
    except OSError:
        return [p.pid for p in psutil.Process().children()]
    return pids


def has_children(pid: int) -> bool:
    """Whether ``pid`` (any of its threads) has child processes, zombies too; False where
    /proc cannot tell."""
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            fd = os.open(f"/proc/{pid}/task/{tid}/children", os.O_RDONLY)
            try:
                if os.read(fd, 64).strip():
                    return True
            finally:
                os.close(fd)
    except OSError:
        return False
    return False


def kill_and_reap(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def children_map() -> dict[int, list[int]]:
    """Every process's children, from one pass over the process table."""
    kids: dict[int, list[int]] = {}
    for proc in psutil.process_iter(["ppid"]):
        kids.setdefault(int(proc.info["ppid"] or 0), []).append(proc.pid)
    return kids


def count_tree(pid: int, kids: dict[int, list[int]]) -> int:
    """Processes in the tree rooted at ``pid``."""
    count, stack = 0, [pid]
    while stack:
        count += 1
        stack.extend(kids.get(stack.pop(), ()))
    return count
