"""SQLite broker: task queue, scheduler and job store in one file that every process on one
host shares (``sqlite:///relative/sje.db`` or ``sqlite:////absolute/sje.db``).

The file is in WAL mode with ``synchronous=NORMAL``: a killed process loses nothing committed,
a power cut may lose the last moments but never corrupts the file. Each broker object owns one
connection on one thread of its own; every transition is one ``BEGIN IMMEDIATE`` transaction
there (``sqlite_ops``, ``sqlite_admin``, ``sqlite_relay``), so any number of processes can act
at once, and the asyncio side only awaits the thread. Times are the host clock in milliseconds.
Idle workers poll ``PRAGMA data_version`` (5 ms backing off to 200 ms) instead of blocking. The
table layout is ``sqlite_schema.sql``, opening the file ``sqlite_db``; the key prefix is unused:
the file is the deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Concatenate, ParamSpec, TypeVar

import orjson

from sje.broker import sqlite_admin as admin
from sje.broker import sqlite_ops as ops
from sje.broker import sqlite_relay as relay
from sje.broker.base import NewJob, SubmitOutcome
from sje.broker.redis import EVENTS_PAGE
from sje.broker.sqlite_db import (
    NETWORK_FS,
    database_path,
    filesystem_type,
    open_database,
    sqlite_error,
)
from sje.broker.sqlite_reads import SQLiteDeadLetters, SQLiteTaskLogs, job_events
from sje.broker.sqlite_tx import (
    JOB_COLUMNS,
    LIVE,
    REDUCE,
    Tx,
    index_text,
    job_record,
    parse_event_id,
)
from sje.broker.sqlite_views import SQLiteViews
from sje.models import TaskMessage, dumps
from sje.tasks import TaskDefaults

P = ParamSpec("P")
T = TypeVar("T")
_POLL_MIN_S, _POLL_MAX_S = 0.005, 0.2
_WORKER_FORGET_S = 3600.0


class SQLiteBroker:
    """Implements the ``Broker`` contract (``sje.broker.base``) on one SQLite file.

    Safe for concurrent use from one event loop (calls run one at a time on the broker's
    database thread) and from any number of processes. SQLite failures surface as
    ``BrokerError`` naming the file and what to do.
    """

    def __init__(self, url: str, prefix: str = "sje") -> None:
        self.url = url
        self.prefix = prefix
        self.path = database_path(url)
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None  # used on the executor's thread only
        self._writes = 0  # write transactions committed on this connection
        self._fetch_mark: tuple[int, int] | None = None
        self.dlq = SQLiteDeadLetters(self)
        self.logs = SQLiteTaskLogs(self)
        self.views = SQLiteViews(self)

    # -- plumbing -------------------------------------------------------------------------

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)`` on the database thread; SQLite errors become ``BrokerError``."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="sje-sqlite")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._run, fn)

    def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return fn(self._connection())
        except sqlite3.Error as exc:
            raise sqlite_error(self.path, exc) from exc

    async def write(self, op: Callable[Concatenate[Tx, P], T], *args: P.args, **kw: P.kwargs) -> T:
        """``op(tx, ...)`` as one ``BEGIN IMMEDIATE`` transaction."""
        return await self.call(lambda db: self._transact(db, True, lambda tx: op(tx, *args, **kw)))

    async def read(self, op: Callable[Concatenate[Tx, P], T], *args: P.args, **kw: P.kwargs) -> T:
        """``op(tx, ...)`` on one snapshot (a read transaction); it must not write."""
        return await self.call(lambda db: self._transact(db, False, lambda tx: op(tx, *args, **kw)))

    def _transact(self, db: sqlite3.Connection, write: bool, op: Callable[[Tx], T]) -> T:
        db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            tx = Tx(db, int(time.time() * 1000))
            result = op(tx)
            if write:
                tx.flush()
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # the first error is the one to tell
                    db.execute("ROLLBACK")
            raise
        self._writes += write
        return result

    def _mark(self, db: sqlite3.Connection) -> tuple[int, int]:
        """Changes so far: commits of other connections, and this one's."""
        return int(db.execute("PRAGMA data_version").fetchone()[0]), self._writes

    async def _changed(self, mark: tuple[int, int], deadline: float) -> bool:
        """Whether the file changed since ``mark`` before ``deadline`` (monotonic seconds)."""
        delay = _POLL_MIN_S
        while await self.call(self._mark) == mark:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, _POLL_MAX_S)
        return True

    async def poll(self, read: Callable[[Tx], list[T]], block_ms: int | None) -> list[T]:
        """``read`` until it finds something, for up to ``block_ms`` (0: no limit; None: once)."""
        deadline = time.monotonic() + (block_ms / 1000 if block_ms else float("inf"))
        while True:
            mark, rows = await self.call(
                lambda db: (self._mark(db), self._transact(db, False, read))
            )
            if rows or block_ms is None or not await self._changed(mark, deadline):
                return rows

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = open_database(self.path)
        return self._db

    def _close_connection(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def ping(self) -> None:
        await self.call(lambda db: db.execute("SELECT 1").fetchone())

    async def server_time(self) -> float:
        return time.time()

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(executor, self._close_connection)
            finally:
                executor.shutdown(wait=False)

    async def shared_value(self, name: str, candidate: str) -> tuple[str, bool]:
        """A deployment-wide value (``token``, ``secret``): the stored one, or ``candidate``
        stored now when there was none. Returns (value, created)."""
        return await self.write(admin.shared_value, name, candidate)

    async def durability_warnings(self) -> list[str]:
        """What about this file could lose accepted work (empty when nothing)."""
        fs = filesystem_type(os.path.dirname(self.path))
        if fs.startswith(NETWORK_FS):
            return [
                f"the SQLite database {self.path} is on a network filesystem ({fs}), where "
                "SQLite's locking is unreliable and the file can be corrupted; keep it on a "
                "local disk, or use Redis (redis://) to share a store between hosts."
            ]
        return []

    # -- TaskQueue --------------------------------------------------------------------------

    async def fetch(
        self, worker_id: str, queues: list[str], n: int, lease_s: float
    ) -> list[TaskMessage]:
        return await self._fetching(lambda tx: ops.fetch(tx, worker_id, _ms(lease_s), n, queues))

    async def _fetching(self, op: Callable[[Tx], T]) -> T:
        """A transition that fetches: it remembers the file's state it saw, so that
        ``wait_for_work`` returns at once when anything changed since."""

        def run(db: sqlite3.Connection) -> T:
            version, result = self._transact(
                db, True, lambda tx: (int(tx.one("PRAGMA data_version")[0]), op(tx))
            )
            self._fetch_mark = (version, self._writes)
            return result

        return await self.call(run)

    async def complete_many(
        self,
        worker_id: str,
        done: list[tuple[str, bytes]],
        n: int,
        queues: list[str],
        lease_s: float,
    ) -> tuple[list[str], list[TaskMessage]]:
        """``complete`` each of ``done``, then ``fetch`` of ``n`` tasks, in one transaction."""

        def op(tx: Tx) -> tuple[list[str], list[TaskMessage]]:
            statuses = [ops.complete(tx, task_id, worker_id, result) for task_id, result in done]
            return statuses, ops.fetch(tx, worker_id, _ms(lease_s), n, queues) if n > 0 else []

        return await self._fetching(op)

    async def wait_for_work(self, queues: list[str], timeout_s: float) -> None:
        """Until the file changed since this broker's last fetch, or ``timeout_s``."""
        mark = self._fetch_mark
        if mark is None:
            mark = await self.call(self._mark)
        await self._changed(mark, time.monotonic() + timeout_s)

    async def complete(self, task_id: str, worker_id: str, result: bytes) -> str:
        return await self.write(ops.complete, task_id, worker_id, result)

    async def fail(
        self, task_id: str, worker_id: str, error: dict[str, Any], retry_in_s: float | None
    ) -> str:
        delay = -1 if retry_in_s is None else _ms(retry_in_s)
        return await self.write(ops.fail, task_id, worker_id, dumps(error), delay, "failed")

    async def dead_letter(self, task_id: str, worker_id: str, error: dict[str, Any]) -> str:
        return await self.write(ops.fail, task_id, worker_id, dumps(error), -1, "dead")

    async def renew(
        self,
        worker_id: str,
        task_ids: list[str],
        lease_s: float,
        stats: dict[str, Any] | None = None,
        due_s: float = 10.0,
    ) -> list[str]:
        """Heartbeat: extend leases, store the worker's ``stats``; lost after ``due_s``."""
        busy = int((stats or {}).get("busy", 0))
        encoded = dumps(stats).decode() if stats else ""
        return await self.write(
            ops.renew, worker_id, _ms(lease_s), _ms(due_s), busy, encoded, task_ids
        )

    async def release(self, worker_id: str, task_ids: list[str]) -> int:
        if not task_ids:
            return 0
        return await self.write(ops.release, worker_id, task_ids)

    # -- Scheduler --------------------------------------------------------------------------

    async def reclaim_expired(self, max_redeliveries: int) -> int:
        return await self.write(admin.reclaim, max_redeliveries, 1000)

    async def promote_due(self) -> int:
        return await self.write(admin.promote, 1000)

    async def prune_index(self) -> int:
        return await self.write(admin.prune, 1000)

    async def mark_lost_workers(self) -> int:
        return await self.write(admin.mark_lost, 1000)

    async def expire_jobs(self) -> int:
        reason = "Job timeout: job {job} ran longer than its job-timeout of {limit}s"
        return len(await self.write(admin.terminate, "timed_out", reason, []))

    # -- JobStore ---------------------------------------------------------------------------

    async def submit(self, job: NewJob) -> SubmitOutcome:
        return await self.write(ops.submit, job)

    async def job(self, job_id: str) -> dict[str, str] | None:
        row = await self.read(
            lambda tx: tx.one(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ? AND {LIVE}", job_id, tx.now
            )
        )
        return None if row is None else job_record(row)

    async def jobs(self, limit: int, offset: int) -> list[dict[str, str]]:
        """Up to ``limit`` jobs, newest first, skipping ``offset``; expired ones left out."""
        if limit <= 0 or offset < 0:
            return []
        rows = await self.read(
            lambda tx: tx.all(
                f"SELECT id, {JOB_COLUMNS} FROM jobs WHERE {LIVE} "
                "ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
                tx.now,
                limit,
                offset,
            )
        )
        return [{"id": row[0], **job_record(row[1:])} for row in rows]

    def _task_values(self, tx: Tx, column: str, job_id: str, where: str, *args: Any) -> list[Any]:
        return tx.all(
            f"SELECT t.idx, t.{column} FROM tasks t JOIN jobs j ON j.id = t.job "
            f"WHERE t.job = ? AND t.{column} IS NOT NULL AND {where} "
            "AND (j.expires_at IS NULL OR j.expires_at > ?)",
            job_id,
            *args,
            tx.now,
        )

    async def results(self, job_id: str, start: int, stop: int) -> list[bytes | None]:
        if stop <= start:
            return []
        rows = await self.read(
            self._task_values, "result", job_id, "t.idx >= ? AND t.idx < ?", max(start, 0), stop
        )
        values: list[bytes | None] = [None] * (stop - start)
        for idx, value in rows:
            values[idx - start] = bytes(value)
        return values

    async def reduce_result(self, job_id: str) -> bytes | None:
        rows = await self.read(self._task_values, "result", job_id, "t.idx = ?", REDUCE)
        return bytes(rows[0][1]) if rows else None

    async def errors(self, job_id: str) -> dict[str, bytes]:
        rows = await self.read(self._task_values, "error", job_id, "1")
        return {index_text(idx): bytes(value) for idx, value in rows}

    async def cancel(self, job_id: str) -> str:
        reason = "Cancelled: job {job} was cancelled on request"
        return (await self.write(admin.terminate, "cancelled", reason, [job_id]))[0]

    async def events(
        self, job_id: str, after: str, block_ms: int | None, job_level: bool = False
    ) -> list[tuple[str, dict[str, str]]]:
        """Events after id ``after``, all or ``job_level`` only; waits up to ``block_ms`` for
        one to arrive (None: not at all; 0: for ever)."""
        start = parse_event_id(after)
        return await self.poll(
            lambda tx: job_events(tx, job_id, start, job_level, EVENTS_PAGE), block_ms
        )

    async def depth(self, queue: str) -> int:
        row = await self.read(lambda tx: tx.one("SELECT depth FROM queues WHERE name = ?", queue))
        return 0 if row is None else int(row[0])

    async def task_catalog(self) -> dict[str, TaskDefaults]:
        rows = await self.read(lambda tx: tx.all("SELECT name, defaults FROM task_catalog"))
        return {name: TaskDefaults.from_json(orjson.loads(raw)) for name, raw in rows}

    # -- RelayStore (sqlite_relay) ---------------------------------------------------------------

    async def enable_relay(self) -> None:
        await self.write(relay.enable)

    async def claim_outbox(self, n: int, hold_s: float) -> list[tuple[str, str, int]]:
        return await self.write(relay.claim, n, _ms(hold_s)) if n > 0 else []

    async def settle_outbox(self, task_ids: list[str]) -> None:
        if task_ids:
            await self.write(relay.settle, task_ids)

    async def start(self, worker_id: str, task_ids: list[str], lease_s: float) -> list[TaskMessage]:
        return await self.write(relay.start, worker_id, task_ids, _ms(lease_s)) if task_ids else []

    # -- worker registry ----------------------------------------------------------------------

    async def register_worker(
        self,
        worker_id: str,
        info: dict[str, Any],
        tasks: dict[str, TaskDefaults],
        due_s: float = 10.0,
    ) -> None:
        catalog = {name: dumps(d.to_json()) for name, d in tasks.items()}
        await self.write(admin.register_worker, worker_id, info, catalog, _ms(due_s))

    async def deregister_worker(self, worker_id: str, event: bool = True) -> None:
        await self.write(admin.deregister_worker, worker_id, event)

    async def workers(self) -> list[dict[str, Any]]:
        """Registered workers: their info, last stats, ``last_seen_s`` (seconds since their
        last heartbeat), ``running`` (leases held) and ``state`` (alive or lost)."""
        now = time.time()
        rows, running = await self.read(_worker_rows)
        out = []
        for wid, info, seen, due, lost, stats in rows:
            age = now - seen / 1000
            if age > _WORKER_FORGET_S:
                await self.deregister_worker(wid, event=False)
                continue
            overdue = (due or 0) / 1000 < now
            row = {
                **orjson.loads(info),
                **(orjson.loads(stats) if stats else {}),
                "last_seen_s": round(age, 3),
                "running": running.get(wid, 0),
                "state": "lost" if lost is not None or overdue else "alive",
            }
            out.append(row)
        return sorted(out, key=lambda w: str(w.get("name")))


def _worker_rows(tx: Tx) -> tuple[list[Any], dict[str, int]]:
    rows = tx.all("SELECT id, info, seen, due, lost, stats FROM workers WHERE info IS NOT NULL")
    running = dict(tx.all("SELECT worker, count(*) FROM leases GROUP BY worker"))
    return rows, running


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
