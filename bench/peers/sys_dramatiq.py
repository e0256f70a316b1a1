"""Dramatiq in bench/compare.py: its broker and actors (``dramatiq bench.peers.sys_dramatiq``)
and adapter. Redis broker, Results middleware with the Redis backend."""

from __future__ import annotations

from typing import Any, ClassVar

import dramatiq
import psutil
from bench.common import Service
from bench.peers import work
from bench.peers.base import Adapter as AdapterBase
from bench.peers.base import busiest_child
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

HEARTBEAT_TIMEOUT_MS = 5_000  # default 60 s: a dead consumer's messages come back after this
IO_THREADS = 100

broker = RedisBroker(url=work.redis_url(), heartbeat_timeout=HEARTBEAT_TIMEOUT_MS)
broker.add_middleware(Results(backend=RedisBackend(url=work.redis_url())))
dramatiq.set_broker(broker)


# actors without stored results return None: with the Results middleware on, a returned value
# that is not stored is logged as a warning for every message
def _noop(i: int) -> None:
    work.noop(i)


def _cpu(arg: list[int]) -> None:
    work.cpu(arg)


def _io(i: int) -> None:
    work.io(i)


def _warm(i: int) -> None:
    work.warm(i)


noop = dramatiq.actor(_noop, actor_name="noop", max_retries=0)
noop_result = dramatiq.actor(work.noop, actor_name="noop_result", max_retries=0, store_results=True)
cpu = dramatiq.actor(_cpu, actor_name="cpu", max_retries=0)
io = dramatiq.actor(_io, actor_name="io", max_retries=0)
warm = dramatiq.actor(_warm, actor_name="warm", max_retries=0)
TASKS = {"noop": noop, "cpu": cpu, "io": io, "warm": warm}


class Adapter(AdapterBase):
    name = "dramatiq"
    dists = ("dramatiq", "redis")
    concurrency: ClassVar[dict[str, int]] = {"std": 2, "rt": 2, "io": 2 * IO_THREADS, "rec": 2}
    batch_api = "group(...).run() (one message at a time)"
    redelivery_s = HEARTBEAT_TIMEOUT_MS / 1000

    def settings(self) -> dict[str, str]:
        return {
            "workers": "`dramatiq --processes 2 --threads 1` (1 main + 2 worker processes, 1 "
            "task at a time each; its default is 8 threads); I/O: `--processes 2 --threads "
            f"{IO_THREADS}`",
            "enqueue": "one-by-one: `actor.send(i)`; batch: `dramatiq.group(...).run()`",
            "results": "Results middleware, Redis backend; only the round trip's actor stores "
            "results (`send(i).get_result(block=True)`)",
            "recovery": f"heartbeat_timeout {HEARTBEAT_TIMEOUT_MS // 1000} s (default 60 s); "
            "its main process shuts every worker down when one dies, so here it runs as 2 x "
            "`--processes 1`; SIGKILL one worker process (its instance then exits)",
        }

    def workers(self, mode: str) -> list[Service]:
        base = ["-m", "dramatiq", "bench.peers.sys_dramatiq", "--worker-shutdown-timeout", "10000"]
        if mode == "rec":
            args = [*base, "--processes", "1", "--threads", "1"]
            return [self.h.start(f"dramatiq-{mode}", args) for _ in range(2)]
        threads = IO_THREADS if mode == "io" else 1
        args = [*base, "--processes", "2", "--threads", str(threads)]
        return [self.h.start(f"dramatiq-{mode}", args)]

    def victim(self, workers: list[Service]) -> psutil.Process:
        return busiest_child(workers[0])

    def enqueue_one(self, kind: str, arg: Any) -> None:
        TASKS[kind].send(arg)

    def enqueue_batch(self, kind: str, args: list[Any]) -> None:
        actor = TASKS[kind]
        dramatiq.group(actor.message(a) for a in args).run()

    def round_trip(self, i: int) -> Any:
        return noop_result.send(i).get_result(block=True, timeout=30_000)
