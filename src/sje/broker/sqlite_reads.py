"""Reads of the SQLite store besides the monitor's views: event streams, the dead-letter queue
(list, show, requeue, purge) and task logs, with the shapes and bounds of their Redis
counterparts (``redis_dlq``, ``redis_logs``, whose bounds they read at each call).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from sje.broker import redis_logs as bounds
from sje.broker import sqlite_admin as admin
from sje.broker.base import LogPage
from sje.broker.redis_dlq import entry_view, shown_entry
from sje.broker.sqlite_tx import LIVE, Tx, event_id, parse_index

if TYPE_CHECKING:
    from sje.broker.sqlite import SQLiteBroker


def job_events(
    tx: Tx, job_id: str, after: int, job_level: bool, limit: int
) -> list[tuple[str, dict[str, str]]]:
    """Up to ``limit`` events of a job's stream (or its job-level one) after ``after``."""
    stream = "jev" if job_level else "ev"
    rows = tx.all(
        f"SELECT e.eid, e.fields FROM job_events e JOIN jobs j ON j.id = e.job "
        f"WHERE e.job = ? AND e.eid > ? AND e.{stream} = 1 "
        "AND (j.expires_at IS NULL OR j.expires_at > ?) ORDER BY e.eid LIMIT ?",
        job_id,
        after,
        tx.now,
        limit,
    )
    return [(event_id(eid), orjson.loads(fields)) for eid, fields in rows]


def job_state(tx: Tx, job_id: str) -> str | None:
    row = tx.one(f"SELECT state FROM jobs WHERE id = ? AND {LIVE}", job_id, tx.now)
    return None if row is None else str(row[0])


class SQLiteDeadLetters:
    """Entries are written by the transitions (``Tx.dlq_add``) when a task fails for good;
    this class reads them and acts on operators' requests."""

    def __init__(self, broker: SQLiteBroker) -> None:
        self._b = broker

    async def page(self, limit: int, offset: int) -> tuple[int, list[dict[str, Any]]]:
        """(total, entries newest first)."""

        def read(tx: Tx) -> tuple[int, list[Any]]:
            (total,) = tx.one("SELECT count(*) FROM dead_letters")
            if limit <= 0:
                return total, []
            rows = tx.all(
                "SELECT entry FROM dead_letters ORDER BY seq DESC LIMIT ? OFFSET ?", limit, offset
            )
            return total, rows

        total, rows = await self._b.read(read)
        return total, [entry_view(row[0]) for row in rows]

    async def entry(self, entry_id: str) -> dict[str, Any] | None:
        """The entry with its payload (or raw queue entry) and its job's current state."""
        found = await self._b.read(_entry, entry_id)
        if found is None:
            return None
        row, state, stored = found
        return shown_entry(row[0], row[1], state, stored)

    async def requeue(self, entry_id: str, job_id: str = "") -> tuple[str, str, int]:
        """(status, job id, tasks queued); see ``sqlite_admin.requeue`` for the statuses.
        Given ``job_id``, that failed job is requeued whatever its entries."""
        return await self._b.write(admin.requeue, entry_id, job_id)

    async def ids(self) -> list[str]:
        rows = await self._b.read(lambda tx: tx.all("SELECT id FROM dead_letters ORDER BY seq"))
        return [str(row[0]) for row in rows]

    async def purge(self, entry_ids: list[str] | None) -> int:
        """Delete the given entries (None: all); returns how many existed."""
        if entry_ids is None:
            return await self._b.write(lambda tx: tx.run("DELETE FROM dead_letters"))
        if not entry_ids:
            return 0

        def purge(tx: Tx) -> int:
            return sum(tx.run("DELETE FROM dead_letters WHERE id = ?", i) for i in set(entry_ids))

        return await self._b.write(purge)


