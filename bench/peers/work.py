"""The work every system runs in bench/compare.py: the same bodies, wrapped by each system's app.

Only the standard library and ``redis``: every peer's virtual environment imports it. The Redis
is the benchmark's private one (``BENCH_REDIS_URL``, required); the keys are fixed, and the
driver deletes them before each measurement:

- ``bench:done``  completion counter: ``INCR`` once per run of a task (duplicates included);
- ``bench:seen``  set of the inputs that completed: its size is the number of distinct tasks
  that completed, so ``done - |seen|`` is exactly the number of runs that were duplicates, and
  ``N - |seen|`` the number of tasks lost;
- ``bench:spans`` list of ``"start end cpu"`` (wall clock s, wall clock s, thread CPU s) for
  the CPU- and I/O-bound tasks;
- ``bench:pids``  set of the PIDs that ran a warm-up task (to know every worker process is up),
  ``bench:warm`` the number of warm-up tasks that ran.

Each task records with one pipelined round trip, after its work.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import redis
import redis.asyncio as aioredis

DONE = "bench:done"
SEEN = "bench:seen"
SPANS = "bench:spans"
PIDS = "bench:pids"
WARM = "bench:warm"
KEYS = (DONE, SEEN, SPANS, PIDS, WARM)
IO_SECONDS = 0.1
WARM_SECONDS = 0.02

_sync: tuple[int, redis.Redis] | None = None
_async: dict[tuple[int, int], aioredis.Redis] = {}
_lock = threading.Lock()  # thread pools: one client, made once


def redis_url() -> str:
    """The benchmark's private Redis: read when first needed (the driver sets it after its
    imports); no default, so nothing ever lands in another Redis by mistake."""
    url = os.environ.get("BENCH_REDIS_URL")
    if not url:
        raise RuntimeError("BENCH_REDIS_URL is not set (bench/compare.py sets it)")
    return url


def client() -> redis.Redis:
    """One client per process (redis-py's pool is thread-safe)."""
    global _sync
    found = _sync
    if found is None or found[0] != os.getpid():
        with _lock:
            if _sync is None or _sync[0] != os.getpid():
                _sync = (os.getpid(), redis.Redis.from_url(redis_url()))
            found = _sync
    return found[1]


def aclient() -> aioredis.Redis:
    """One asyncio client per process and event loop."""
    key = (os.getpid(), id(asyncio.get_running_loop()))
    found = _async.get(key)
    if found is None:
        found = _async[key] = aioredis.Redis.from_url(redis_url())
    return found


def spin(loops: int) -> int:
    """Pure-Python CPU work; ``loops`` is calibrated once per run (~20 ms)."""
    x = 0
    for k in range(loops):
        x = (x + k * k) % 1_000_003
    return x


def _span(t0: float, cpu: float) -> str:
    return f"{t0:.6f} {time.time():.6f} {cpu:.6f}"


def record(i: Any, span: str | None = None) -> None:
    pipe = client().pipeline(transaction=False)
    pipe.sadd(SEEN, i)
    pipe.incr(DONE)
    if span is not None:
        pipe.rpush(SPANS, span)
    pipe.execute()


async def arecord(i: Any, span: str | None = None) -> None:
    pipe = aclient().pipeline(transaction=False)
    pipe.sadd(SEEN, i)
    pipe.incr(DONE)
    if span is not None:
        pipe.rpush(SPANS, span)
    await pipe.execute()


# -- the bodies ------------------------------------------------------------------------------


def noop(i: int) -> int:
    record(i)
    return i


async def anoop(i: int) -> int:
    await arecord(i)
    return i


def cpu(arg: list[int]) -> int:
    """``arg`` = [input, loops]: ~20 ms of pure-Python work, its thread CPU time recorded."""
    i, loops = arg
    t0, c0 = time.time(), time.thread_time()
    spin(loops)
    record(i, _span(t0, time.thread_time() - c0))
    return i


async def acpu(arg: list[int]) -> int:
    """The same work in a coroutine (it blocks the event loop, as CPU work does)."""
    i, loops = arg
    t0, c0 = time.time(), time.thread_time()
    spin(loops)
    await arecord(i, _span(t0, time.thread_time() - c0))
    return i


def io(i: int) -> int:
    """Waits 100 ms (a blocking sleep: for thread and process pools)."""
    t0 = time.time()
    time.sleep(IO_SECONDS)
    record(i, _span(t0, 0.0))
    return i


async def aio(i: int) -> int:
    """Awaits 100 ms."""
    t0 = time.time()
    await asyncio.sleep(IO_SECONDS)
    await arecord(i, _span(t0, 0.0))
    return i


def warm(i: int) -> int:
    time.sleep(WARM_SECONDS)
    pipe = client().pipeline(transaction=False)
    pipe.sadd(PIDS, os.getpid())
    pipe.incr(WARM)
    pipe.execute()
    return i


async def awarm(i: int) -> int:
    await asyncio.sleep(WARM_SECONDS)
    pipe = aclient().pipeline(transaction=False)
    pipe.sadd(PIDS, os.getpid())
    pipe.incr(WARM)
    await pipe.execute()
    return i
