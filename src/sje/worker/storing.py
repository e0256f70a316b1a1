"""Storing a task's outcome: retried through broker outages, the attempt's log first."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

from sje.errors import BrokerError
from sje.models import TaskMessage

log = logging.getLogger(__name__)
T = TypeVar("T")


class LogStore(Protocol):
    async def store(self, job_id: str, index: str, attempt: int, log: Mapping[str, Any]) -> str: ...


async def until_stored(forced: asyncio.Event, call: Callable[[], Awaitable[T]]) -> T:
    """``call()`` retried through broker outages until it lands, or until ``forced`` is set
    (the worker must stop now: the error is raised)."""
    delay = 0.1
    while True:
        try:
            return await call()
        except BrokerError as exc:
            if forced.is_set():
                raise
            log.error("storing an outcome failed, retrying in %.1fs: %s", delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def log_first(
    logs: LogStore, message: TaskMessage, task_log: Any, call: Callable[[], Awaitable[T]]
) -> Callable[[], Awaitable[T]]:
    """``call`` (storing an outcome) preceded by storing the attempt's log.

    The outcome makes the job visible as finished, so the log goes first. Through an outage
    both are retried together; a log that fails while its outcome lands is given up (with a
    warning) rather than holding the outcome back.
    """
    if not isinstance(task_log, dict):
        return call  # a silent attempt: no extra round trip
    pending = [task_log]

    async def log_then_call() -> T:
        problem = None
        if pending:
            try:
                await logs.store(message.job_id, message.index, message.attempt, pending[0])
                pending.clear()
            except BrokerError as exc:
                problem = exc
        value = await call()
        if problem is not None:
            log.warning(
                "task %s attempt %d: its log was not stored: %s",
                message.id,
                message.attempt,
                problem,
            )
        return value

    return log_then_call