def _entry(tx: Tx, entry_id: str) -> tuple[Any, str | None, bytes | None] | None:
    row = tx.one("SELECT entry, raw FROM dead_letters WHERE id = ?", entry_id)
    if row is None:
        return None
    entry = orjson.loads(row[0])
    job_id, index = entry.get("job"), parse_index(str(entry.get("task")))
    if job_id is None:
        return row, None, None
    state = job_state(tx, job_id)
    stored = None
    if state is not None and index is not None:
        found = tx.one("SELECT input FROM tasks WHERE job = ? AND idx = ?", job_id, index)
        stored = None if found is None or found[0] is None else bytes(found[0])
    return row, state, stored


class SQLiteTaskLogs:
    """What each attempt printed and logged, stored by the worker just before its outcome;
    at most ``MAX_LOGS`` logs and ``MAX_BYTES`` per job (later ones only counted), gone with
    the job."""

    def __init__(self, broker: SQLiteBroker) -> None:
        self._b = broker

    async def store(self, job_id: str, index: str, attempt: int, log: Mapping[str, Any]) -> str:
        """Store one attempt's log (``text``, ``truncated``); returns ok | full | missing.
        Storing the same attempt again replaces it."""
        value = orjson.dumps(
            {"text": str(log.get("text", "")), "truncated": bool(log.get("truncated"))}
        )
        field = (index, attempt)
        return await self._b.write(
            admin.store_log, job_id, field, value, bounds.MAX_LOGS, bounds.MAX_BYTES
        )

    async def of_task(self, job_id: str, index: str) -> LogPage:
        """Every stored attempt of one task (``index``: a number or ``r``)."""

        def read(tx: Tx) -> tuple[list[Any], int]:
            dropped = _dropped(tx, job_id)
            if dropped is None:
                return [], 0
            rows = tx.all(
                "SELECT attempt, value FROM logs WHERE job = ? AND idx = ? ORDER BY attempt",
                job_id,
                index,
            )
            return rows, dropped

        rows, dropped = await self._b.read(read)
        if not _is_index(index):
            rows = []
        logs = [{"task": index, "attempt": a, **orjson.loads(v)} for a, v in rows]
        return LogPage(logs, None, dropped)

    async def of_job(self, job_id: str, offset: int, limit: int) -> LogPage:
        """Up to ``limit`` tasks that have logs, skipping the first ``offset`` such tasks; a
        page also ends once it holds ``PAGE_BYTES``."""
        sizes, dropped = await self._b.read(_log_sizes, job_id)
        tasks: dict[str, list[tuple[int, int]]] = {}
        for index, attempt, size in sizes:
            if _is_index(index):
                tasks.setdefault(index, []).append((attempt, size))
        order = sorted(tasks, key=bounds._task_order)
        page = order[offset : offset + limit]
        wanted: list[tuple[str, int]] = []
        size, taken = 0, 0
        for index in page:
            if size >= bounds.PAGE_BYTES:
                break
            for attempt, length in sorted(tasks[index]):
                wanted.append((index, attempt))
                size += length
            taken += 1
        logs = await self._b.read(_log_values, job_id, wanted) if wanted else []
        following = offset + taken
        return LogPage(logs, following if following < len(order) else None, dropped)


def _is_index(index: str) -> bool:
    return index == "r" or (index.isascii() and index.isdigit())


def _dropped(tx: Tx, job_id: str) -> int | None:
    row = tx.one(f"SELECT log_dropped FROM jobs WHERE id = ? AND {LIVE}", job_id, tx.now)
    return None if row is None else int(row[0])


def _log_sizes(tx: Tx, job_id: str) -> tuple[list[Any], int]:
    dropped = _dropped(tx, job_id)
    if dropped is None:
        return [], 0
    rows = tx.all("SELECT idx, attempt, length(value) FROM logs WHERE job = ?", job_id)
    return rows, dropped


def _log_values(tx: Tx, job_id: str, wanted: list[tuple[str, int]]) -> list[dict[str, Any]]:
    out = []
    for index, attempt in wanted:
        row = tx.one(
            "SELECT value FROM logs WHERE job = ? AND idx = ? AND attempt = ?",
            job_id,
            index,
            attempt,
        )
        if row is not None:
            out.append({"task": index, "attempt": attempt, **orjson.loads(row[0])})
    return out
