"""SJE tasks of the benchmarks that are not comparisons (``compare.py`` has its own, one module
per system, under ``peers/``).

- ``echo``: returns its input and touches nothing (``backends.py``).
- ``count``: the load test's task (``load.py``): ``INCR`` a counter in the Redis whose URL and
  key it is given, so it needs nothing from the environment of the worker's child.
"""

from __future__ import annotations

import os
from typing import Any

import redis

import sje

_counters: dict[str, redis.Redis] = {}
_counters_pid = 0


@sje.task
def echo(x: Any) -> Any:
    """Returns its input and nothing else."""
    return x


@sje.task
def count(url: str, key: str) -> int:
    """``INCR key`` in the Redis at ``url``; returns the new count.

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
