"""Celery in bench/compare.py: its app (``celery -A bench.peers.sys_celery:app worker``) and
adapter. Redis transport and Redis result backend, prefork pool of 2 (threads for I/O)."""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import psutil
from bench.common import Service
from bench.peers import work
from bench.peers.base import Adapter as AdapterBase
from bench.peers.base import busiest_child
from celery import Celery, group

app = Celery("bench", broker=work.redis_url(), backend=work.redis_url())
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    result_expires=3600,
    # at-least-once, like SJE: acknowledge after the task ran, requeue when its process dies
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # only the round trip observes a result; the other tasks are fire-and-forget
    task_ignore_result=True,
)


@app.task(name="noop")
def noop(i: int) -> int:
    return work.noop(i)


@app.task(name="noop_result", ignore_result=False)
def noop_result(i: int) -> int:
    return work.noop(i)


@app.task(name="cpu")
def cpu(arg: list[int]) -> int:
    return work.cpu(arg)


@app.task(name="io")
def io(i: int) -> int:
    return work.io(i)


@app.task(name="warm")
def warm(i: int) -> int:
    return work.warm(i)


TASKS = {"noop": noop, "cpu": cpu, "io": io, "warm": warm}
IO_THREADS = 100


class Adapter(AdapterBase):
    name = "celery"
    dists = ("celery", "kombu", "redis")
    concurrency: ClassVar[dict[str, int]] = {"std": 2, "rt": 2, "io": 2 * IO_THREADS, "rec": 2}
    batch_api = "group(...).apply_async()"
    redelivery_s = 0.0  # re-queued as soon as the pool process is found dead
    keep = ("_kombu.binding.*",)  # the queue bindings, declared once by the client

    def setup(self) -> None:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=3)

    def settings(self) -> dict[str, str]:
        return {
            "workers": "`celery worker --pool prefork --concurrency 2` (1 main + 2 pool "
            "processes), --without-gossip/mingle/heartbeat, log level WARNING, prefetch "
            f"multiplier 4 (default); I/O: 2 x `--pool threads --concurrency {IO_THREADS}`",
            "enqueue": "one-by-one: `task.delay(i)`; batch: `group(task.s(i) ...).apply_async()`",
            "results": "Redis backend, only for the round trip (`delay(i).get()`, pub/sub); "
            "other tasks ignore_result",
            "recovery": "task_acks_late + task_reject_on_worker_lost (at-least-once; default "
            "is at-most-once); SIGKILL one prefork pool process, which the main process "
            "replaces",
        }

    def workers(self, mode: str) -> list[Service]:
        base = ["-m", "celery", "-A", "bench.peers.sys_celery:app", "worker"]
        base += ["--loglevel", "WARNING", "--without-gossip", "--without-mingle"]
        base += ["--without-heartbeat", "-n", "{name}@%h"]
        if mode == "io":
            pool = ["--pool", "threads", "--concurrency", str(IO_THREADS)]
            return [self.h.start(f"celery-{mode}", [*base, *pool]) for _ in range(2)]
        pool = ["--pool", "prefork", "--concurrency", "2"]
        return [self.h.start(f"celery-{mode}", [*base, *pool])]

    def victim(self, workers: list[Service]) -> psutil.Process:
        return busiest_child(workers[0])

    def enqueue_one(self, kind: str, arg: Any) -> None:
        TASKS[kind].delay(arg)

    def enqueue_batch(self, kind: str, args: list[Any]) -> None:
        task = TASKS[kind]
        group(task.s(a) for a in args).apply_async()

    def round_trip(self, i: int) -> Any:
        return noop_result.delay(i).get(timeout=30)

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            app.close()
