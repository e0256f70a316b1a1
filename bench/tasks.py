"""No-op tasks for the benchmark: SJE's, and the same no-op for RQ, Celery and Dramatiq.

Every system runs the same work per task: ``INCR`` a completion counter in the benchmark's
Redis DB (``BENCH_REDIS_URL``, DB 15 by default), then return the input. The counter is how
``run.py`` sees the first and the last completion the same way for every system, and it proves
each task ran exactly once. ``BENCH_COUNTER_KEY`` names the counter (one per system).

The peers' apps are built on first use (``module.__getattr__``), so a process that serves SJE
never imports Celery or Dramatiq and the other way round: worker memory stays comparable.

- SJE: ``sje worker --tasks bench.tasks`` (task ``bench.tasks.noop``)
- RQ: enqueue ``bench.tasks.rq_noop``
- Celery: ``celery -A bench.tasks:celery_app worker`` (``celery_noop``, ``celery_noop_result``)
- Dramatiq: ``dramatiq bench.tasks:dramatiq_broker`` (``dramatiq_noop``,
  ``dramatiq_noop_result``)

``count`` is the load test's task (``load.py``): it takes the counter's Redis URL and key as
arguments, so it needs nothing from the environment of the worker's child.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import redis

import sje

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
COUNTER_KEY = os.environ.get("BENCH_COUNTER_KEY", "bench:done")

_client: redis.Redis | None = None
_client_pid = 0


def _count() -> None:
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        _client = redis.Redis.from_url(REDIS_URL)
        _client_pid = os.getpid()
    _client.incr(COUNTER_KEY)


def _noop(x: Any) -> Any:
    _count()
    return x


@sje.task
def echo(x: Any) -> Any:
    """Returns its input and nothing else (``backends.py``: no counter, no Redis)."""
    return x


@sje.task
def noop(x: Any) -> Any:
    """SJE's no-op."""
    return _noop(x)


_counters: dict[str, redis.Redis] = {}
_counters_pid = 0


@sje.task
def count(url: str, key: str) -> int:
    """The load test's task: ``INCR key`` in the Redis at ``url``; returns the new count.

    One client per URL and process, made on first use, so an execution costs one round trip.
    """
    global _counters_pid
    if _counters_pid != os.getpid():
        _counters.clear()
        _counters_pid = os.getpid()
    client = _counters.get(url)
    if client is None:
        client = _counters[url] = redis.Redis.from_url(url)
    return int(client.incr(key))


def rq_noop(x: Any) -> Any:
    """RQ's no-op: RQ runs any importable function."""
    return _noop(x)


def _build_celery() -> dict[str, Any]:
    from celery import Celery

    app = Celery("bench", broker=REDIS_URL, backend=REDIS_URL)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        result_expires=3600,
    )

    # the drain uses fire-and-forget (the counter is the acknowledgement); latency needs results
    @app.task(name="bench.celery_noop", ignore_result=True)
    def celery_noop(x: Any) -> Any:
        return _noop(x)

    @app.task(name="bench.celery_noop_result")
    def celery_noop_result(x: Any) -> Any:
        return _noop(x)

    return {
        "celery_app": app,
        "celery_noop": celery_noop,
        "celery_noop_result": celery_noop_result,
    }


def _dramatiq_noop(x: Any) -> None:
    # returns nothing: with the Results middleware on, a returned value that is not stored is
    # logged as a warning for every message, which would slow the drain down
    _noop(x)


def _build_dramatiq() -> dict[str, Any]:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.results import Results
    from dramatiq.results.backends.redis import RedisBackend

    broker = RedisBroker(url=REDIS_URL)
    broker.add_middleware(Results(backend=RedisBackend(url=REDIS_URL)))
    dramatiq.set_broker(broker)
    return {
        "dramatiq_broker": broker,
        "dramatiq_noop": dramatiq.actor(_dramatiq_noop, actor_name="bench_noop", max_retries=0),
        "dramatiq_noop_result": dramatiq.actor(
            _noop, actor_name="bench_noop_result", max_retries=0, store_results=True
        ),
    }


_BUILDERS: dict[str, Callable[[], dict[str, Any]]] = {
    "celery_app": _build_celery,
    "celery_noop": _build_celery,
    "celery_noop_result": _build_celery,
    "dramatiq_broker": _build_dramatiq,
    "dramatiq_noop": _build_dramatiq,
    "dramatiq_noop_result": _build_dramatiq,
}


def __getattr__(name: str) -> Any:
    builder = _BUILDERS.get(name)
    if builder is None:
        raise AttributeError(f"module 'bench.tasks' has no attribute '{name}'")
    globals().update(builder())
    return globals()[name]
