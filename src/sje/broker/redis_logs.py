"""Task logs on Redis: what each attempt printed and logged (``P:job:<id>:log`` hash).

A worker stores an attempt's log (``sje.worker.capture``) just before its outcome, under the
field ``<task index>:<attempt>``; ``lua/log.lua`` writes it only while the job exists and the
key expires with the job. A job keeps at most ``MAX_LOGS`` logs and ``MAX_BYTES`` of them, so
a 100,000-task job whose every task prints stays bounded; later logs are only counted
(``dropped``). The master reads them for ``GET /api/v1/jobs/{id}/logs``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from sje.broker.base import LogPage

if TYPE_CHECKING:
    from sje.broker.redis import RedisBroker

MAX_LOGS = 10_000
MAX_BYTES = 32 * 1024 * 1024
#: a page of a job's logs ends at the first task that takes it past this (at least one task)
PAGE_BYTES = 4 * 1024 * 1024


def _task_order(index: str) -> tuple[int, int]:
    return (1, 0) if index == "r" else (0, int(index))


def _fields(raw: list[bytes]) -> dict[str, list[int]]:
    """Attempts by task index, both in order, from the hash's field names."""
    out: dict[str, list[int]] = {}
    for name in raw:
        index, sep, attempt = name.decode().rpartition(":")
        if sep and attempt.isdigit() and (index == "r" or index.isdigit()):
            out.setdefault(index, []).append(int(attempt))
    return {i: sorted(out[i]) for i in sorted(out, key=_task_order)}


class RedisTaskLogs:
    def __init__(self, broker: RedisBroker) -> None:
        self._b = broker

    def _key(self, job_id: str) -> str:
        return self._b.key("job", job_id, "log")

    async def store(self, job_id: str, index: str, attempt: int, log: Mapping[str, Any]) -> str:
        """Store one attempt's log (``text``, ``truncated``); returns ok | full | missing
        (see log.lua). Storing the same attempt again replaces it."""
        value = orjson.dumps(
            {"text": str(log.get("text", "")), "truncated": bool(log.get("truncated"))}
        )
        status: bytes = await self._b.run_script(
            "log", job_id, f"{index}:{attempt}", value, MAX_LOGS, MAX_BYTES
        )
        return status.decode()

    async def _index(self, job_id: str) -> tuple[dict[str, list[int]], int]:
        with self._b.guard():
            pipe = self._b.client.pipeline(transaction=False)
            pipe.hkeys(self._key(job_id))
            pipe.hget(self._key(job_id), "dropped")
            names, dropped = await pipe.execute()
        return _fields(names), int(dropped or 0)

    async def _read(self, job_id: str, wanted: list[tuple[str, int]]) -> list[dict[str, Any]]:
        if not wanted:
            return []
        with self._b.guard():
            values = await self._b.client.hmget(self._key(job_id), [f"{i}:{a}" for i, a in wanted])
        return [
            {"task": index, "attempt": attempt, **orjson.loads(value)}
            for (index, attempt), value in zip(wanted, values, strict=True)
            if value is not None
        ]

    async def of_task(self, job_id: str, index: str) -> LogPage:
        """Every stored attempt of one task (``index``: a number or ``r``)."""
        tasks, dropped = await self._index(job_id)
        wanted = [(index, a) for a in tasks.get(index, [])]
        return LogPage(await self._read(job_id, wanted), None, dropped)

    async def of_job(self, job_id: str, offset: int, limit: int) -> LogPage:
        """Up to ``limit`` tasks that have logs, skipping the first ``offset`` such tasks; a
        page also ends once it holds ``PAGE_BYTES``."""
        tasks, dropped = await self._index(job_id)
        page = list(tasks)[offset : offset + limit]
        chosen = [(i, a) for i in page for a in tasks[i]]
        with self._b.guard():
            pipe = self._b.client.pipeline(transaction=False)
            for index, attempt in chosen:
                pipe.hstrlen(self._key(job_id), f"{index}:{attempt}")
            sizes = dict(zip(chosen, await pipe.execute(), strict=True)) if chosen else {}
        wanted: list[tuple[str, int]] = []
        size, taken = 0, 0
        for index in page:
            if size >= PAGE_BYTES:
                break
            for attempt in tasks[index]:
                wanted.append((index, attempt))
                size += int(sizes[index, attempt])
            taken += 1
        following = offset + taken
        logs = await self._read(job_id, wanted)
        return LogPage(logs, following if following < len(tasks) else None, dropped)
