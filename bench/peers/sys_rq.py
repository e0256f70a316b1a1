"""RQ in bench/compare.py: its task functions (RQ runs any importable function) and adapter.

Two ``rq worker --worker-class rq.SimpleWorker`` processes: each runs one job at a time in its
own process. RQ's default ``rq.Worker`` forks a work horse per job (isolation like SJE's child
processes, about 5x slower on no-ops); SimpleWorker is its fastest mode.
"""

from __future__ import annotations

from typing import Any

import psutil
import redis
from bench.common import Service
from bench.peers import work
from bench.peers.base import Adapter as AdapterBase
from rq import Queue

WORKER_CLASS = "rq.SimpleWorker"


def noop(i: int) -> int:
    return work.noop(i)


def cpu(arg: list[int]) -> int:
    return work.cpu(arg)


def io(i: int) -> int:
    return work.io(i)


def warm(i: int) -> int:
    return work.warm(i)


TASKS = {"noop": noop, "cpu": cpu, "io": io, "warm": warm}
FIRE_AND_FORGET = {"result_ttl": 0}  # no result kept: nothing observes it


class Adapter(AdapterBase):
    name = "rq"
    dists = ("rq", "redis")
    batch_api = "Queue.enqueue_many (one pipeline)"

    def setup(self) -> None:
        self.queue = Queue("bench", connection=redis.Redis.from_url(work.redis_url()))

    def settings(self) -> dict[str, str]:
        return {
            "workers": f"2 x `rq worker --worker-class {WORKER_CLASS}` (each runs 1 job at a "
            "time in the worker process; the default rq.Worker forks per job, ~5x slower), "
            "log level WARNING; I/O: the same 2 processes (RQ has no in-process concurrency)",
            "enqueue": "one-by-one: `Queue.enqueue`; batch: `Queue.enqueue_many` (one pipeline)",
            "results": "round trip: `enqueue` + `job.latest_result(timeout)` (blocking read of "
            "the results stream); other jobs result_ttl=0",
            "recovery": "defaults: a killed worker's job is abandoned; RQ notices after the "
            "execution's heartbeat TTL (60 s+) at its next maintenance (every 10 min) and moves it "
            "to the FailedJobRegistry (no Retry set)",
        }

    def workers(self, mode: str) -> list[Service]:
        args = ["-m", "rq.cli", "worker", "--url", work.redis_url(), "--logging_level", "WARNING"]
        args += ["--worker-class", WORKER_CLASS, "-n", "{name}", "bench"]
        return [self.h.start(f"rq-{mode}", args) for _ in range(2)]

    def victim(self, workers: list[Service]) -> psutil.Process:
        return psutil.Process(workers[0].pid)

    def enqueue_one(self, kind: str, arg: Any) -> None:
        self.queue.enqueue(TASKS[kind], arg, **FIRE_AND_FORGET)

    def enqueue_batch(self, kind: str, args: list[Any]) -> None:
        fn = TASKS[kind]
        self.queue.enqueue_many([Queue.prepare_data(fn, (a,), **FIRE_AND_FORGET) for a in args])

    def round_trip(self, i: int) -> Any:
        job = self.queue.enqueue(noop, i)
        result = job.latest_result(timeout=30)
        if result is None:
            raise RuntimeError(f"RQ job {job.id}: no result within 30s")
        return result.return_value
