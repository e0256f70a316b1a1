"""The RabbitMQ queue layer of the ``amqp://`` backend: topology, confirmed publishing,
delivery by priority band with prefetch = free slots, delayed retries through TTL queues.

Topology under a prefix ``P`` (every queue and exchange durable, every message persistent):

- ``P.q.<queue>.p<N>``: one work queue per priority band N (0-9) of an SJE queue, declared on
  first use; quorum (classic where the server refuses quorum, remembered), ``x-max-length`` with
  ``x-overflow: reject-publish`` (a full queue refuses, never drops its head), dead-lettering
  through ``P.dlx`` (fanout) into ``P.dead``; quorum ones end a message after
  ``x-delivery-limit`` returns.
- ``P.delay.<ms>``: per delay bucket (1 s, 5 s, 30 s, 5 min, 30 min) a fanout exchange and a
  queue with ``x-message-ttl``; expired messages dead-letter through the default exchange by their
  routing key, which is their work queue's name.

Fetching pulls (``basic.get``) band by band, highest first, and never holds more unacknowledged
deliveries than ``prefetch``: see ``amqp_fetch`` for why not ``basic.consume``.

Partial batches: a batch is published with confirms; when RabbitMQ refuses part of it
(``QueueAtBound``) or the connection drops (``PublishIncomplete``) the exception lists the ids
RabbitMQ confirmed. A message cannot be taken back out of a queue, so the caller keeps a submit
all-or-nothing in its state store: it records the job as pending before publishing, marks it
queued once every batch is confirmed, and voids it otherwise; a consumer acks and drops a
delivery whose job is void or missing (AMQP transactions cannot help: they exclude confirms,
and without confirms RabbitMQ drops refused messages silently).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence

import aio_pika
import aiormq.exceptions as amqp_errors
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    ExchangeType,
)
from pamqp.common import FieldTable

from sje.broker.amqp_fetch import BandFetcher
from sje.broker.amqp_support import (
    AMQP_ERRORS,
    DELAY_BUCKETS_MS,
    DUE_HEADER,
    PRIORITIES,
    Delivery,
    Names,
    OutgoingMessage,
    PublishIncomplete,
    QueueAtBound,
    QueueKind,
    connect_error,
    dead_arguments,
    declare_error,
    delay_arguments,
    lost_error,
    pick_bucket,
    refuses_quorum,
    work_arguments,
)
from sje.errors import BrokerError

log = logging.getLogger(__name__)

#: the arguments of a queue, given the kind it is declared as
_ArgsFor = Callable[[QueueKind], FieldTable]


class AmqpQueue:
    """Work queues on one RabbitMQ vhost under ``prefix``; one connection, three channels
    (publish with confirms, fetch, declare/probe). Not thread-safe: one event loop.

    Built without I/O; ``connect`` opens the connection. When it drops, every call raises
    ``BrokerError``, RabbitMQ requeues the unacknowledged deliveries, and ``connect`` may be
    called again.
    """

    def __init__(
        self,
        url: str,
        prefix: str,
        *,
        max_length: int = 100_000,
        delivery_limit: int = 5,
        queue_kind: QueueKind = "quorum",
        delay_buckets_ms: tuple[int, ...] = DELAY_BUCKETS_MS,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.url = url
        self.names = Names(prefix)
        self.max_length = max_length
        self.delivery_limit = delivery_limit
        self.delay_buckets_ms = tuple(sorted(delay_buckets_ms))
        self.connect_timeout_s = connect_timeout_s
        #: the kind new queues get; "classic" once the server refused a quorum queue
        self.queue_kind: QueueKind = queue_kind
        self.kinds: dict[str, QueueKind] = {}  # declared here: queue name -> kind
        self.bounds: dict[str, int] = {}  # declared here: band name -> x-max-length
        self.queues_used: set[str] = set()
        self._conn: AbstractConnection | None = None
        self._pub: AbstractChannel | None = None
        self._admin: AbstractChannel | None = None
        self._admin_lock = asyncio.Lock()
        self._fetcher: BandFetcher | None = None
        self._prefetch = 1
        # numbers fetch channels across reconnects: a delivery of an older one is void
        self._generations = itertools.count(1)

    # -- lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection and channels; a clear ``BrokerError`` when RabbitMQ is
        unreachable, refuses the login or has no such vhost."""
        await self.close()
        try:
            self._conn = await aio_pika.connect(self.url, timeout=self.connect_timeout_s)
            self._pub = await self._conn.channel(publisher_confirms=True)
            self._admin = await self._conn.channel(publisher_confirms=False)
            fetch_channel = await self._conn.channel(publisher_confirms=False)
        except (*AMQP_ERRORS, OSError) as exc:
            await self.close()
            raise connect_error(self.url, exc) from exc
        self._fetcher = BandFetcher(self, fetch_channel, self._prefetch, self._generations)

    async def close(self) -> None:
        """Close the connection: RabbitMQ requeues every unacknowledged delivery."""
        conn, self._conn, self._fetcher = self._conn, None, None
        self.kinds.clear()
        if conn is not None and not conn.is_closed:
            try:
                await conn.close()
            except AMQP_ERRORS as exc:
                log.debug("closing the RabbitMQ connection: %s", exc)

    @property
    def is_connected(self) -> bool:
        """Open and not lost (aio-pika's ``is_closed`` only turns True on ``close()``: a
        connection the server dropped only clears ``connected``)."""
        conn = self._conn
        return conn is not None and not conn.is_closed and conn.connected.is_set()

    def _channel(self, channel: AbstractChannel | None) -> AbstractChannel:
        if channel is None or self._conn is None or self._conn.is_closed:
            raise BrokerError(
                "Not connected to RabbitMQ: call connect() first (or again after a failure)."
            )
        return channel

    @property
    def fetcher(self) -> BandFetcher:
        if self._fetcher is None or not self.is_connected:
            raise BrokerError(
                "Not connected to RabbitMQ: call connect() first (or again after a failure)."
            )
        return self._fetcher

    # -- topology ----------------------------------------------------------------------------

    async def declare(self, queue: str, priority: int, max_length: int | None = None) -> str:
        """Declare (idempotently) the work queue of one band and the dead-letter topology;
        returns its name. ``max_length`` (default: the instance's) is fixed at creation: a
        queue that exists with another bound is a ``BrokerError`` naming both."""
        if priority not in PRIORITIES:
            raise ValueError(f"priority {priority} is not in 0..9")
        name = self.names.band(queue, priority)
        if name in self.kinds:
            return name
        self.queues_used.add(queue)
        bound = self.max_length if max_length is None else max_length
        async with self._admin_lock, self._calls():
            await self._declare_dead()
            await self._declare_queue(
                name,
                lambda kind: work_arguments(kind, bound, self.names.dlx, self.delivery_limit),
            )
        self.bounds[name] = bound
        return name

    async def _declare_dead(self) -> None:
        if self.names.dead in self.kinds:
            return
        admin = self._channel(self._admin)
        dlx = await admin.declare_exchange(self.names.dlx, ExchangeType.FANOUT, durable=True)
        await self._declare_queue(self.names.dead, dead_arguments)
        queue = await admin.get_queue(self.names.dead, ensure=False)
        await queue.bind(dlx)

    async def _delay_exchange(self, bucket_ms: int) -> AbstractExchange:
        """The bucket's exchange on the publishing channel (confirms), declared once."""
        name = self.names.delay(bucket_ms)
        if name not in self.kinds:
            async with self._admin_lock, self._calls():
                admin = self._channel(self._admin)
                exchange = await admin.declare_exchange(name, ExchangeType.FANOUT, durable=True)
                await self._declare_queue(name, lambda kind: delay_arguments(kind, bucket_ms))
                queue = await admin.get_queue(name, ensure=False)
                await queue.bind(exchange)
        return await self._channel(self._pub).get_exchange(name, ensure=False)

    async def _declare_queue(self, name: str, arguments: _ArgsFor) -> None:
        """Declare ``name`` as ``self.queue_kind``, falling back to classic when the server
        refuses quorum (remembered for every later queue) or the queue exists as classic.
        The caller holds the admin lock."""
        kind = self.queue_kind
        try:
            await self._channel(self._admin).declare_queue(
                name, durable=True, arguments=arguments(kind)
            )
        except amqp_errors.AMQPChannelError as exc:
            await self._channel(self._admin).reopen()
            if kind == "classic" or not refuses_quorum(exc):
                raise declare_error(name, exc) from exc
            kind = "classic"
            await self._declare_classic(name, arguments)
            if "'x-queue-type'" not in str(exc):
                log.warning("RabbitMQ refused a quorum queue (%s): using classic queues", exc)
                self.queue_kind = "classic"
        self.kinds[name] = kind

    @contextlib.asynccontextmanager
    async def _calls(self) -> AsyncIterator[None]:
        """AMQP errors of an established connection become ``BrokerError``."""
        try:
            yield
        except AMQP_ERRORS as exc:
            raise lost_error(self.url, exc) from exc

    async def _declare_classic(self, name: str, arguments: _ArgsFor) -> None:
        try:
            await self._channel(self._admin).declare_queue(
                name, durable=True, arguments=arguments("classic")
            )
        except amqp_errors.AMQPChannelError as exc:
            await self._channel(self._admin).reopen()
            raise declare_error(name, exc) from exc

    async def band_count(self, name: str) -> int | None:
        """Ready messages in queue ``name`` (passive declare), None when it does not exist."""
        async with self._admin_lock:
            admin = self._channel(self._admin)
            try:
                queue = await admin.declare_queue(name, passive=True)
            except amqp_errors.ChannelNotFoundEntity:
                await admin.reopen()  # a 404 closes the channel
                return None
            except AMQP_ERRORS as exc:
                raise lost_error(self.url, exc) from exc
        return int(queue.declaration_result.message_count or 0)

    async def depth(self, queue: str) -> int:
        """Ready messages of ``queue`` over all its bands (unacknowledged ones not counted)."""
        counts = [await self.band_count(self.names.band(queue, p)) for p in PRIORITIES]
        return sum(c or 0 for c in counts)

    async def purge(self, queue: str) -> int:
        """Drop every ready message of ``queue``'s bands; returns how many."""
        purged = 0
        for p in PRIORITIES:
            name = self.names.band(queue, p)
            if await self.band_count(name) is not None:
                async with self._admin_lock, self._calls():
                    q = await self._channel(self._admin).get_queue(name, ensure=False)
                    result = await q.purge()
                purged += int(result.message_count or 0)
        return purged

    async def take_dead(self, n: int, handle: Callable[[list[str]], Awaitable[None]]) -> int:
        """Hand up to ``n`` message ids of the dead-letter queue ``P.dead`` to ``handle``,
        then acknowledge them; if ``handle`` raises, they go back there. Returns how many."""
        async with self._admin_lock, self._calls():
            await self._declare_dead()
            dead = await self._channel(self._admin).get_queue(self.names.dead, ensure=False)
            taken: list[AbstractIncomingMessage] = []
            while len(taken) < n and (message := await dead.get(fail=False)) is not None:
                taken.append(message)
        if not taken:
            return 0
        try:
            await handle([m.message_id or m.body.decode() for m in taken])
        except BaseException:
            with contextlib.suppress(*AMQP_ERRORS):  # a lost channel returns them anyway
                for message in taken:
                    await message.nack(requeue=True)
            raise
        async with self._calls():
            for message in taken:
                await message.ack()
        return len(taken)

    async def delete_topology(self, queues: Sequence[str] = ()) -> None:
        """Delete the bands of ``queues`` and of every queue used here, the delay buckets and
        the dead-letter queue and exchange (tests; a deployment's topology stays)."""
        admin = self._channel(self._admin)
        names = [self.names.band(q, p) for q in {*queues, *self.queues_used} for p in PRIORITIES]
        buckets = [self.names.delay(ms) for ms in self.delay_buckets_ms]
        async with self._admin_lock, self._calls():
            for name in [*names, *buckets, self.names.dead]:
                await admin.queue_delete(name)
            for name in [*buckets, self.names.dlx]:
                await admin.exchange_delete(name)
        self.kinds.clear()

    # -- publishing --------------------------------------------------------------------------

    async def publish(
        self, queue: str, priority: int, messages: Sequence[OutgoingMessage]
    ) -> list[str]:
        """Publish persistent messages to one band and return their ids once RabbitMQ has
        confirmed every one (written to disk, on a quorum queue by a majority).

        Raises ``QueueAtBound`` when the band cannot take the whole batch: before sending
        anything when its depth says so, or when RabbitMQ refuses messages (``reject-publish``
        nacks: quorum queues apply the bound a little late, and count unacked messages in it).
        ``PublishIncomplete`` when the connection drops. Both list the confirmed ids.
        """
        name = await self.declare(queue, priority)
        bound = self.bounds[name]
        depth = await self.band_count(name) or 0
        ids = [m[0] for m in messages]
        if depth + len(messages) > bound:
            raise QueueAtBound(queue, priority, depth, bound, [], ids)
        pub = self._channel(self._pub)
        results = await asyncio.gather(
            *(self._publish_one(pub.default_exchange, name, m) for m in messages),
            return_exceptions=True,
        )
        accepted = [
            i for i, r in zip(ids, results, strict=True) if not isinstance(r, BaseException)
        ]
        if len(accepted) == len(ids):
            return accepted
        refused = [
            i for i, r in zip(ids, results, strict=True) if isinstance(r, amqp_errors.DeliveryError)
        ]
        if len(accepted) + len(refused) == len(ids):
            depth = await self.band_count(name) or 0
            raise QueueAtBound(queue, priority, depth, bound, accepted, refused)
        failure = next(r for r in results if isinstance(r, BaseException))
        unconfirmed = [i for i in ids if i not in accepted]
        if isinstance(failure, amqp_errors.PublishError):
            text = f"RabbitMQ could not route messages to queue '{name}' (deleted meanwhile?)"
        else:
            text = str(lost_error(self.url, failure))
        raise PublishIncomplete(text, accepted, unconfirmed)

    async def _publish_one(
        self,
        exchange: AbstractExchange,
        routing_key: str,
        message: OutgoingMessage,
        expiration_s: float | None = None,
    ) -> None:
        message_id, body, headers = message
        await exchange.publish(
            aio_pika.Message(
                body,
                headers=dict(headers),
                message_id=message_id,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                expiration=expiration_s,
            ),
            routing_key=routing_key,
            mandatory=True,
        )

    async def publish_delayed(
        self, queue: str, priority: int, message: OutgoingMessage, delay_s: float
    ) -> None:
        """Publish ``message`` to reach its band after ``delay_s`` (never before), once
        confirmed. It waits in the smallest bucket that covers the delay, with its own exact
        ``expiration``; a message expires only at the head of its bucket, so a later-due one
        ahead of it can hold it up by at most the gap to the next smaller bucket. Delays beyond
        the largest bucket chain: the message carries its due time and the fetcher sends it
        round again when it comes back early."""
        name = await self.declare(queue, priority)
        delay_ms = max(0, round(delay_s * 1000))
        if delay_ms == 0:
            await self.publish(queue, priority, [message])
            return
        bucket = pick_bucket(delay_ms, self.delay_buckets_ms)
        message_id, body, headers = message
        if delay_ms > bucket:
            headers = {**headers, DUE_HEADER: int(time.time() * 1000) + delay_ms}
        exchange = await self._delay_exchange(bucket)
        try:
            await self._publish_one(
                exchange, name, (message_id, body, headers), min(delay_ms, bucket) / 1000
            )
        except AMQP_ERRORS as exc:
            raise lost_error(self.url, exc) from exc

    # -- consuming (see amqp_fetch) ------------------------------------------------------------

    def set_prefetch(self, n: int) -> None:
        """At most ``n`` unacknowledged deliveries at once (a worker's slots); takes effect at
        once, also while consuming. Lowering it below the deliveries held stops fetching until
        enough of them are acknowledged."""
        self._prefetch = n
        if self._fetcher is not None:
            self._fetcher.set_prefetch(n)

    @property
    def held(self) -> int:
        """Unacknowledged deliveries this connection holds."""
        return self._fetcher.held if self._fetcher is not None else 0

    async def fetch(self, queues: Sequence[str], n: int) -> list[Delivery]:
        """Up to ``n`` (and at most the free slots) deliveries, highest band first, at once."""
        return await self.fetcher.fetch(queues, n)

    async def wait_for_work(self, queues: Sequence[str], timeout_s: float) -> bool:
        """Wait until a band of ``queues`` has ready messages (True) or ``timeout_s`` passes."""
        return await self.fetcher.wait_for_work(queues, timeout_s)

    def consume(self, queues: Sequence[str]) -> AsyncGenerator[Delivery, None]:
        """Deliveries of ``queues`` for ever, highest band first, never more than ``prefetch``
        unacknowledged: after ``prefetch`` of them it waits for an ``ack`` / ``reject``."""
        return self.fetcher.consume(queues)

    async def ack(self, delivery: Delivery) -> None:
        """Done with it: RabbitMQ forgets the message."""
        await self.fetcher.settle(delivery, ack=True, requeue=False)

    async def reject(self, delivery: Delivery, requeue: bool) -> None:
        """Give it back (``requeue``: to its queue, with ``redelivered`` set and, on quorum
        queues, one more ``x-delivery-count``; a message is delivered at most
        ``delivery_limit + 1`` times, then dead-lettered) or dead-letter it now into ``P.dead``.
        """
        await self.fetcher.settle(delivery, ack=False, requeue=requeue)
