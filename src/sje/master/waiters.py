"""Requests waiting for jobs to end (``POST /jobs?wait=``), woken by one event reader.

However many requests wait, one task follows the job ends (``MonitorViews.job_ends``: on
Redis a stream of its own, so that it is not woken by every other event) while any does: it
starts when the first request waits (at the newest end), resolves the waiters of each job end
it reads, and stops when no waiter is left. A request registers before it stores its
job, so the end comes after the reader's position; a job stored earlier (an idempotent
duplicate) is checked once after registering (``docs/architecture.md``, step 8).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable

from sje.broker.base import JobEnd, MonitorViews
from sje.errors import SJEError

log = logging.getLogger(__name__)

_BLOCK_MS = 1000  # one read waits this long at most: a reader with no waiters stops by then


class JobEnds:
    """``async with ends.watching(job_id) as ended:`` then ``await ended`` (with a timeout):
    done once a job end was read after the ``async with`` began, with that ``JobEnd`` (or
    ``None`` when the reader failed: the caller then reads the job's state)."""

    def __init__(self, views: MonitorViews) -> None:
        self._views = views
        self._waiters: dict[str, set[asyncio.Future[JobEnd | None]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._started: asyncio.Future[None] | None = None

    @contextlib.asynccontextmanager
    async def watching(self, job_id: str) -> AsyncIterator[asyncio.Future[JobEnd | None]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[JobEnd | None] = loop.create_future()
        self._waiters.setdefault(job_id, set()).add(future)
        try:
            if self._reader is None:
                self._started = loop.create_future()
                self._reader = asyncio.create_task(self._read(self._started))
            assert self._started is not None
            await asyncio.shield(self._started)  # the reader's position is set
            yield future
        finally:
            waiting = self._waiters.get(job_id)
            if waiting is not None:
                waiting.discard(future)
                if not waiting:
                    del self._waiters[job_id]

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _read(self, started: asyncio.Future[None]) -> None:
        views = self._views
        try:
            after = await views.last_job_end()
            started.set_result(None)
            while self._waiters:
                after, ended = await views.job_ends(after, _BLOCK_MS)
                for end in ended:
                    self._wake(self._waiters.get(end.job_id, ()), end)
        except SJEError as exc:
            log.warning("requests waiting for jobs answered without the outcome: %s", exc)
            for waiting in self._waiters.values():
                self._wake(waiting, None)
        finally:
            if not started.done():
                started.set_result(None)
            self._reader = None

    @staticmethod
    def _wake(futures: Iterable[asyncio.Future[JobEnd | None]], end: JobEnd | None) -> None:
        for future in futures:
            if not future.done():
                future.set_result(end)
