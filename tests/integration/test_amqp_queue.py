"""The RabbitMQ queue layer (``sje.broker.amqp_queue``) against a real RabbitMQ.

Each test runs one async scenario with ``asyncio.run`` on queues under its own random prefix,
and deletes that topology at the end. RabbitMQ is started (and installed) when it is not
reachable, as the suite does for Redis.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aio_pika
import pytest

from sje.broker.amqp_queue import AmqpQueue
from sje.broker.amqp_support import Delivery, QueueAtBound, pick_bucket, work_arguments
from sje.errors import BrokerError
from tests.support import eventually, free_port

T = TypeVar("T")
Q = "default"


@pytest.fixture
def amqp_prefix() -> str:
    return f"sjetest-{uuid.uuid4().hex[:12]}"


def run(
    url: str,
    prefix: str,
    scenario: Callable[[AmqpQueue], Awaitable[T]],
    **options: Any,
) -> T:
    """Run ``scenario`` with a connected queue layer; delete the prefix's topology afterwards
    (on a connection of its own: the scenario may have closed or broken its one)."""

    async def main() -> T:
        queue = AmqpQueue(url, prefix, **options)
        await queue.connect()
        try:
            return await asyncio.wait_for(scenario(queue), 120)
        finally:
            await queue.close()
            cleaner = AmqpQueue(url, prefix, **options)
            await cleaner.connect()
            await cleaner.delete_topology([Q, "other"])
            await cleaner.close()

    return asyncio.run(main())


async def fetch_until(
    queue: AmqpQueue, n: int, queues: list[str] | None = None, timeout: float = 10.0
) -> list[Delivery]:
    """Fetch until ``n`` deliveries arrived (they may be on their way back: a reject or a
    closed channel requeues asynchronously); fails after ``timeout``."""
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        got += await queue.fetch(queues or [Q], n - len(got))
        if len(got) < n:
            assert time.monotonic() < deadline, f"only {len(got)} of {n} deliveries arrived"
            await queue.wait_for_work(queues or [Q], 0.5)
    return got


async def has_count(q: AmqpQueue, name: str, n: int) -> bool:
    return await q.band_count(name) == n


def msgs(*ids: str) -> list[tuple[str, bytes, dict[str, str | int | None]]]:
    return [(i, f"body-{i}".encode(), {"task": i, "n": 7}) for i in ids]


# -- publishing and fetching ---------------------------------------------------------------


def test_published_messages_are_fetched_persistent_then_acked_away(
    amqp_url: str, amqp_prefix: str
) -> None:
    async def scenario(q: AmqpQueue) -> None:
        assert await q.publish(Q, 0, msgs("a", "b", "c")) == ["a", "b", "c"]
        assert q.kinds[q.names.band(Q, 0)] == "quorum"
        q.set_prefetch(10)
        got = await q.fetch([Q], 10)
        assert [d.message_id for d in got] == ["a", "b", "c"]
        first = got[0]
        assert first.body == b"body-a"
        assert first.headers["task"] == "a" and first.headers["n"] == 7
        assert all(d.persistent for d in got)  # delivery_mode 2 as delivered
        assert not first.redelivered and first.delivery_count == 0
        assert (first.queue, first.priority) == (Q, 0)
        assert await q.depth(Q) == 0 and q.held == 3
        for d in got:
            await q.ack(d)
        assert q.held == 0
        assert await q.fetch([Q], 10) == []
        with pytest.raises(BrokerError, match="already settled"):
            await q.ack(first)

    run(amqp_url, amqp_prefix, scenario)


def test_publish_returns_only_once_rabbitmq_confirmed_every_message(
    amqp_url: str, amqp_prefix: str
) -> None:
    async def scenario(q: AmqpQueue) -> None:
        observer = AmqpQueue(amqp_url, amqp_prefix)
        await observer.connect()
        try:
            ids = [f"m{i}" for i in range(300)]
            assert await q.publish(Q, 2, msgs(*ids)) == ids
            # confirmed means in the queue: another connection sees all of them at once
            assert await observer.depth(Q) == 300
        finally:
            await observer.close()

    run(amqp_url, amqp_prefix, scenario)


def test_a_queue_existing_as_classic_is_used_as_classic(amqp_url: str, amqp_prefix: str) -> None:
    async def scenario(q: AmqpQueue) -> None:
        name = q.names.band(Q, 4)
        conn = await aio_pika.connect(amqp_url)
        channel = await conn.channel()
        await channel.declare_queue(
            name, durable=True, arguments=work_arguments("classic", 100_000, q.names.dlx, 5)
        )
        await conn.close()
        await q.publish(Q, 4, msgs("x"))
        assert q.kinds[name] == "classic"
        assert q.queue_kind == "quorum"  # only that queue: the server does make quorum ones
        (d,) = await q.fetch([Q], 1)
        assert d.message_id == "x" and d.persistent
        await q.ack(d)

    run(amqp_url, amqp_prefix, scenario)


def test_depth_sums_the_bands_and_purge_empties_them(amqp_url: str, amqp_prefix: str) -> None:
    async def scenario(q: AmqpQueue) -> None:
        await q.publish(Q, 0, msgs("a", "b"))
        await q.publish(Q, 3, msgs("c", "d", "e"))
        await q.publish("other", 3, msgs("f"))
        assert await q.depth(Q) == 5
        assert await q.purge(Q) == 5
        assert await q.depth(Q) == 0
        assert await q.depth("other") == 1

    run(amqp_url, amqp_prefix, scenario)


def test_a_band_existing_with_another_bound_is_a_clear_error(
    amqp_url: str, amqp_prefix: str
) -> None:
    async def scenario(q: AmqpQueue) -> None:
        await q.publish(Q, 0, msgs("a"))
        other = AmqpQueue(amqp_url, amqp_prefix, max_length=7)
        await other.connect()
        try:
            with pytest.raises(BrokerError) as info:
                await other.publish(Q, 0, msgs("b"))
        finally:
            await other.close()
        assert f"RabbitMQ queue '{q.names.band(Q, 0)}' exists with other settings" in str(
            info.value
        )
        assert "x-max-length" in str(info.value)

    run(amqp_url, amqp_prefix, scenario, max_length=5)


# -- the bound -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["quorum", "classic"])
def test_a_full_band_refuses_the_whole_batch_and_keeps_its_head(
    amqp_url: str, amqp_prefix: str, kind: str
) -> None:
    async def scenario(q: AmqpQueue) -> None:
        await q.publish(Q, 0, msgs("a", "b", "c"))
        with pytest.raises(QueueAtBound) as info:
            await q.publish(Q, 0, msgs("d", "e", "f"))
        assert (info.value.depth, info.value.bound) == (3, 5)
        assert (info.value.accepted, info.value.rejected) == ([], ["d", "e", "f"])
        assert "Queue 'default' is full" in str(info.value)
        await q.publish(Q, 0, msgs("d", "e"))
        with pytest.raises(QueueAtBound):
            await q.publish(Q, 0, msgs("g"))
        q.set_prefetch(10)
        got = await q.fetch([Q], 10)
        assert [d.message_id for d in got] == ["a", "b", "c", "d", "e"]  # nothing dropped

    run(amqp_url, amqp_prefix, scenario, max_length=5, queue_kind=kind)


def test_a_racing_publisher_gets_the_nacks_and_the_ids_rabbitmq_accepted(
    amqp_url: str, amqp_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(q: AmqpQueue) -> None:
        await q.publish(Q, 0, msgs("a", "b"))

        async def stale_count(name: str) -> int:
            return 0  # what a submitter saw before a racing one filled the band

        monkeypatch.setattr(q, "band_count", stale_count)
        with pytest.raises(QueueAtBound) as info:
            await q.publish(Q, 0, msgs("c", "d", "e"))
        monkeypatch.undo()
        assert (info.value.accepted, info.value.rejected) == (["c"], ["d", "e"])
        q.set_prefetch(10)
        assert [d.message_id for d in await q.fetch([Q], 10)] == ["a", "b", "c"]

    # classic: RabbitMQ applies the bound message by message (quorum queues apply it late)
    run(amqp_url, amqp_prefix, scenario, max_length=3, queue_kind="classic")


# -- priorities and prefetch ---------------------------------------------------------------


def test_the_highest_band_is_fetched_first(amqp_url: str, amqp_prefix: str) -> None:
    async def scenario(q: AmqpQueue) -> None:
        await q.publish(Q, 0, msgs("low1", "low2", "low3"))
        await q.publish(Q, 5, msgs("mid1", "mid2"))
        await q.publish(Q, 9, msgs("high1"))
        q.set_prefetch(2)
        first = await q.fetch([Q], 10)
        assert [d.message_id for d in first] == ["high1", "mid1"]
        for d in first:
            await q.ack(d)
        # a high-band message published now overtakes the low-band ones already waiting
        await q.publish(Q, 9, msgs("high2"))
        second = await q.fetch([Q], 2)
        assert [d.message_id for d in second] == ["high2", "mid2"]
        assert [d.priority for d in second] == [9, 5]

    run(amqp_url, amqp_prefix, scenario)


def test_queues_are_taken_in_the_order_given_each_highest_band_first(
    amqp_url: str, amqp_prefix: str
) -> None:
    async def scenario(q: AmqpQueue) -> None:
        await q.publish(Q, 1, msgs("d1", "d2"))
        await q.publish(Q, 5, msgs("d5"))
        await q.publish("other", 9, msgs("o1", "o2", "o3"))
        q.set_prefetch(6)
        got = await q.fetch([Q, "other"], 5)
        assert [d.message_id for d in got] == ["d5", "d1", "d2", "o1", "o2"]
        rest = await q.fetch(["other", Q], 5)
        assert [d.message_id for d in rest] == ["o3"]

    run(amqp_url, amqp_prefix, scenario)


def test_prefetch_bounds_unacked_deliveries_and_changes_live(
    amqp_url: str, amqp_prefix: str
) -> None:
    async def scenario(q: AmqpQueue) -> None:
        await q.publish(Q, 0, msgs(*(f"m{i:02}" for i in range(20))))
        q.set_prefetch(3)
        held = await q.fetch([Q], 10)
        assert len(held) == 3 and q.held == 3
        assert await q.fetch([Q], 10) == []  # no free slot
        assert await q.depth(Q) == 17  # RabbitMQ delivered no more than the slots
        q.set_prefetch(5)  # raised live
        held += await q.fetch([Q], 10)
        assert len(held) == 5 and await q.depth(Q) == 15
        q.set_prefetch(2)  # lowered below what is held: nothing until acks make room
        for d in held[:3]:
            await q.ack(d)
        assert q.held == 2 and await q.fetch([Q], 10) == []
        await q.ack(held[3])
        held = [held[4], *await q.fetch([Q], 10)]
        assert len(held) == 2 and q.held == 2

        for d in held:
            await q.ack(d)

        # the iterator hands out at most `prefetch` and resumes when an ack frees a slot
        stream = q.consume([Q])
        one, two = await anext(stream), await anext(stream)
        waiting = asyncio.ensure_future(anext(stream))
        done, _ = await asyncio.wait({waiting}, timeout=0.5)
        assert not done, "a delivery beyond the free slots was handed out"
        assert q.held == 2 and await q.depth(Q) == 20 - 6 - 2
        await q.ack(one)
        three = await asyncio.wait_for(waiting, 10)
        assert len({one.message_id, two.message_id, three.message_id}) == 3
        assert q.held == 2
        await q.ack(two)
        await q.ack(three)
        await stream.aclose()

    run(amqp_url, amqp_prefix, scenario)


# -- rejects, delivery limit, dead letters -------------------------------------------------


def test_a_rejected_and_requeued_message_comes_back_redelivered(
    amqp_url: str, amqp_prefix: str
) -> None:
    async def scenario(q: AmqpQueue) -> None:
        await q.publish(Q, 0, msgs("a"))
        (d,) = await q.fetch([Q], 1)
        await q.reject(d, requeue=True)
        (again,) = await fetch_until(q, 1)
        assert again.message_id == "a" and again.body == b"body-a"
        assert again.redelivered and again.delivery_count == 1
        await q.ack(again)

    run(amqp_url, amqp_prefix, scenario)


def test_a_message_past_its_delivery_limit_ends_in_the_dead_queue(
    amqp_url: str, amqp_prefix: str
) -> None:
    async def scenario(q: AmqpQueue) -> None:
        await q.publish(Q, 0, msgs("poison"))
        for attempt in range(3):  # delivery limit 2: delivered once, then returned twice
            (d,) = await fetch_until(q, 1)
            assert d.message_id == "poison" and d.delivery_count == attempt
            await q.reject(d, requeue=True)
        await eventually(lambda: has_count(q, q.names.dead, 1), "the dead-lettered message")
        assert await q.depth(Q) == 0
        await q.publish(Q, 0, msgs("refused"))
        (d,) = await fetch_until(q, 1)
        await q.reject(d, requeue=False)  # dead-lettered at once
        await eventually(lambda: has_count(q, q.names.dead, 2), "the rejected message")
        conn = await aio_pika.connect(amqp_url)
        channel = await conn.channel()
        dead_queue = await channel.get_queue(q.names.dead, ensure=False)
        ids = []
        while (m := await dead_queue.get(fail=False)) is not None:
            ids.append(m.message_id)
            assert m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
            await m.ack()
        await conn.close()
        assert ids == ["poison", "refused"]

    run(amqp_url, amqp_prefix, scenario, delivery_limit=2)


# -- delays --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("buckets", "delay_s"),
    [((1_000, 5_000), 1.2), ((400,), 1.0)],
    ids=["smallest-covering-bucket", "chained-past-the-largest"],
)
def test_a_delayed_message_arrives_after_its_delay_and_not_before(
    amqp_url: str, amqp_prefix: str, buckets: tuple[int, ...], delay_s: float
) -> None:
    async def scenario(q: AmqpQueue) -> None:
        await q.publish(Q, 3, msgs("now"))
        start = time.monotonic()
        await q.publish_delayed(Q, 3, msgs("later")[0], delay_s)
        q.set_prefetch(5)
        (now,) = await q.fetch([Q], 5)
        assert now.message_id == "now"
        bucket = pick_bucket(round(delay_s * 1000), buckets)
        waiting = await q.band_count(q.names.delay(bucket))
        assert waiting == 1 or bucket < 1000  # confirmed into its bucket (a short one may be done)
        (later,) = await fetch_until(q, 1, timeout=delay_s + 10)
        elapsed = time.monotonic() - start
        assert later.message_id == "later" and later.priority == 3 and later.persistent
        assert later.body == b"body-later" and later.headers["task"] == "later"
        assert delay_s <= elapsed < delay_s + 5, elapsed

    run(amqp_url, amqp_prefix, scenario, delay_buckets_ms=buckets)


# -- consumers that die --------------------------------------------------------------------


def test_unacked_deliveries_of_a_closed_connection_go_to_another_consumer(
    amqp_url: str, amqp_prefix: str
) -> None:
    async def scenario(a: AmqpQueue) -> None:
        b = AmqpQueue(amqp_url, amqp_prefix)
        await b.connect()
        try:
            ids = [f"t{i}" for i in range(6)]
            await a.publish(Q, 0, msgs(*ids))
            a.set_prefetch(4)
            b.set_prefetch(10)
            held_by_a = {d.message_id for d in await a.fetch([Q], 4)}
            got_b = await b.fetch([Q], 10)
            assert len(held_by_a) == 4 and not held_by_a & {d.message_id for d in got_b}
            assert len(got_b) == 2  # never one message at two live consumers
            for d in got_b:
                await b.ack(d)
            await a.close()  # the consumer dies with four unacked deliveries
            back = await fetch_until(b, 4)
            assert {d.message_id for d in back} == held_by_a
            assert all(d.redelivered and d.delivery_count == 1 for d in back)
            for d in back:
                await b.ack(d)
            assert await b.depth(Q) == 0 and await b.fetch([Q], 10) == []
        finally:
            await b.close()

    run(amqp_url, amqp_prefix, scenario)


# -- connection errors ---------------------------------------------------------------------


def connect_error(url: str) -> str:
    async def attempt() -> str:
        queue = AmqpQueue(url, "unused", connect_timeout_s=5)
        with pytest.raises(BrokerError) as info:
            await queue.connect()
        assert not queue.is_connected
        return str(info.value)

    return asyncio.run(attempt())


def test_connection_errors_are_one_clear_line(amqp_url: str) -> None:
    port = free_port()
    refused = connect_error(f"amqp://guest:guest@127.0.0.1:{port}/")
    assert refused == (
        f"Cannot reach RabbitMQ at 127.0.0.1:{port} (connection refused). "
        "Start it (rabbitmq-server) or point broker-url at a running one."
    )
    login = connect_error("amqp://guest:not-the-password@127.0.0.1:5672/")
    assert "refused the login of user 'guest' (wrong user or password)" in login
    assert "not-the-password" not in login
    vhost = connect_error("amqp://guest:guest@127.0.0.1:5672/no-such-vhost")
    assert "refused vhost 'no-such-vhost' to user 'guest'" in vhost
    assert "rabbitmqctl add_vhost no-such-vhost" in vhost
    for message in (refused, login, vhost):
        assert "\n" not in message


def test_calls_after_the_connection_closed_raise_broker_error(
    amqp_url: str, amqp_prefix: str
) -> None:
    async def scenario(q: AmqpQueue) -> None:
        await q.publish(Q, 0, msgs("a"))
        (d,) = await q.fetch([Q], 1)
        await q.close()
        with pytest.raises(BrokerError, match="Not connected to RabbitMQ"):
            await q.publish(Q, 0, msgs("b"))
        with pytest.raises(BrokerError, match="Not connected"):
            await q.ack(d)
        await q.connect()  # again: the delivery went back to the queue
        (again,) = await fetch_until(q, 1)
        assert again.message_id == "a" and again.redelivered
        with pytest.raises(BrokerError, match="is void"):
            await q.ack(d)  # same delivery tag on the new channel, yet not the same delivery
        await q.ack(again)

    run(amqp_url, amqp_prefix, scenario)
