"""The worker's pool of real child processes, driven directly: which child takes a task.

A child the worker kills (its task timed out, its job was cancelled) dies at once, but the pool
learns of it only when its pipe's end is read, a moment later on the event loop. A task placed
in between would go to a dying child and fail as "the child process running this task died".
"""

from __future__ import annotations

import asyncio
from typing import Any

from sje.models import TaskMessage
from sje.worker.pool import Child, Pool
from tests.support import eventually

TASKS = "tests.apps.sample_tasks"


def message(i: int) -> TaskMessage:
    return TaskMessage(
        id=f"job:{i}",
        job_id="job",
        index=str(i),
        task=f"{TASKS}.square",
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
