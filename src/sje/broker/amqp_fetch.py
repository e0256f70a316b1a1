"""Delivery of work queue messages to one process: highest band first, prefetch = free slots.

Why ``basic.get`` and not ``basic.consume`` (measured on RabbitMQ 3.10): a worker has ``n``
slots and its priority bands are separate queues.

- ``basic.qos`` cannot express "n unacknowledged in total over ten queues": quorum queues refuse
  a channel-wide (``global``) prefetch, and a per-consumer prefetch set with
  ``channel.set_qos(prefetch_count=n)`` (aio-pika sends ``basic.qos`` on the live channel) only
  applies to consumers started *after* it; live consumers keep their old credit, so changing it
  means ``basic.cancel`` + ``basic.consume`` again. One consumer per band, each with credit n,
  can hold up to 10 n messages, and lets the broker push low-band messages into free slots while
  high-band ones wait: priority is lost exactly when it matters.
- Pulling gives both invariants by construction: one ``basic.get`` per free slot, queues in
  the order given (as on the other backends), each band 9 first. ``prefetch`` is therefore
  the layer's own count and a change takes effect immediately. The price is one round trip
  per message (quorum: ~540 fetch+ack/s per process against ~2,900/s for a pushed consumer
  with prefetch 10), far above what a worker running tasks in child processes dispatches.
- Empty ``basic.get`` on a quorum queue is a Raft command, so bands are probed first with a
  passive declare (a read) and idle waiting polls those counts with a backoff from 5 ms to
  200 ms, as the SQLite backend polls its file.

Bands are discovered, not declared: a band that does not exist yet is probed again at most once
a second (a probe of a missing queue costs a channel close and reopen).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Iterator, Sequence
from typing import TYPE_CHECKING

import aiormq.exceptions as amqp_errors
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from sje.broker.amqp_support import (
    AMQP_ERRORS,
    DUE_HEADER,
    PRIORITIES,
    Delivery,
    delivery_of,
    lost_error,
)
from sje.errors import BrokerError

if TYPE_CHECKING:
    from sje.broker.amqp_queue import AmqpQueue

log = logging.getLogger(__name__)

#: headers RabbitMQ sets on a delivery, dropped when a chained delay sends it round again
_BROKER_HEADERS = ("x-death", "x-first-death", "x-last-death", "x-delivery-count", DUE_HEADER)


class BandFetcher:
    """The fetch channel of one ``AmqpQueue`` and the deliveries it holds."""

    poll_min_s = 0.005
    poll_max_s = 0.2
    discover_every_s = 1.0

    def __init__(
        self,
        owner: AmqpQueue,
        channel: AbstractChannel,
        prefetch: int,
        generations: Iterator[int],
    ) -> None:
        self._owner = owner
        self._channel = channel
        self._prefetch = prefetch
        self._generations = generations
        # a new number whenever the channel is (re)opened: deliveries of older ones are void
        self._generation = next(generations)
        self._lock = asyncio.Lock()  # one fetch at a time, or two could share the free slots
        self._held: set[int] = set()  # delivery tags of this generation
        self._missing: dict[str, float] = {}  # band -> when it was last found absent
        # band -> messages it held at the last probe, less those taken since: fetches take
        # from a band known to hold some without probing it again (one round trip less)
        self._ready: dict[str, int] = {}
        self._changed = asyncio.Event()

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def free(self) -> int:
        return max(0, self._prefetch - len(self._held))

    def set_prefetch(self, n: int) -> None:
        self._prefetch = max(0, n)
        self._changed.set()

    # -- fetching ----------------------------------------------------------------------------

    async def fetch(self, queues: Sequence[str], n: int) -> list[Delivery]:
        async with self._lock:
            return await self._fetch(queues, n)

    async def _fetch(self, queues: Sequence[str], n: int) -> list[Delivery]:
        """Queues in the order given, each highest band first (as the other backends)."""
        out: list[Delivery] = []
        n = min(n, self.free)
        if n <= 0 or not queues:
            return out
        await self._ensure_channel()
        for queue in queues:
            for priority in reversed(PRIORITIES):
                name = self._owner.names.band(queue, priority)
                if self._ready.get(name, 0) <= 0:
                    self._ready[name] = await self._count(queue, priority)
                    if not self._ready[name]:
                        continue
                while len(out) < n:
                    delivery = await self._get(queue, priority)
                    if delivery is None:
                        self._ready[name] = 0
                        break
                    self._ready[name] -= 1
                    out.append(delivery)
                if len(out) >= n:
                    return out
        return out

    async def _get(self, queue: str, priority: int) -> Delivery | None:
        name = self._owner.names.band(queue, priority)
        while True:
            try:
                message = await (await self._channel.get_queue(name, ensure=False)).get(
                    no_ack=False, fail=False
                )
            except amqp_errors.ChannelNotFoundEntity:
                # deleted under us: the closed channel requeued whatever it held
                self._forget(name)
                await self._ensure_channel()
                return None
            except AMQP_ERRORS as exc:
                raise lost_error(self._owner.url, exc) from exc
            if message is None:
                return None
            if not await self._relayed(queue, priority, message):
                assert message.delivery_tag is not None  # no_ack=False always has one
                self._held.add(message.delivery_tag)
                return delivery_of(queue, priority, message, self._generation)

    async def _relayed(self, queue: str, priority: int, message: AbstractIncomingMessage) -> bool:
        """A chained delay came back before its due time: send it round again, then ack."""
        due = message.headers.get(DUE_HEADER)
        remaining_s = (due - time.time() * 1000) / 1000 if isinstance(due, int) else 0.0
        if remaining_s <= 0:
            return False
        headers = {k: v for k, v in message.headers.items() if not k.startswith(_BROKER_HEADERS)}
        await self._owner.publish_delayed(
            queue,
            priority,
            (message.message_id or "", message.body, headers),  # type: ignore[arg-type]  # pamqp FieldValue covers HeaderValue
            remaining_s,
        )
        try:
            await message.ack()
        except AMQP_ERRORS as exc:
            raise lost_error(self._owner.url, exc) from exc
        return True

    async def _count(self, queue: str, priority: int) -> int:
        """Ready messages of a band; 0 for a band not (yet) declared, rechecked once a second."""
        name = self._owner.names.band(queue, priority)
        seen_missing = self._missing.get(name)
        if seen_missing is not None and time.monotonic() - seen_missing < self.discover_every_s:
            return 0
        count = await self._owner.band_count(name)
        if count is None:
            self._forget(name)
            return 0
        self._missing.pop(name, None)
        return count

    def _forget(self, name: str) -> None:
        self._missing[name] = time.monotonic()

    async def _ensure_channel(self) -> None:
        if not self._channel.is_closed:
            return
        lost = len(self._held)
        try:
            await self._channel.reopen()
        except AMQP_ERRORS as exc:
            raise lost_error(self._owner.url, exc) from exc
        self._generation = next(self._generations)
        self._held.clear()
        self._changed.set()
        if lost:
            log.warning("fetch channel closed: RabbitMQ requeued %d unacked deliveries", lost)

    async def wait_for_work(self, queues: Sequence[str], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        pause = self.poll_min_s
        while True:
            for queue in queues:
                for priority in reversed(PRIORITIES):
                    if await self._count(queue, priority):
                        return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(pause, remaining))  # polling the broker, see module doc
            pause = min(pause * 2, self.poll_max_s)

    async def consume(self, queues: Sequence[str]) -> AsyncGenerator[Delivery, None]:
        """See ``AmqpQueue.consume``. Deliveries fetched but not yet handed out when the
        iterator is closed are given back (``aclose`` it, e.g. with ``contextlib.aclosing``)."""
        pending: deque[Delivery] = deque()
        try:
            while True:
                if pending:
                    yield pending.popleft()
                elif self.free <= 0:
                    self._changed.clear()
                    await self._changed.wait()
                else:
                    pending.extend(await self.fetch(queues, self.free))
                    if not pending:
                        await self.wait_for_work(queues, 1.0)
        finally:
            for delivery in pending:
                with contextlib.suppress(BrokerError):  # void already: requeued by RabbitMQ
                    await self.settle(delivery, ack=False, requeue=True)

    # -- settling ----------------------------------------------------------------------------

    async def settle(self, delivery: Delivery, ack: bool, requeue: bool) -> None:
        tag = delivery.message.delivery_tag
        if delivery.generation != self._generation or self._channel.is_closed:
            raise BrokerError(
                f"Delivery of message {delivery.message_id} is void: the channel it came on "
                "closed, so RabbitMQ requeued it (it is delivered again)."
            )
        if tag not in self._held:
            raise BrokerError(f"Delivery of message {delivery.message_id} was already settled.")
        try:
            if ack:
                await delivery.message.ack()
            else:
                await delivery.message.reject(requeue=requeue)
        except amqp_errors.ChannelInvalidStateError as exc:
            raise BrokerError(
                f"Delivery of message {delivery.message_id} is void: its channel closed."
            ) from exc
        except AMQP_ERRORS as exc:
            raise lost_error(self._owner.url, exc) from exc
        self._held.discard(tag)
        self._changed.set()
