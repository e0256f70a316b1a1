"""The worker process: fetch loop, heartbeat, timeouts and outcome reporting.

One asyncio loop in the worker process; task code never runs here, only in the pool's
children. The worker fetches at most its free slots, acknowledges a task only by storing its
outcome, renews its leases on every heartbeat and hands tasks back when it stops.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sje.broker.registry import open_broker
from sje.config import WorkerSettings
from sje.errors import BrokerError, WorkerError
from sje.models import TaskMessage
from sje.results import flatten
from sje.retry import retry_delay
from sje.security import resolve
from sje.tasks import Task, load_catalog
from sje.worker.intake import DEAD_LETTER_TYPES, Intake
from sje.worker.pool import Child, Pool
from sje.worker.sandbox import TaskLimits, death_hint
from sje.worker.stats import WorkerStats
from sje.worker.storing import log_first, until_stored

log = logging.getLogger(__name__)
T = TypeVar("T")

_TIMER_S = 0.1
_IDLE_BLOCK_S = 1.0


class Worker:
    """Built from settings (no I/O); ``run()`` until ``request_stop()`` (drain) or
    ``force_stop()`` (hand everything back now)."""

    def __init__(self, settings: WorkerSettings, burst: bool = False) -> None:
        self.settings = settings
        self.burst = burst
        self.name = settings.worker_name or f"{socket.gethostname()}-{os.getpid()}"
        self.id = f"{self.name}-{uuid.uuid4().hex[:6]}"
        self.broker = open_broker(
            settings.effective_broker_url, settings.key_prefix, settings.state_url
        )
        self.catalog: dict[str, Task[Any]] = {}
        self.intake = Intake(b"", 0, {}, self.name)  # set in run() once the secret is known
        self.pool = Pool(
            settings.tasks,
            settings.concurrency,
            settings.async_concurrency,
            settings.max_tasks_per_child,
            self._on_frame,
            TaskLimits.from_settings(settings),
        )
        self._waiting: collections.deque[tuple[TaskMessage, bool, bytes]] = collections.deque()
        self._storing: set[str] = set()
        self._reserved = 0  # slots a fetch in flight is filling
        self._background: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._forced = asyncio.Event()
        self.stats = WorkerStats(settings.concurrency)

    # -- lifecycle -------------------------------------------------------------------------

    def request_stop(self) -> None:
        if self._stopping.is_set():
            log.warning("stopping now: running tasks are handed back")
            self.force_stop()
        else:
            log.info(
                "stopping: waiting tasks handed back, running ones get shutdown-grace %gs "
                "(signal again to stop now)",
                self.settings.shutdown_grace,
            )
        self._stopping.set()
        self._wake.set()

    def force_stop(self) -> None:
        self._forced.set()
        self._stopping.set()
        self._wake.set()

    async def run(self, on_ready: Callable[[Worker], None] | None = None) -> None:
        if not self.settings.tasks:
            raise WorkerError("No task modules: give --tasks MODULE (or tasks: in worker.yaml).")
        self.catalog = load_catalog(self.settings.tasks)
        if not self.catalog:
            mods = ", ".join(self.settings.tasks)
            raise WorkerError(
                f"No @sje.task functions found in {mods}; decorate them with @sje.task."
            )
        await self.broker.ping()
        for warning in await self.broker.durability_warnings():
            log.warning("%s", warning)
        secret, _ = await resolve(self.broker, "secret", self.settings.secret)
        self.intake = Intake(
            secret.encode(), self.settings.max_message_kb * 1024, self.catalog, self.name
        )
        await self.pool.start()
        try:
            await self.broker.register_worker(
                self.id,
                self.info(),
                {n: t.defaults for n, t in self.catalog.items()},
                self.lost_after,
            )
            if on_ready:
                on_ready(self)
            timers = [asyncio.create_task(self._heartbeat()), asyncio.create_task(self._timeouts())]
            await self._fetch_loop()
            await self._shutdown()
            for timer in timers:
                timer.cancel()
            await asyncio.gather(*timers, return_exceptions=True)
            with contextlib.suppress(BrokerError):
                await self.broker.deregister_worker(self.id)
        finally:
            await self.pool.stop()
            await self.broker.close()

    @property
    def lost_after(self) -> float:
        """Seconds without a heartbeat after which this worker counts as lost."""
        return max(3 * self.settings.heartbeat_interval, 5.0)

    def info(self) -> dict[str, Any]:
        s = self.settings
        return {
            "id": self.id,
            "name": self.name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "queues": s.queues,
            "concurrency": s.concurrency,
            "async_concurrency": s.async_concurrency,
            "tasks": sorted(self.catalog),
            "heartbeat_interval": s.heartbeat_interval,
            "started_at": time.time(),
        }

    # -- fetching --------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        s = self.settings
        failing = False
        while not self._stopping.is_set():
            self._wake.clear()
            free = self._claimable()
            if free <= 0:
                await self._wake.wait()
                continue
            self._reserved += free
            try:
                messages = await self.broker.fetch(self.id, s.queues, free, s.lease_timeout)
                failing = False
            except BrokerError as exc:
                if not failing:
                    log.error("fetch failed, retrying: %s", exc)
                failing = True
                await self._pause(1.0)
                continue
            finally:
                self._reserved -= free
            for message in messages:
                self._start(message)
            if not messages:
                if self.burst and self._is_idle():
                    return
                await self._idle_wait()

    def _claimable(self) -> int:
        """Free slots no fetch in flight is already filling (0 once stopping)."""
        if self._stopping.is_set():
            return 0
        return self.pool.free_slots() - len(self._waiting) - self._reserved

    def _is_idle(self) -> bool:
        return not (self.pool.running() or self._waiting or self._storing or self._background)

    async def _idle_wait(self) -> None:
        block = 0.05 if self.burst else _IDLE_BLOCK_S
        waiter = asyncio.ensure_future(self.broker.wait_for_work(self.settings.queues, block))
        woken = asyncio.ensure_future(self._stopping.wait())
        done, _ = await asyncio.wait({waiter, woken}, return_when=asyncio.FIRST_COMPLETED)
        for fut in (waiter, woken):
            if fut not in done:
                fut.cancel()
        if waiter in done and waiter.exception() is not None:
            await self._pause(1.0)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _start(self, message: TaskMessage) -> None:
        body, problem = self.intake.admit(message)
        if problem is not None:
            self._background_run(self._report(message, None, problem))
            return
        task = self.catalog[message.task]
        if message.is_reduce:
            self._background_run(self._start_reduce(message, task))
        else:
            self._dispatch(message, task.is_async, body)

    def _dispatch(self, message: TaskMessage, is_async: bool, body: bytes) -> None:
        if not self.pool.place(message, is_async, body):
            self._waiting.append((message, is_async, body))

    async def _start_reduce(self, message: TaskMessage, task: Task[Any]) -> None:
        # held like an outcome being stored: renewed by heartbeats, retried through outages
        self._storing.add(message.id)
        try:
            job = await until_stored(self._forced, lambda: self.broker.job(message.job_id))
            if job is None:
                return
            n, size, inputs = int(job["n"]), int(job["chunk_size"]), int(job["inputs"])
            values = await until_stored(
                self._forced, lambda: self.broker.results(message.job_id, 0, n)
            )
        finally:
            self._storing.discard(message.id)
        body = b"[" + b",".join(flatten(values, size, 0, 0, inputs if size else n)) + b"]"
        self._dispatch(message, task.is_async, body)

    def _dispatch_waiting(self) -> None:
        while self._waiting:
            message, is_async, body = self._waiting[0]
            if not self.pool.place(message, is_async, body):
                return
            self._waiting.popleft()

    # -- outcomes --------------------------------------------------------------------------

    def _on_frame(self, child: Child, header: dict[str, Any] | None, body: bytes) -> None:
        if header is None:
            self._child_died(child)
            return
        if header.get("type") != "done":
            return
        running = self.pool.finish(child, header["id"])
        if running is None:
            return  # aborted meanwhile (lost lease or cancelled job)
        result = body if header["ok"] else None
        task_log = header.get("log")
        if self.pool.needs_retirement(child):
            self._background_run(self.pool.replace(child))
        self._dispatch_waiting()
        # the freed slot is reserved now for the completion's own fetch, so that the fetch loop
        # does not fetch for it meanwhile (two round trips instead of one)
        refill = self._claimable() if result is not None else 0
        self._reserved += refill
        self._background_run(
            self._report(running.message, result, header.get("error"), task_log, refill)
        )
        if result is None:
            self._wake.set()  # a failure is stored without a fetch: let the loop refill the slot

    def _child_died(self, child: Child) -> None:
        code = child.process.returncode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        hint = death_hint(code)
        for running in list(child.tasks.values()):
            error = {
                "type": "ChildCrashed",
                "message": f"the child process running this task died ({how}); {hint}",
            }
            task_log = None if running.is_async else child.captured()
            self._background_run(self._report(running.message, None, error, task_log))
        child.tasks.clear()
        if not self._stopping.is_set():
            self._background_run(self.pool.replace(child))

    async def _report(
        self,
        message: TaskMessage,
        result: bytes | None,
        error: dict[str, Any] | None,
        task_log: dict[str, Any] | None = None,
        refill: int = 0,
    ) -> None:
        """Store an outcome; a success also fetches ``refill`` tasks (slots the caller
        reserved for it, released here)."""
        self._storing.add(message.id)
        try:
            if result is not None:
                self.stats.done += 1
                await self._complete(message, result, task_log, refill)
            else:
                self.stats.failed += 1
                error = {**(error or {}), "attempt": message.attempt, "worker": self.name}
                if error.get("type") in DEAD_LETTER_TYPES:
                    call = lambda: self.broker.dead_letter(message.id, self.id, error)  # noqa: E731
                else:
                    delay = retry_delay(
                        message.attempt, message.retries, message.backoff, message.backoff_max
                    )
                    call = lambda: self.broker.fail(message.id, self.id, error, delay)  # noqa: E731
                status = await until_stored(
                    self._forced, log_first(self.broker.logs, message, task_log, call)
                )
                log.info(
                    "task %s attempt %d failed (%s): %s",
                    message.id,
                    message.attempt,
                    status,
                    error.get("message"),
                )
        finally:
            self._storing.discard(message.id)
            self._wake.set()

    async def _complete(
        self, message: TaskMessage, result: bytes, task_log: dict[str, Any] | None, n: int
    ) -> None:
        """Store a result and, in the same round trip, fetch ``n`` tasks (reserved slots,
        released here) for the freed slot."""
        s = self.settings
        try:
            _, messages = await until_stored(
                self._forced,
                log_first(
                    self.broker.logs,
                    message,
                    task_log,
                    lambda: self.broker.complete_and_fetch(
                        message.id, self.id, result, n, s.queues, s.lease_timeout
                    ),
                ),
            )
        finally:
            self._reserved -= n
        for fetched in messages:
            self._start(fetched)

    def _background_run(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background step failed", exc_info=t.exception())
            self._wake.set()

        task.add_done_callback(done)

    # -- timers ----------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        s = self.settings
        while True:
            ids = [r.message.id for _, r in self.pool.running()]
            ids += [m.id for m, _, _ in self._waiting] + list(self._storing)
            running = self.pool.running()
            pids = [c.pid for c in self.pool.children]
            stats = self.stats.snapshot(len(running), pids)
            try:
                lost = await self.broker.renew(
                    self.id, ids, s.lease_timeout, stats, self.lost_after
                )
            except BrokerError as exc:
                log.error("heartbeat failed: %s", exc)
                lost = []
            for task_id in lost:
                if task_id not in self._storing:
                    self._abort(task_id)
            await asyncio.sleep(s.heartbeat_interval)

    def _abort(self, task_id: str) -> None:
        """Stop a task we no longer own (job cancelled or finished, lease reclaimed)."""
        self._waiting = collections.deque(w for w in self._waiting if w[0].id != task_id)
        found = self.pool.find(task_id)
        if found is None:
            return
        child, running = found
        self.pool.finish(child, task_id)
        log.info("stopping task %s: its job ended or its lease was lost", task_id)
        if running.is_async:
            child.send({"type": "cancel", "id": task_id})
        else:
            child.kill()

    async def _timeouts(self) -> None:
        while True:
            for child, running, kill in self.pool.overdue(time.monotonic()):
                if not kill:
                    continue
                m = running.message
                error = {
                    "type": "TaskTimeout",
                    "message": f"task timed out after {m.timeout}s and was killed",
                }
                self.pool.finish(child, m.id)
                others = [r.message.id for r in child.tasks.values()]
                child.tasks.clear()
                child.kill()
                task_log = None if running.is_async else child.captured()
                self._background_run(self._report(m, None, error, task_log))
                if others:
                    self._background_run(self._release(others))
            await asyncio.sleep(_TIMER_S)

    async def _release(self, task_ids: list[str]) -> None:
        with contextlib.suppress(BrokerError):
            await self.broker.release(self.id, task_ids)

    # -- shutdown --------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        """Hand back waiting tasks now, let running ones finish within the grace period."""
        waiting = [m.id for m, _, _ in self._waiting]
        self._waiting.clear()
        await self._release(waiting)
        deadline = time.monotonic() + self.settings.shutdown_grace
        while self.pool.running() and time.monotonic() < deadline and not self._forced.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._forced.wait(), _TIMER_S)
        leftover = [r.message.id for _, r in self.pool.running()]
        for child in self.pool.children:
            child.tasks.clear()
        await self.pool.stop()
        await self._release(leftover)
        if leftover:
            log.warning("handed back %d unfinished task(s)", len(leftover))
        if self._background:
            await asyncio.wait(set(self._background), timeout=10)
