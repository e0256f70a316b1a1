"""The worker process: fetch loop, heartbeat, timeouts and outcome reporting.

One asyncio loop in the worker process; task code never runs here, only in the pool's
children. The worker acknowledges a task only by storing its outcome, renews its leases on
every heartbeat and hands tasks back when it stops.

It fetches for its free slots, plus a small prefetch while tasks are short: at most
``prefetch`` tasks and about ``_PREFETCH_WINDOW_S`` of their observed run time per slot, so
long tasks are never hoarded. A prefetched task that found no slot within ``_PREFETCH_HOLD_S``
(every slot stuck on a long task) is handed back for other workers. Successes that arrive
while one is being stored are stored together, with the fetch for the freed slots, in one
broker call.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, TypeVar

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
from sje.worker.storing import logs_first, until_stored

log = logging.getLogger(__name__)
T = TypeVar("T")

_TIMER_S = 0.1
_IDLE_BLOCK_S = 1.0
_QUEUE_IN_CHILD_S = 0.005  # tasks shorter than this on average queue in busy children,
_CHILD_QUEUE_MAX = 32  # up to this many per child (with the running one)
_TIMERS_END_S = 5.0  # a heartbeat in flight at the stop may take this long to land
_PREFETCH_WINDOW_S = 0.02  # run time a slot's prefetched tasks add up to, at most
_PREFETCH_HOLD_S = 1.0  # a prefetched task waiting longer than this is handed back
_RUN_TIME_WEIGHT = 0.1  # of the newest task in the moving average of run times
_FLUSH_BATCH = 64  # successes stored in one call, at most, before lingering stops
_FLUSH_LINGER_S = 0.005  # wait for more successes when the children have work meanwhile


class Waiting(NamedTuple):
    """A fetched task no child can take yet."""

    message: TaskMessage
    is_async: bool
    body: bytes
    since: float  # monotonic seconds


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
            settings.task_cpu_affinity,
        )
        # fetched tasks no child can take yet, with when they arrived (monotonic)
        self._waiting: collections.deque[Waiting] = collections.deque()
        self._storing: set[str] = set()
        self._done: list[tuple[TaskMessage, bytes, Any]] = []  # successes to store next
        self._flushing = False
        self._reserved = 0  # slots a fetch in flight is filling
        self._run_time: float | None = None  # moving average of a task's run, in seconds
        self._background: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._forced = asyncio.Event()
        self._ended = asyncio.Event()  # the timers stop (a cancel alone can be swallowed)
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
            self._ended.set()
            _, stuck = await asyncio.wait(timers, timeout=_TIMERS_END_S)
            for timer in stuck:
                timer.cancel()
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
            if not messages and self.burst and self._is_idle():
                return
            if len(messages) < free:  # the queues are empty: a task queued later wakes us
                await self._idle_wait()

    def _claimable(self) -> int:
        """Free slots plus the prefetch, less what is waiting and what a fetch in flight is
        already filling (0 once stopping)."""
        if self._stopping.is_set():
            return 0
        free = self.pool.free_slots()
        return free + self._prefetch(free) - len(self._waiting) - self._reserved

    def _prefetch(self, free: int) -> int:
        """How many tasks to hold beyond the free slots: ``_PREFETCH_WINDOW_S`` of average run
        time per slot that is free or on a task younger than ``_PREFETCH_HOLD_S``, at most
        ``prefetch``; none before the first task has run."""
        cap, run_time = self.settings.prefetch, self._run_time
        if not cap or run_time is None:
            return 0
        now = time.monotonic()
        moving = free + sum(1 for _, r in self.pool.running() if now - r.started < _PREFETCH_HOLD_S)
        return min(cap, int(moving * _PREFETCH_WINDOW_S / max(run_time, 1e-6)))

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
            self._background_run(self._report(message, problem))
            return
        task = self.catalog[message.task]
        if message.is_reduce:
            self._background_run(self._start_reduce(message, task))
        else:
            self._dispatch(message, task.is_async, body)

    def _dispatch(self, message: TaskMessage, is_async: bool, body: bytes) -> None:
        if not self.pool.place(message, is_async, body, self._depth()):
            self._waiting.append(Waiting(message, is_async, body, time.monotonic()))

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
        depth = self._depth()
        while self._waiting:
            first = self._waiting[0]
            if not self.pool.place(first.message, first.is_async, first.body, depth):
                return
            self._waiting.popleft()

    def _depth(self) -> int:
        """Plain tasks a child holds at once (the running one and those queued behind it): while
        tasks are very short and prefetch is on, about ``_QUEUE_IN_CHILD_S`` of their average
        run time, at least 2 and at most ``_CHILD_QUEUE_MAX``, so the child never waits for
        this process; else 1."""
        run_time = self._run_time
        if not self.settings.prefetch or run_time is None or run_time >= _QUEUE_IN_CHILD_S:
            return 1
        return min(_CHILD_QUEUE_MAX, max(2, int(_QUEUE_IN_CHILD_S / max(run_time, 1e-6))))

    # -- outcomes --------------------------------------------------------------------------

    def _on_frame(self, child: Child, header: dict[str, Any] | None, body: bytes) -> None:
        if header is None:
            self._child_died(child)
            return
        if header.get("type") == "recalled":
            if header["ok"] and self.pool.recalled(child, header["id"]) is not None:
                self._background_run(self._release([header["id"]]))
            return
        if header.get("type") != "done":
            return
        running = self.pool.finish(child, header["id"], bool(header.get("leftovers")))
        if running is None:
            return  # aborted meanwhile (lost lease or cancelled job): its child was killed
        if self.pool.needs_retirement(child):
            self._background_run(self.pool.replace(child))
        self._dispatch_waiting()
        if running.aborted:
            return  # it was queued in the child when it stopped being ours
        run_time = time.monotonic() - running.started
        average = self._run_time
        self._run_time = (
            run_time if average is None else average + _RUN_TIME_WEIGHT * (run_time - average)
        )
        if header["ok"]:
            self._succeeded(running.message, body, header.get("log"))
        else:
            self._background_run(
                self._report(running.message, header.get("error"), header.get("log"))
            )

    def _child_died(self, child: Child) -> None:
        code = child.process.returncode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        hint = death_hint(code)
        queued = [r.message.id for r in child.tasks.values() if r.queued]
        if queued:
            self._background_run(self._release(queued))
        for running in [r for r in child.tasks.values() if not r.queued]:
            error = {
                "type": "ChildCrashed",
                "message": f"the child process running this task died ({how}); {hint}",
            }
            task_log = None if running.is_async else child.captured()
            self._background_run(self._report(running.message, error, task_log))
        child.tasks.clear()
        if not self._stopping.is_set():
            self._background_run(self.pool.replace(child))

    async def _report(
        self, message: TaskMessage, error: dict[str, Any] | None, task_log: Any = None
    ) -> None:
        """Store a failed attempt: a retry later, or dead-lettered."""
        self._storing.add(message.id)
        self.stats.failed += 1
        error = {**(error or {}), "attempt": message.attempt, "worker": self.name}
        try:
            if error.get("type") in DEAD_LETTER_TYPES:
                call = lambda: self.broker.dead_letter(message.id, self.id, error)  # noqa: E731
            else:
                delay = retry_delay(
                    message.attempt, message.retries, message.backoff, message.backoff_max
                )
                call = lambda: self.broker.fail(message.id, self.id, error, delay)  # noqa: E731
            status = await until_stored(
                self._forced, logs_first(self.broker.logs, [(message, task_log)], call)
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

    def _succeeded(self, message: TaskMessage, result: bytes, task_log: Any) -> None:
        """Queue a success for the next batch the flusher stores."""
        self.stats.done += 1
        self._storing.add(message.id)
        self._done.append((message, result, task_log))
        if not self._flushing:
            self._flushing = True
            self._background_run(self._flush())

    async def _flush(self) -> None:
        """Store the successes in batches, each with a fetch for the freed slots (reserved
        meanwhile), until none are left."""
        s = self.settings
        try:
            while self._done:
                if self._waiting and len(self._done) < _FLUSH_BATCH:
                    # the children are fed from the prefetch: let the batch grow a little
                    await asyncio.sleep(_FLUSH_LINGER_S)
                batch, self._done = self._done, []
                n = max(self._claimable(), 0)
                self._reserved += n
                done = [(m.id, result) for m, result, _ in batch]
                call = functools.partial(
                    self.broker.complete_many, self.id, done, n, s.queues, s.lease_timeout
                )
                attempts = [(m, task_log) for m, _, task_log in batch]
                try:
                    _, messages = await until_stored(
                        self._forced, logs_first(self.broker.logs, attempts, call)
                    )
                finally:
                    self._reserved -= n
                    for m, _, _ in batch:
                        self._storing.discard(m.id)
                for fetched in messages:
                    self._start(fetched)
        finally:
            self._flushing = False
            self._wake.set()

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

    async def _every(self, seconds: float) -> None:
        """Wait ``seconds``, or less once the timers are to end."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._ended.wait(), seconds)

    async def _heartbeat(self) -> None:
        s = self.settings
        while not self._ended.is_set():
            ids = [r.message.id for _, r in self.pool.running()]
            ids += [w.message.id for w in self._waiting] + list(self._storing)
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
            await self._every(s.heartbeat_interval)

    def _abort(self, task_id: str) -> None:
        """Stop a task we no longer own (job cancelled or finished, lease reclaimed)."""
        self._waiting = collections.deque(w for w in self._waiting if w.message.id != task_id)
        found = self.pool.find(task_id)
        if found is None:
            return
        child, running = found
        if running.queued:  # recalled; if the child started it meanwhile, its outcome is ignored
            running.aborted = True
            if not running.recalling:
                self.pool.recall(child, running)
            return
        self.pool.finish(child, task_id)
        log.info("stopping task %s: its job ended or its lease was lost", task_id)
        if running.is_async:
            child.send({"type": "cancel", "id": task_id})
        else:
            self._kill_handing_back(child)

    async def _timeouts(self) -> None:
        while not self._ended.is_set():
            for child, running, kill in self.pool.overdue(time.monotonic()):
                if not kill:
                    continue
                m = running.message
                error = {
                    "type": "TaskTimeout",
                    "message": f"task timed out after {m.timeout}s and was killed",
                }
                self.pool.finish(child, m.id)
                self._kill_handing_back(child)
                task_log = None if running.is_async else child.captured()
                self._background_run(self._report(m, error, task_log))
            self._hand_back_held()
            await self._every(_TIMER_S)

    def _kill_handing_back(self, child: Child) -> None:
        """Kill ``child`` for the task it was running (already finished in the pool); the
        others it held (queued, or async ones) go back to their queues, no attempt counted."""
        others = [r.message.id for r in child.tasks.values()]
        child.tasks.clear()
        child.kill()
        if others:
            self._background_run(self._release(others))

    def _hand_back_held(self) -> None:
        """Release waiting tasks held past ``_PREFETCH_HOLD_S`` that the free slots cannot
        take (every slot is busy, most likely with long tasks): other workers may be idle.
        Tasks queued in a child that long are recalled from it, then released."""
        now = time.monotonic()
        for child, running in self.pool.running():
            overdue = now - running.started > _PREFETCH_HOLD_S
            if overdue and running.queued and not running.recalling:
                self.pool.recall(child, running)
        keep = self.pool.free_slots()
        held = [w for w in list(self._waiting)[keep:] if now - w.since > _PREFETCH_HOLD_S]
        if not held:
            return
        ids = {w.message.id for w in held}
        self._waiting = collections.deque(w for w in self._waiting if w.message.id not in ids)
        log.info("handing back %d prefetched task(s): every slot is busy", len(ids))
        self._background_run(self._release(sorted(ids)))

    async def _release(self, task_ids: list[str]) -> None:
        with contextlib.suppress(BrokerError):
            await self.broker.release(self.id, task_ids)

    # -- shutdown --------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        """Hand back waiting tasks now, let running ones finish within the grace period."""
        waiting = [w.message.id for w in self._waiting]
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
