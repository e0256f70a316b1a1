"""Delivery under worker faults: SIGKILLed workers and children, crashing tasks, SIGTERM.

Counts come from the marker files the tasks write (``tests.apps.fault_tasks``): one file per
execution with its start and end times, so "ran twice" and "ran at the same time" are exact.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

import sje
from tests.support import (
    Proc,
    api_client,
    event_kind,
    events_of,
    overlapping_runs,
    read_runs,
    runs_by_index,
    wait_until,
)

MARK = "tests.apps.fault_tasks.mark"
CRASH = "tests.apps.fault_tasks.crash"
FAULT_TASKS = ("--tasks", "tests.apps.fault_tasks")


def inputs(folder: Path, n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"index": i, "dir": str(folder), **extra} for i in range(n)]


def child_pids(proc: Proc, n: int) -> set[int]:
    """The pids of a worker's ``n`` child processes (waiting until they are all up)."""

    def pids() -> set[int]:
        return {c.pid for c in psutil.Process(proc.pid).children()}

    wait_until(lambda: len(pids()) >= n, 30, "the worker's children")
    found = pids()
    assert len(found) == n, found
    return found


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kinds(r: redis.Redis, prefix: str, job_id: str) -> list[str]:
    return [event_kind(e) for e in events_of(r, prefix, job_id)]


def test_sigkilled_worker_reruns_only_its_in_flight_tasks_and_never_concurrently(
    env: dict[str, str],
    master: str,
    worker: Callable[..., Proc],
    r: redis.Redis,
    prefix: str,
    tmp_path: Path,
) -> None:
    victim = worker(*FAULT_TASKS, "--concurrency", "2", "--name", "victim")
    survivor = worker(*FAULT_TASKS, "--concurrency", "2", "--name", "survivor")
    victim_children = child_pids(victim, 2)
    runs_dir, gate = tmp_path / "runs", tmp_path / "gate"
    items = inputs(runs_dir, 40, gate=str(gate))
    handle = api_client(env).submit({"task": MARK, "inputs": items})

    def victim_mid_task() -> bool:
        running = [run for run in read_runs(runs_dir) if not run.finished]
        return len(running) == 4 and sum(run.pid in victim_children for run in running) == 2

    wait_until(victim_mid_task, 60, "both workers to be running two tasks each")
    victim.signal(signal.SIGKILL)
    victim.wait(10)
    gate.touch()  # the survivor's tasks, and everything after them, may now finish
    # what the broker holds leased to the dead worker: exactly what may run again
    owners: Any = r.hgetall(f"{prefix}:owner")
    in_flight = {
        int(task.decode().rsplit(":", 1)[1])
        for task, owner in owners.items()
        if owner.decode().startswith("victim-")
    }
    wait_until(lambda: not any(alive(pid) for pid in victim_children), 10, "its children to die")
    children_dead_ns = time.monotonic_ns()

    assert handle.result(timeout=90) == list(range(40))
    runs = read_runs(runs_dir)
    by_index = runs_by_index(runs)
    assert sorted(by_index) == list(range(40))
    assert all(any(run.finished for run in same) for same in by_index.values())
    assert in_flight, "the kill landed while the victim held tasks"
    ran_twice = {index for index, same in by_index.items() if len(same) > 1}
    assert ran_twice <= in_flight, (ran_twice, in_flight)
    assert all(len(same) <= 2 for same in by_index.values())
    assert overlapping_runs(runs, unfinished_end_ns=children_dead_ns) == []
    # each task the victim held came back once its lease expired, and nothing else did
    assert kinds(r, prefix, handle.id).count("task.queued:redelivered") == len(in_flight)
    assert survivor.popen.poll() is None


def test_sigkilled_child_fails_only_that_attempt_and_the_worker_replaces_it(
    env: dict[str, str],
    master: str,
    worker: Callable[..., Proc],
    r: redis.Redis,
    prefix: str,
    tmp_path: Path,
) -> None:
    w = worker(*FAULT_TASKS, "--concurrency", "2")
    original_children = child_pids(w, 2)
    runs_dir = tmp_path / "runs"
    items = inputs(runs_dir, 6)
    items[0]["first_gate"] = str(tmp_path / "never")  # task 0 runs until killed, the first time
    client = api_client(env)
    handle = client.submit({"task": MARK, "inputs": items, "retries": 1, "backoff": 0.05})
    (first,) = wait_until(lambda: runs_by_index(read_runs(runs_dir)).get(0, []), 30, "task 0")
    assert not first.finished
    # the child running task 0, found among the worker's own children
    (victim,) = [c for c in psutil.Process(w.pid).children() if c.pid == first.pid]
    victim.send_signal(signal.SIGKILL)

    assert handle.result(timeout=60) == list(range(6))
    by_index = runs_by_index(read_runs(runs_dir))
    assert {i: len(same) for i, same in by_index.items()} == {0: 2, 1: 1, 2: 1, 3: 1, 4: 1, 5: 1}
    assert [run.finished for run in by_index[0]] == [False, True]
    error = client.request("GET", f"/jobs/{handle.id}", params={"errors": "1"})["task_errors"]["0"]
    assert error["type"] == "ChildCrashed"
    assert "died (signal 9)" in error["message"]
    assert error["attempt"] == 1
    assert kinds(r, prefix, handle.id).count("task.retrying") == 1
    assert w.popen.poll() is None
    replaced = child_pids(w, 2)
    assert victim.pid not in replaced
    assert original_children - {victim.pid} <= replaced


