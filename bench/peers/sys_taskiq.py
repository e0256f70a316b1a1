"""Taskiq in bench/compare.py: its broker and tasks (``taskiq worker
bench.peers.sys_taskiq:broker``) and adapter. taskiq-redis's RedisStreamBroker (a Redis stream
with a consumer group: messages are acknowledged, and unacknowledged ones are claimed again)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any, ClassVar

import psutil
from bench.common import Service
from bench.peers import work
from bench.peers.base import Adapter as AdapterBase
from bench.peers.base import busiest_child
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

MAX_ASYNC_TASKS = {"std": 1, "rt": 1, "io": 100, "rec": 1}
IDLE_TIMEOUT_MS = 5_000  # default 10 min: an unacknowledged message is claimed after this
RESULT_POLL = 0.002  # how often the client polls for a result (default 0.2 s)

broker = RedisStreamBroker(
    url=work.redis_url(),
    consumer_id="0",  # a consumer group created after the enqueue still reads what is queued
    idle_timeout=IDLE_TIMEOUT_MS,
    unacknowledged_lock_timeout=IDLE_TIMEOUT_MS / 1000,
)
if os.environ.get("BENCH_TASKIQ_RESULTS", "1") == "1":  # workers store results only for "rt"
    broker = broker.with_result_backend(
        RedisAsyncResultBackend(redis_url=work.redis_url(), result_ex_time=3600)
    )


@broker.task(task_name="noop")
async def noop(i: int) -> int:
    return await work.anoop(i)


@broker.task(task_name="cpu")
def cpu(arg: list[int]) -> int:
    return work.cpu(arg)


@broker.task(task_name="io")
async def io(i: int) -> int:
    return await work.aio(i)


@broker.task(task_name="warm")
async def warm(i: int) -> int:
    return await work.awarm(i)


TASKS = {"noop": noop, "cpu": cpu, "io": io, "warm": warm}


class Adapter(AdapterBase):
    name = "taskiq"
    dists = ("taskiq", "taskiq-redis", "redis")
    concurrency: ClassVar[dict[str, int]] = {k: 2 * v for k, v in MAX_ASYNC_TASKS.items()}
    redelivery_s = IDLE_TIMEOUT_MS / 1000

    def setup(self) -> None:
        # taskiq's worker processes do not exit after SIGTERM here (they log their shutdown,
        # then hang; cf. taskiq issue #646): SIGKILL after 2 s, once the measurement is done
        self.h.stop_grace = 2.0
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(broker.startup())

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run_until_complete(broker.shutdown())
            self.loop.close()

    def settings(self) -> dict[str, str]:
        return {
            "workers": "`taskiq worker --workers 2 --max-async-tasks "
            f"{MAX_ASYNC_TASKS['std']}` (1 main + 2 worker processes); I/O: "
            f"--max-async-tasks {MAX_ASYNC_TASKS['io']} (its default); async tasks, the CPU "
            "task is sync (run in its thread pool)",
            "enqueue": "one-by-one: `await task.kiq(i)`; batch: n/a (no API)",
            "results": "RedisAsyncResultBackend only in the round trip's workers (a worker "
            f"stores every result or none); `wait_result(check_interval={RESULT_POLL})` polls",
            "recovery": f"idle_timeout {IDLE_TIMEOUT_MS // 1000} s (default 10 min): a dead "
            "worker's unacknowledged messages are claimed by XAUTOCLAIM; SIGKILL one worker "
            "process, which the main process restarts",
            "note": "its worker processes hang after SIGTERM (logged shutdown, no exit), so "
            "they are SIGKILLed 2 s after each scenario, when the measurement is done",
        }

    def workers(self, mode: str) -> list[Service]:
        env = self.h.env(BENCH_TASKIQ_RESULTS="1" if mode == "rt" else "0")
        args = ["-m", "taskiq", "worker", "bench.peers.sys_taskiq:broker", "--workers", "2"]
        args += ["--max-async-tasks", str(MAX_ASYNC_TASKS[mode]), "--log-level", "WARNING"]
        return [self.h.start(f"taskiq-{mode}", args, env)]

    def victim(self, workers: list[Service]) -> psutil.Process:
        return busiest_child(workers[0])

    def enqueue_one(self, kind: str, arg: Any) -> None:
        self.loop.run_until_complete(TASKS[kind].kiq(arg))

    def enqueue_many(self, kind: str, args: list[Any]) -> None:
        task = TASKS[kind]

        async def send() -> None:
            for start in range(0, len(args), 100):
                await asyncio.gather(*(task.kiq(a) for a in args[start : start + 100]))

        self.loop.run_until_complete(send())

    def round_trip(self, i: int) -> Any:
        async def one() -> Any:
            handle = await noop.kiq(i)
            result = await handle.wait_result(check_interval=RESULT_POLL, timeout=30)
            return result.return_value

        return self.loop.run_until_complete(one())
