"""Huey in bench/compare.py: its instance (``huey_consumer bench.peers.sys_huey.huey``) and
adapter. RedisHuey (a Redis list, blocking BRPOP), results with BLPOP notification."""

from __future__ import annotations

from typing import Any, ClassVar

import psutil
from bench.common import Service
from bench.peers import work
from bench.peers.base import Adapter as AdapterBase
from bench.peers.base import busiest_child
from huey import RedisHuey

IO_THREADS = 100

# notify_result: the client waits for a result with BLPOP instead of polling with backoff
huey = RedisHuey("bench", url=work.redis_url(), notify_result=True)


# tasks returning None store no result (Huey's default store_none=False): fire-and-forget
@huey.task()
def noop(i: int) -> None:
    work.noop(i)


@huey.task()
def noop_result(i: int) -> int:
    return work.noop(i)


@huey.task()
def cpu(arg: list[int]) -> None:
    work.cpu(arg)


@huey.task()
def io(i: int) -> None:
    work.io(i)


@huey.task()
def warm(i: int) -> None:
    work.warm(i)


TASKS = {"noop": noop, "cpu": cpu, "io": io, "warm": warm}


class Adapter(AdapterBase):
    name = "huey"
    dists = ("huey", "redis")
    concurrency: ClassVar[dict[str, int]] = {"std": 2, "rt": 2, "io": 2 * IO_THREADS, "rec": 2}
    batch_api = "task.map(...) (one LPUSH per task)"

    def settings(self) -> dict[str, str]:
        return {
            "workers": "`huey_consumer -k process -w 2` (1 consumer + 2 worker processes), "
            f"quiet logging; I/O: 2 x `-k thread -w {IO_THREADS}`",
            "enqueue": "one-by-one: calling the task; batch: `task.map(args)`",
            "results": "RedisHuey(notify_result=True): round trip `task(i).get(blocking=True)` "
            "waits with BLPOP; other tasks return None (nothing stored)",
            "recovery": "SIGKILL one worker process; the consumer's health check (every 10 s) "
            "restarts it. A dequeued task is gone from Redis (no acknowledgement)",
        }

    def workers(self, mode: str) -> list[Service]:
        base = ["-m", "huey.bin.huey_consumer", "bench.peers.sys_huey.huey", "--quiet"]
        if mode == "io":
            args = [*base, "-k", "thread", "-w", str(IO_THREADS)]
            return [self.h.start(f"huey-{mode}", args) for _ in range(2)]
        return [self.h.start(f"huey-{mode}", [*base, "-k", "process", "-w", "2"])]

    def victim(self, workers: list[Service]) -> psutil.Process:
        return busiest_child(workers[0])

    def enqueue_one(self, kind: str, arg: Any) -> None:
        TASKS[kind](arg)

    def enqueue_batch(self, kind: str, args: list[Any]) -> None:
        TASKS[kind].map(args)

    def round_trip(self, i: int) -> Any:
        return noop_result(i).get(blocking=True, timeout=30)