@pytest.mark.parametrize(
    ("how", "reason"), [("exit", "died (exit code 3)"), ("kill", "died (signal 9)")]
)
def test_task_that_always_crashes_its_child_runs_retries_plus_one_times_then_fails_the_job(
    env: dict[str, str],
    master: str,
    worker: Callable[..., Proc],
    tmp_path: Path,
    how: str,
    reason: str,
) -> None:
    w = worker(*FAULT_TASKS, "--concurrency", "1")
    runs_dir = tmp_path / "runs"
    client = api_client(env)
    handle = client.submit(
        {"task": CRASH, "inputs": inputs(runs_dir, 1, how=how), "retries": 2, "backoff": 0.05}
    )
    with pytest.raises(sje.JobFailed) as failure:
        handle.result(timeout=60)
    expected = "failed in task 0 (attempt 3): ChildCrashed: the child process running this task"
    assert f"{expected} {reason}" in failure.value.message
    status = handle.status()
    assert status["state"] == "failed"
    error = status["task_errors"]["0"]
    assert (error["type"], error["attempt"]) == ("ChildCrashed", 3)
    assert reason in error["message"]
    # the worker survived all three crashes and still serves
    after = client.submit({"task": MARK, "inputs": inputs(tmp_path / "after", 2)})
    assert after.result(timeout=60) == [0, 1]
    assert w.popen.poll() is None
    runs = read_runs(runs_dir)
    assert len(runs) == 3, runs
    assert not any(run.finished for run in runs)
    assert len({run.pid for run in runs}) == 3, "each attempt ran in a fresh child"


def test_sigterm_lets_in_flight_tasks_finish_and_the_rest_runs_once_on_another_worker(
    env: dict[str, str],
    master: str,
    worker: Callable[..., Proc],
    r: redis.Redis,
    prefix: str,
    tmp_path: Path,
) -> None:
    first = worker(*FAULT_TASKS, "--concurrency", "2", "--name", "first")
    first_children = child_pids(first, 2)
    runs_dir, gate = tmp_path / "runs", tmp_path / "gate"
    items = inputs(runs_dir, 10, gate=str(gate))
    handle = api_client(env).submit({"task": MARK, "inputs": items})
    wait_until(
        lambda: len([run for run in read_runs(runs_dir) if not run.finished]) == 2,
        30,
        "two tasks running on the first worker",
    )
    signalled_ns = time.monotonic_ns()
    first.signal(signal.SIGTERM)
    wait_until(lambda: first.find("stopping: waiting tasks handed back"), 30, "the stop to begin")
    gate.touch()  # the two running tasks end within the grace period
    assert first.wait(30) == 0
    first_gone_ns = time.monotonic_ns()
    second = worker(*FAULT_TASKS, "--concurrency", "2", "--name", "second")
    second_children = child_pids(second, 2)

    assert handle.result(timeout=60) == list(range(10))
    runs = read_runs(runs_dir)
    by_index = runs_by_index(runs)
    assert {i: len(same) for i, same in by_index.items()} == {i: 1 for i in range(10)}
    assert all(run.finished for run in runs)
    on_first = [run for run in runs if run.pid in first_children]
    in_flight = [run for run in on_first if run.start_ns < signalled_ns < (run.end_ns or 0)]
    assert in_flight, "tasks were running when the worker was told to stop"
    # ... and every task the first worker took, it finished before leaving (10 s grace)
    assert all(run.end_ns is not None and run.end_ns <= first_gone_ns for run in on_first)
    others = [run for run in runs if run not in on_first]
    assert others and all(run.pid in second_children for run in others), "the rest: second"
    assert "task.queued:redelivered" not in kinds(r, prefix, handle.id), "no lease had to expire"


def test_sigterm_past_the_grace_hands_running_tasks_back_at_once(
    env: dict[str, str],
    master: str,
    worker: Callable[..., Proc],
    r: redis.Redis,
    prefix: str,
    tmp_path: Path,
) -> None:
    env["SJE_SHUTDOWN_GRACE"] = "1"
    first = worker(*FAULT_TASKS, "--concurrency", "2", "--name", "first")
    first_children = child_pids(first, 2)
    runs_dir = tmp_path / "runs"
    # tasks block until the gate opens: far past the grace (and the lease) on the first worker
    gate = tmp_path / "gate"
    items = inputs(runs_dir, 6, gate=str(gate))
    handle = api_client(env).submit({"task": MARK, "inputs": items})
    wait_until(lambda: len(read_runs(runs_dir)) == 2, 30, "two tasks running on the first worker")
    signalled = time.monotonic()
    first.signal(signal.SIGTERM)
    assert first.wait(30) == 0
    assert time.monotonic() - signalled < 10, "the worker left soon after its grace"
    first_gone_ns = time.monotonic_ns()
    handed_back = {run.index for run in read_runs(runs_dir)}
    gate.touch()
    second = worker(*FAULT_TASKS, "--concurrency", "2", "--name", "second")
    second_children = child_pids(second, 2)

    assert handle.result(timeout=60) == list(range(6))
    runs = read_runs(runs_dir)
    by_index = runs_by_index(runs)
    for index, same in by_index.items():
        if index in handed_back:
            assert [(run.pid in first_children, run.finished) for run in same] == [
                (True, False),
                (False, True),
            ]
        else:
            assert len(same) == 1 and same[0].finished
        assert same[-1].pid in second_children
    assert overlapping_runs(runs, unfinished_end_ns=first_gone_ns) == []
    events = events_of(r, prefix, handle.id)
    released = sorted(int(e["task"]) for e in events if event_kind(e) == "task.queued:released")
    assert released == sorted(handed_back)
    assert not [e for e in events if event_kind(e) == "task.queued:redelivered"], (
        "no lease had to expire"
    )
    # a hand-back does not use up an attempt
    starts = [e for e in events if e["type"] == "task.started"]
    assert {e["attempt"] for e in starts} == {"1"}
