"""The worker's pool of real child processes, driven directly.

A child the worker kills (its task timed out, its job was cancelled) dies at once, but the pool
learns of it only when its pipe's end is read, a moment later on the event loop. A task placed
in between would go to a dying child and fail as "the child process running this task died".

A child with tasks queued is read in batches: its outcomes wait in the socket a moment. When
it dies, the outcomes it sent before are still read first, so only the task that was running
is blamed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import psutil

from sje.models import TaskMessage
from sje.worker.cpus import usable_cpus
from sje.worker.pool import Child, Pool
from tests.support import eventually

TASKS = "tests.apps.sample_tasks"
HOSTILE = "tests.apps.hostile_tasks"
PLAIN = "tests.apps.plain_tasks"


def message(i: int, task: str = "square", module: str = TASKS) -> TaskMessage:
    return TaskMessage(
        id=f"job:{i}",
        job_id="job",
        index=str(i),
        task=f"{module}.{task}",
        payload=b"",
        attempt=1,
        retries=0,
        backoff=1.0,
        backoff_max=1.0,
        timeout=None,
        kind="item",
    )


def test_a_killed_child_takes_no_task_before_its_death_is_read() -> None:
    async def scenario() -> None:
        frames: list[tuple[Child, dict[str, Any] | None]] = []
        pool = Pool([TASKS], 2, 10, 0, lambda child, header, _body: frames.append((child, header)))
        await pool.start()
        try:
            first, second = pool.children
            assert pool.free_slots() == 2
            first.kill()  # as on a timeout: nothing awaited before the next placement
            assert pool.free_slots() == 1
            assert pool.place(message(1), is_async=False, body=b"3")
            assert set(second.tasks) == {"job:1"} and not first.tasks
            assert not pool.place(message(2), is_async=False, body=b"4")  # none left

            async def answered() -> bool:
                return any(child is second and header for child, header in frames)

            async def death_read() -> bool:
                return (first, None) in frames

            await eventually(answered, "the live child's answer")
            await eventually(death_read, "the killed child's closed pipe")
        finally:
            await pool.stop()

    asyncio.run(scenario())


def test_outcomes_sent_before_a_child_dies_are_read_before_its_death() -> None:
    async def scenario() -> None:
        seen: list[tuple[str, Any]] = []
        blamed: list[str] = []

        def on_frame(child: Child, header: dict[str, Any] | None, body: bytes) -> None:
            if header is None:  # as the worker does: the task not queued any more is blamed
                blamed.extend(tid for tid, r in child.tasks.items() if not r.queued)
                seen.append(("closed", None))
            elif header["type"] == "done":
                pool.finish(child, header["id"])
                seen.append((header["id"], body))

        pool = Pool([TASKS], 1, 10, 0, on_frame)
        await pool.start()
        try:
            for i in range(1, 5):
                assert pool.place(message(i), is_async=False, body=str(i).encode(), depth=6)
            assert pool.place(message(5, "die"), is_async=False, body=b"null", depth=6)
            (child,) = pool.children
            assert [r.queued for r in child.tasks.values()] == [False] + [True] * 4

            async def closed() -> bool:
                return ("closed", None) in seen

            await eventually(closed, "the child's death")
            assert seen == [(f"job:{i}", str(i * i).encode()) for i in range(1, 5)] + [
                ("closed", None)
            ]
            assert blamed == ["job:5"]
        finally:
            await pool.stop()

    asyncio.run(scenario())


def test_tasks_queued_in_a_child_are_bounded_by_their_bodies_total_size() -> None:
    """Queued bodies must fit in the socket's buffer, or a send to a child busy in a task that
    holds the GIL would block the worker's event loop."""

    async def scenario() -> None:
        pool = Pool([TASKS], 1, 10, 0, lambda child, header, _body: None)
        await pool.start()
        try:
            body = b"1" + b" " * (40 * 1024)  # valid JSON: 1
            assert pool.place(message(1), is_async=False, body=body, depth=16)  # runs
            assert pool.place(message(2), is_async=False, body=body, depth=16)  # queued: 40 KiB
            assert not pool.place(message(3), is_async=False, body=body, depth=16)  # 80 > 64
            assert pool.place(message(4), is_async=False, body=b"4", depth=16)  # small: fits
            (child,) = pool.children
            assert [(tid, r.queued) for tid, r in child.tasks.items()] == [
                ("job:1", False),
                ("job:2", True),
                ("job:4", True),
            ]
        finally:
            await pool.stop()

    asyncio.run(scenario())


