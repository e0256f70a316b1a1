"""The ``amqp://`` backend's dead-lettered deliveries, against the local RabbitMQ with a Redis or
SQLite state store: a message whose consumers die between fetching and acknowledging it
``DELIVERY_LIMIT`` + 1 times ends in ``P.dead`` while the store still holds its task as queued.
Without more, its job would wait for ever; the master's tick publishes it again.

Each consumer death is real: a connection of its own fetches the message and closes without
acknowledging it, and RabbitMQ returns it with one more ``x-delivery-count``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from sje.broker.amqp import BAND_BOUND, DELIVERY_LIMIT, AmqpBroker
from sje.broker.amqp_queue import AmqpQueue
from sje.broker.base import Broker
from tests.integration.test_broker_contract import (
    LONG_LEASE,
    W1,
    Store,
    job_of,
    queue_names,
    run,
    submit,
)
from tests.support import drop_amqp_queues, eventually

QUEUE = "default"


@pytest.fixture(params=["redis", "sqlite"])
def store(
    request: pytest.FixtureRequest, amqp_url: str, prefix: str, tmp_path: Path
) -> Iterator[Store]:
    if request.param == "redis":
        state_url = str(request.getfixturevalue("redis_url"))
    else:
        state_url = f"sqlite:///{tmp_path}/sje.db"
    yield Store(amqp_url, prefix, state_url)
    drop_amqp_queues(amqp_url, prefix, asyncio.run(queue_names(state_url, prefix)))


async def die_holding_it(store: Store, times: int) -> None:
    """``times`` consumers in turn fetch the one message and die before acknowledging it."""
    for _ in range(times):
        consumer = AmqpQueue(
            store.url, store.prefix, max_length=BAND_BOUND, delivery_limit=DELIVERY_LIMIT
        )
        await consumer.connect()
        await eventually(
            lambda c=consumer: c.fetch([QUEUE], 1),  # type: ignore[misc]
            "the message, back from the consumer that died before",
        )
        await consumer.close()  # dies: the delivery was never acknowledged


async def dead_count(b: AmqpBroker) -> int | None:
    return await b.queue.band_count(b.queue.names.dead)


async def one_dead(b: AmqpBroker) -> bool:
    return await dead_count(b) == 1


def test_a_task_rabbitmq_dead_lettered_is_published_again_and_its_job_completes(
    store: Store,
) -> None:
    async def scenario(broker: Broker) -> None:
        assert isinstance(broker, AmqpBroker)
        job_id = await submit(broker, {"task": "t", "inputs": [1]})
        await die_holding_it(store, DELIVERY_LIMIT + 1)
        await eventually(lambda: one_dead(broker), "the message in the dead queue")
        # the store still holds the task as queued, and RabbitMQ has nothing to deliver
        assert (await job_of(broker, job_id))["c_queued"] == "1"
        assert await broker.fetch(W1, [QUEUE], 1, LONG_LEASE) == []

        await broker.promote_due()  # the master's tick

        assert await dead_count(broker) == 0
        fetched = await eventually(
            lambda: broker.fetch(W1, [QUEUE], 1, LONG_LEASE), "the task published again"
        )
        assert [m.id for m in fetched] == [f"{job_id}:0"]
        assert await broker.complete(fetched[0].id, W1, b"2") == "ok"
        assert (await job_of(broker, job_id))["state"] == "succeeded"

    run(store, scenario)


def test_dead_letters_of_an_ended_job_are_dropped_not_published(store: Store) -> None:
    async def scenario(broker: Broker) -> None:
        assert isinstance(broker, AmqpBroker)
        job_id = await submit(broker, {"task": "t", "inputs": [1]})
        await die_holding_it(store, DELIVERY_LIMIT + 1)
        await eventually(lambda: one_dead(broker), "the message in the dead queue")
        await broker.cancel(job_id)

        await broker.promote_due()

        assert await dead_count(broker) == 0
        assert await broker.queue.depth(QUEUE) == 0
        assert (await job_of(broker, job_id))["state"] == "cancelled"

    run(store, scenario)
