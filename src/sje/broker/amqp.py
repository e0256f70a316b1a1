"""The ``amqp://`` backend: RabbitMQ delivers tasks, a state store (Redis or SQLite, the
``state-url``) keeps everything else. Message flow and failure cases: ``docs/brokers.md``.

- **Submit**: the store records the job whole (its tasks queued there and, held, in the
  store's outbox); the job's task ids are then published with publisher confirms, and only
  then is the submit accepted and the outbox settled. When RabbitMQ refuses or is unreachable
  the job is cancelled and the submit fails with the reason.
- **Other transitions that make a task ready** (promote after a retry's backoff, reclaim of an
  expired lease, release, a reduce step, requeue from the dead-letter queue) put it in the
  outbox in the same atomic store step; ``relay`` publishes the outbox (masters each tick,
  workers whenever a fetch finds fewer tasks than it asked for, a releasing worker at once).
  RabbitMQ appends: a released or reclaimed task goes to the back of its priority band, where
  the other backends put it at the front of its queue. A relay that dies before
  settling leaves its claim to run out, so the entries are published again: at least once.
- **Fetch**: ``basic.get`` up to the free slots, highest priority band first; the store's
  ``start`` leases the named tasks that are still queued there and skips the others (a
  duplicate message, a cancelled job); then every delivery is acknowledged. The store's lease,
  not an unacknowledged message, is what brings a dead worker's task back (``reclaim`` →
  outbox → published again), so a task may run for hours without RabbitMQ's
  ``consumer_timeout`` closing the channel.
- **Dead-lettered deliveries**: a message whose consumers died between fetching and
  acknowledging it ``DELIVERY_LIMIT`` + 1 times goes to ``P.dead`` while the store still holds
  its task as queued; the master's tick publishes it again (dropped if its job has ended).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sje.broker.amqp_queue import AmqpQueue
from sje.broker.amqp_support import Delivery, OutgoingMessage, QueueAtBound
from sje.broker.base import (
    DeadLetters,
    MonitorViews,
    NewJob,
    StateStore,
    SubmitOutcome,
    TaskLogs,
)
from sje.errors import BrokerError
from sje.models import JobState, TaskMessage
from sje.tasks import TaskDefaults

log = logging.getLogger(__name__)

#: what a relay claims and publishes per round; how long its claim hides the entries
RELAY_BATCH = 1000
RELAY_HOLD_S = 30.0
#: rounds per relay call, so one call stays bounded
RELAY_ROUNDS = 20
#: a publish batch: confirms are awaited per batch
PUBLISH_BATCH = 1000
#: deliveries of one message before RabbitMQ dead-letters it (a consumer dying between
#: fetch and acknowledgement, again and again); the store counts the task's real attempts
DELIVERY_LIMIT = 20
#: RabbitMQ's own bound per priority band (``reject-publish``), a safety net under the exact
#: ``max-queue-length`` the store applies per queue at submit; fixed, so that changing the
#: setting never makes a queue's declaration clash with the existing one
BAND_BOUND = 10_000_000


def _message(task_id: str) -> OutgoingMessage:
    return (task_id, task_id.encode(), {})


class AmqpBroker:
    """``Broker`` over RabbitMQ (delivery) and a ``StateStore`` (everything else)."""

    def __init__(self, url: str, prefix: str, store: StateStore) -> None:
        self.url = url
        self.store = store
        self.queue = AmqpQueue(url, prefix, max_length=BAND_BOUND, delivery_limit=DELIVERY_LIMIT)
        self.queue.set_prefetch(1_000_000)  # fetch asks for the free slots; acks come at once
        self._ready_lock = asyncio.Lock()
        self._relay_on = False

    async def _connected(self) -> AmqpQueue:
        """The RabbitMQ connection, opened (again after a failure) on first need; the store's
        outbox switched on for the deployment."""
        if self.queue.is_connected and self._relay_on:
            return self.queue
        async with self._ready_lock:
            if not self._relay_on:
                await self.store.enable_relay()
                self._relay_on = True
            if not self.queue.is_connected:
                await self.queue.connect()
        return self.queue

    # -- publishing ---------------------------------------------------------------------------

    async def _publish(self, queue: str, priority: int, task_ids: Sequence[str]) -> None:
        amqp = await self._connected()
        for start in range(0, len(task_ids), PUBLISH_BATCH):
            batch = task_ids[start : start + PUBLISH_BATCH]
            await amqp.publish(queue, priority, [_message(t) for t in batch])

    async def relay(self) -> int:
        """Publish what the outbox holds (bounded); returns how many were published."""
        await self._connected()
        published = 0
        for _ in range(RELAY_ROUNDS):
            claimed = await self.store.claim_outbox(RELAY_BATCH, RELAY_HOLD_S)
            groups: dict[tuple[str, int], list[str]] = defaultdict(list)
            for task_id, queue, priority in claimed:
                groups[(queue, priority)].append(task_id)
            for (queue, priority), ids in groups.items():
                try:
                    await self._publish(queue, priority, ids)
                except QueueAtBound as exc:  # the rest waits for its claim to run out
                    await self.store.settle_outbox(exc.accepted)
                    log.warning("relay: %s", exc)
                    return published + len(exc.accepted)
                await self.store.settle_outbox(ids)
                published += len(ids)
            if len(claimed) < RELAY_BATCH:
                break
        return published

    # -- JobStore: submit is the one that publishes --------------------------------------------

    async def submit(self, job: NewJob) -> SubmitOutcome:
        await self._connected()
        outcome = await self.store.submit(job)
        if outcome.status != "ok":
            return outcome
        ids = [f"{job.id}:{i}" for i in range(len(job.payloads))]
        try:
            await self._publish(job.queue, job.priority, ids)
        except QueueAtBound as exc:
            await self.store.cancel(job.id)
            return SubmitOutcome("full", job.id, exc.depth)
        except BaseException:  # not accepted: it must not run later from the outbox
            await self.store.cancel(job.id)
            raise
        await self.store.settle_outbox(ids)
        return outcome

    # -- TaskQueue ------------------------------------------------------------------------------

    async def fetch(
        self, worker_id: str, queues: list[str], n: int, lease_s: float
    ) -> list[TaskMessage]:
        amqp = await self._connected()
        deliveries = await amqp.fetch(queues, n)
        if len(deliveries) < n and await self.relay():  # a queue running low: fill it up
            deliveries += await amqp.fetch(queues, n - len(deliveries))
        if not deliveries:
            return []
        try:
            started = await self.store.start(worker_id, [d.message_id for d in deliveries], lease_s)
        except BaseException:
            await self._settle(deliveries, ack=False)
            raise
        await self._settle(deliveries, ack=True)
        return started

    async def _settle(self, deliveries: list[Delivery], ack: bool) -> None:
        """Acknowledge (the store holds the outcome) or give back every delivery."""
        for delivery in deliveries:
            try:
                if ack:
                    await self.queue.ack(delivery)
                else:
                    await self.queue.reject(delivery, requeue=True)
            except BrokerError as exc:  # void: RabbitMQ delivers it again; start skips it
                log.debug("settling %s: %s", delivery.message_id, exc)

    async def wait_for_work(self, queues: list[str], timeout_s: float) -> None:
        amqp = await self._connected()
        await amqp.wait_for_work(queues, timeout_s)

    async def complete(self, task_id: str, worker_id: str, result: bytes) -> str:
        return await self.store.complete(task_id, worker_id, result)

    async def complete_many(
        self,
        worker_id: str,
        done: list[tuple[str, bytes]],
        n: int,
        queues: list[str],
        lease_s: float,
    ) -> tuple[list[str], list[TaskMessage]]:
        statuses, _ = await self.store.complete_many(worker_id, done, 0, queues, lease_s)
        return statuses, await self.fetch(worker_id, queues, n, lease_s)

    async def fail(
        self, task_id: str, worker_id: str, error: dict[str, Any], retry_in_s: float | None
    ) -> str:
        return await self.store.fail(task_id, worker_id, error, retry_in_s)

    async def dead_letter(self, task_id: str, worker_id: str, error: dict[str, Any]) -> str:
        return await self.store.dead_letter(task_id, worker_id, error)

    async def renew(
        self,
        worker_id: str,
        task_ids: list[str],
        lease_s: float,
        stats: dict[str, Any] | None = None,
        due_s: float = 10.0,
    ) -> list[str]:
        return await self.store.renew(worker_id, task_ids, lease_s, stats, due_s)

    async def release(self, worker_id: str, task_ids: list[str]) -> int:
        released = await self.store.release(worker_id, task_ids)
        if released:
            await self.relay()
        return released

    async def close(self) -> None:
        try:
            await self.queue.close()
        finally:
            await self.store.close()

    # -- Scheduler: the store's timer work, then the relay ---------------------------------------

    async def reclaim_expired(self, max_redeliveries: int) -> int:
        return await self.store.reclaim_expired(max_redeliveries)

    async def promote_due(self) -> int:
        """The store's promotion, then the relay: one call per tick publishes whatever became
        ready (promoted, reclaimed, released, reduce steps, crashed submitters' jobs)."""
        promoted = await self.store.promote_due()
        await self.relay()
        await self.queue.take_dead(RELAY_BATCH, self._publish_again)
        return promoted

    async def _publish_again(self, task_ids: list[str]) -> None:
        """Publish again the tasks RabbitMQ dead-lettered: their deliveries reached
        ``DELIVERY_LIMIT`` because consumers died between fetching and acknowledging them, so
        the store still holds them as queued. ``start`` skips any that is not queued any more;
        those of ended or unknown jobs are dropped here."""
        jobs: dict[str, dict[str, str] | None] = {}
        groups: dict[tuple[str, int], list[str]] = defaultdict(list)
        for task_id in task_ids:
            job_id = task_id.partition(":")[0]
            if job_id not in jobs:
                jobs[job_id] = await self.store.job(job_id)
            job = jobs[job_id]
            if job is not None and not JobState(job["state"]).is_terminal:
                groups[(job["queue"], int(job["priority"]))].append(task_id)
        for (queue, priority), ids in groups.items():
            await self._publish(queue, priority, ids)
            log.warning(
                "published again %d task(s) of queue %s that RabbitMQ dead-lettered after %d "
                "deliveries (consumers died between fetching and acknowledging them: see the "
                "workers' logs)",
                len(ids),
                queue,
                DELIVERY_LIMIT,
            )

    async def expire_jobs(self) -> int:
        return await self.store.expire_jobs()

    async def prune_index(self) -> int:
        return await self.store.prune_index()

    async def mark_lost_workers(self) -> int:
        return await self.store.mark_lost_workers()

    # -- everything else is the state store's ------------------------------------------------

    async def job(self, job_id: str) -> dict[str, str] | None:
        return await self.store.job(job_id)

    async def jobs(self, limit: int, offset: int) -> list[dict[str, str]]:
        return await self.store.jobs(limit, offset)

    async def results(self, job_id: str, start: int, stop: int) -> list[bytes | None]:
        return await self.store.results(job_id, start, stop)

    async def errors(self, job_id: str) -> dict[str, bytes]:
        return await self.store.errors(job_id)

    async def cancel(self, job_id: str) -> str:
        return await self.store.cancel(job_id)

    async def events(
        self, job_id: str, after: str, block_ms: int | None, job_level: bool = False
    ) -> list[tuple[str, dict[str, str]]]:
        return await self.store.events(job_id, after, block_ms, job_level)

    async def task_catalog(self) -> dict[str, TaskDefaults]:
        return await self.store.task_catalog()

    async def workers(self) -> list[dict[str, Any]]:
        return await self.store.workers()

    async def depth(self, queue: str) -> int:
        return await self.store.depth(queue)

    @property
    def views(self) -> MonitorViews:
        return self.store.views

    @property
    def dlq(self) -> DeadLetters:
        return self.store.dlq

    @property
    def logs(self) -> TaskLogs:
        return self.store.logs

    async def reduce_result(self, job_id: str) -> bytes | None:
        return await self.store.reduce_result(job_id)

    async def register_worker(
        self,
        worker_id: str,
        info: dict[str, Any],
        tasks: dict[str, TaskDefaults],
        due_s: float = 10.0,
    ) -> None:
        await self.store.register_worker(worker_id, info, tasks, due_s)

    async def deregister_worker(self, worker_id: str, event: bool = True) -> None:
        await self.store.deregister_worker(worker_id, event)

    async def ping(self) -> None:
        await self.store.ping()
        await self._connected()

    async def server_time(self) -> float:
        return await self.store.server_time()

    async def shared_value(self, name: str, candidate: str) -> tuple[str, bool]:
        return await self.store.shared_value(name, candidate)

    async def durability_warnings(self) -> list[str]:
        warnings = await self.store.durability_warnings()
        if self.queue.queue_kind == "classic":
            warnings.append(
                f"RabbitMQ at {self.queue.url.rsplit('@', 1)[-1]} refused quorum queues: using "
                "classic durable queues (not replicated); enable quorum queues for failover"
            )
        return warnings