def test_children_are_spread_over_the_cpus_and_a_replacement_takes_the_freed_one() -> None:
    cpus = usable_cpus()

    async def scenario() -> None:
        pool = Pool([TASKS], len(cpus), 10, 0, lambda *_: None)
        await pool.start()
        try:
            where = {child.pid: os.sched_getaffinity(child.pid) for child in pool.children}
            if len(cpus) > 1:
                assert sorted(cpu for s in where.values() for cpu in s) == cpus
                assert all(len(s) == 1 for s in where.values())
            else:  # one CPU: nothing to spread
                assert list(where.values()) == [set(cpus)]
            first = pool.children[0]
            await pool.replace(first)
            newcomer = pool.children[-1]
            assert newcomer is not first and newcomer.pid not in where
            assert os.sched_getaffinity(newcomer.pid) == where[first.pid]
        finally:
            await pool.stop()

    asyncio.run(scenario())


def test_with_task_cpu_affinity_off_children_run_on_any_cpu() -> None:
    async def scenario() -> None:
        pool = Pool([TASKS], len(usable_cpus()), 10, 0, lambda *_: None, cpu_affinity="off")
        await pool.start()
        try:
            for child in pool.children:
                assert os.sched_getaffinity(child.pid) == set(usable_cpus())
        finally:
            await pool.stop()

    asyncio.run(scenario())


def test_the_watchdog_kills_a_child_whose_tree_passes_the_process_limit(tmp_path: Path) -> None:
    """Where no kernel limit holds the processes (no pids cgroup, root), the pool counts each
    busy child's tree and kills a tree that is too big, its forks in other sessions too."""

    async def scenario() -> None:
        deaths: list[Child] = []

        def on_frame(child: Child, header: dict[str, Any] | None, _body: bytes) -> None:
            if header is None:
                deaths.append(child)

        pool = Pool([HOSTILE], 1, 10, 0, on_frame)
        await pool.start()
        try:
            assert pool.isolation is not None
            pool.isolation = dataclasses.replace(  # as chosen on a host without pids cgroups
                pool.isolation,
                process_guard="watchdog",
                limits=dataclasses.replace(pool.isolation.limits, max_processes=4),
            )
            (child,) = pool.children
            item = {"dir": str(tmp_path), "forks": 5, "kind": "watchdog"}
            assert pool.place(
                message(1, "fork_and_hang", HOSTILE), False, json.dumps(item).encode()
            )

            async def died() -> bool:
                return child in deaths

            await eventually(died, "the child with 6 processes to be killed", timeout=30)
            forks = [int(p.name.removeprefix("fork-")) for p in tmp_path.glob("fork-*")]
            assert len(forks) >= 3, "the tree passed 4 only after the task's 4th fork"

            async def reaped() -> bool:
                return not any(psutil.pid_exists(pid) for pid in forks)

            await eventually(reaped, "its forks to be killed and reaped", timeout=10)
        finally:
            await pool.stop()

    asyncio.run(scenario())


def test_a_child_that_runs_only_plain_tasks_never_loads_asyncio() -> None:
    """asyncio (with ssl) is ~6 MB of a child's memory: only a child given an async task
    loads it."""

    async def scenario() -> None:
        answers: list[bytes] = []

        def on_frame(child: Child, header: dict[str, Any] | None, body: bytes) -> None:
            if header is not None and header["type"] == "done":
                assert header["ok"], header
                pool.finish(child, header["id"])
                answers.append(body)

        pool = Pool([PLAIN], 1, 10, 0, on_frame)
        await pool.start()
        try:
            names = ["asyncio", "ssl", "sje.worker.child_async", "sje.worker.task_call"]
            assert pool.place(message(1, "loaded", PLAIN), False, json.dumps(names).encode())

            async def answered() -> bool:
                return bool(answers)

            await eventually(answered, "the task's answer")
            assert json.loads(answers[0]) == ["sje.worker.task_call"]
        finally:
            await pool.stop()

    asyncio.run(scenario())
