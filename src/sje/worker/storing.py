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


def logs_first(
    logs: LogStore,
    attempts: list[tuple[TaskMessage, Any]],
    call: Callable[[], Awaitable[T]],
) -> Callable[[], Awaitable[T]]:
    """``call`` (storing outcomes) preceded by storing each attempt's log, for the
    (message, log) pairs of ``attempts``.

    An outcome makes its job visible as finished, so the logs go first. Through an outage all
    are retried together; a log that fails while its outcome lands is given up (with a
    warning) rather than holding the outcome back.
    """
    pending = [(m, task_log) for m, task_log in attempts if isinstance(task_log, dict)]
    if not pending:
        return call  # silent attempts: no extra round trip

    async def logs_then_call() -> T:
        problems = []
        for item in list(pending):
            message, task_log = item
            try:
                await logs.store(message.job_id, message.index, message.attempt, task_log)
                pending.remove(item)
            except BrokerError as exc:
                problems.append((message, exc))
        value = await call()
        for message, problem in problems:
            log.warning(
                "task %s attempt %d: its log was not stored: %s",
                message.id,
                message.attempt,
                problem,
            )
        return value

    return logs_then_call
