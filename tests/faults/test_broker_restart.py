"""The ``amqp://`` backend when its servers crash: RabbitMQ (a private node, never the machine's
own) killed -9 and restarted on the same database, and the Redis state store (AOF on) killed
-9 and restarted. Nothing a submit accepted may be lost, and no task may run twice.

Each test drives the broker objects directly in one async scenario (``asyncio.run``), as a
worker and a master would, under a key prefix of its own; the RabbitMQ node is the module's,
started once and killed as the tests need. Before each kill -9 the node is given the moment
it needs to save its registry of quorum queues (``RabbitServer.wait_durable``): RabbitMQ 3.10
loses a queue declared less than 500 ms before a crash, which a deployment's queues never are
but a test's would be.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis

from sje.broker.amqp import AmqpBroker
from sje.broker.base import Broker, NewJob
from sje.broker.registry import open_broker
from sje.errors import BrokerError
from sje.models import TaskMessage
from tests.integration.test_broker_contract import (
    ERROR,
    LONG_LEASE,
    job_of,
    make_job,
    submit_ok,
    task_rows,
)
from tests.support import RabbitServer, RedisServer, eventually, wait_until

T = TypeVar("T")
Q = "default"
W = "worker-1"
RETRY_S = 1.0  # a retry's backoff: due by the time the restarted node answers


@pytest.fixture(scope="module")
def rabbit_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitServer]:
    """The module's private RabbitMQ node (its database in a temporary directory)."""
    server = RabbitServer(tmp_path_factory.mktemp("rabbitmq"))
    server.start()
    yield server
    server.close()


@pytest.fixture
def rabbit(rabbit_service: RabbitServer) -> Iterator[RabbitServer]:
    """Control of the node for one test: ``kill()`` (-9), ``start()``, ``restart()``; running
    again afterwards."""
    yield rabbit_service
    rabbit_service.heal()


@pytest.fixture(params=["redis", "sqlite"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The state store: the directory's private Redis (AOF on) or a SQLite file."""
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    return f"sqlite:///{tmp_path}/state.db"


# -- helpers -----------------------------------------------------------------------------------


def run(scenario: Callable[[], Awaitable[T]], timeout: float = 150) -> T:
    return asyncio.run(asyncio.wait_for(scenario(), timeout))


def result_of(message: TaskMessage) -> bytes:
    return f'"r{message.index}"'.encode()


def results_for(n: int) -> list[bytes]:
    return [f'"r{i}"'.encode() for i in range(n)]


async def take(b: Broker, n: int, timeout: float = 20) -> list[TaskMessage]:
    """Fetch (lease) exactly ``n`` tasks."""
    got: list[TaskMessage] = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        got += await b.fetch(W, [Q], n - len(got), LONG_LEASE)
        if len(got) < n:
            assert time.monotonic() < deadline, f"only {len(got)} of {n} tasks were delivered"
            await b.wait_for_work([Q], 0.2)
    return got


async def complete(b: Broker, messages: list[TaskMessage]) -> None:
    for m in messages:
        assert await b.complete(m.id, W, result_of(m)) == "ok", m.id


async def finish(b: Broker, job_id: str, timeout: float = 60) -> list[TaskMessage]:
    """Fetch and complete tasks until the job has succeeded; returns what was delivered."""
    got: list[TaskMessage] = []
    deadline = time.monotonic() + timeout
    while (await job_of(b, job_id))["state"] != "succeeded":
        assert time.monotonic() < deadline, f"job unfinished after {timeout}s ({len(got)} done)"
        messages = await b.fetch(W, [Q], 10, LONG_LEASE)
        await complete(b, messages)
        got += messages
        if not messages:
            await b.wait_for_work([Q], 0.2)
    return got


async def starts(b: Broker, job_id: str) -> Counter[str]:
    """How often each task of the job was started (``task.started`` events)."""
    counted: Counter[str] = Counter()
    after = "0"
    while page := await b.events(job_id, after, None):
        counted.update(f["task"] for _id, f in page if f["type"] == "task.started")
        after = page[-1][0]
    return counted


async def rabbit_depth(b: Broker) -> int:
    """Ready messages RabbitMQ holds for the queue (over its priority bands)."""
    assert isinstance(b, AmqpBroker)
    await b.ping()  # connected
    return await b.queue.depth(Q)


async def rabbit_holds(b: Broker, n: int) -> None:
    """RabbitMQ holds ``n`` ready messages for the queue. Just after a restart a quorum queue
    reports 0 until its Raft member has recovered (about half a second here): wait for it."""

    async def holds() -> bool:
        return await rabbit_depth(b) == n

    await eventually(holds, f"RabbitMQ to hold {n} messages", 20, every=0.05)


async def assert_done_once(b: Broker, job: NewJob, attempts: dict[str, int] | None = None) -> None:
    """The job succeeded with every result stored, each task started once (or as often as
    ``attempts`` says), and RabbitMQ holds nothing more for it."""
    n = len(job.payloads)
    expected = {str(i): 1 for i in range(n)} | (attempts or {})
    record = await job_of(b, job.id)
    assert record["state"] == "succeeded"
    assert await b.results(job.id, 0, n) == results_for(n)
    rows = await task_rows(b, job.id)
    assert {t["index"]: t["attempts"] for t in rows} == expected
    assert {t["state"] for t in rows} == {"succeeded"}
    assert dict(await starts(b, job.id)) == expected
    assert await b.fetch(W, [Q], 10, LONG_LEASE) == []  # no duplicate left to deliver
    assert await rabbit_depth(b) == 0


async def assert_not_runnable(b: Broker, job: NewJob) -> None:
    """A refused submit left nothing to run: the job was never stored, or is cancelled with
    no task started."""
    record = await b.job(job.id)
    if record is not None:
        assert record["state"] == "cancelled", record
        assert {t["attempts"] for t in await task_rows(b, job.id)} == {0}


def aof_written(r: redis.Redis) -> bool:
    """Redis has handed every write to the kernel (nothing buffered, no write postponed
    behind a slow fsync): a kill -9 of Redis alone, not of the machine, loses none of it."""
    info = r.info("persistence")
    pending = ("aof_buffer_length", "aof_pending_bio_fsync", "aof_rewrite_in_progress")
    return all(int(info[field]) == 0 for field in pending)


# -- RabbitMQ killed -9 ------------------------------------------------------------------------


def test_rabbitmq_kill9_and_restart_loses_no_accepted_task_and_runs_none_twice(
    rabbit: RabbitServer, prefix: str, state_url: str
) -> None:
    """A job of 50 tasks, 10 of them done; RabbitMQ is killed -9 and restarted on its
    database: the 40 persistent messages of the durable quorum queue come back, each is
    delivered once, and the job succeeds with every result."""
    job = make_job({"task": "t", "inputs": list(range(50))})

    async def scenario() -> None:
        b = open_broker(rabbit.url, prefix, state_url)
        try:
            await submit_ok(b, job)
            await complete(b, await take(b, 10))
            await rabbit_holds(b, 40)
        finally:
            await b.close()
        await asyncio.to_thread(rabbit.wait_durable)
        await asyncio.to_thread(rabbit.restart)
        b = open_broker(rabbit.url, prefix, state_url)
        try:
            await rabbit_holds(b, 40)
            after = await finish(b, job.id)
            assert sorted(int(m.index) for m in after) == list(range(10, 50))
            assert {m.attempt for m in after} == {1}
            await assert_done_once(b, job)
        finally:
            await b.close()

    run(scenario)


def test_rabbitmq_killed_while_tasks_are_leased_and_a_retry_waits(
    rabbit: RabbitServer, prefix: str, redis_url: str
) -> None:
    """Leases and retries live in the store, not in RabbitMQ: one task leased before the crash
    is completed during the outage, the others after the restart (their leases still valid),
    and the retry that became due meanwhile is promoted, relayed to RabbitMQ, delivered and
    completed. The worker reconnects with a new broker object, as a restarted process does (a
    broker kept open across the crash: ``test_a_broker_open_across_the_crash_...``)."""
    job = make_job({"task": "t", "inputs": list(range(20)), "retries": 2})

    async def before() -> tuple[list[TaskMessage], TaskMessage]:
        b = open_broker(rabbit.url, prefix, redis_url)
        try:
            await submit_ok(b, job)
            leased = await take(b, 5)
            (failing,) = await take(b, 1)
            assert await b.fail(failing.id, W, ERROR, RETRY_S) == "retry"
            await asyncio.to_thread(rabbit.wait_durable)
            await asyncio.to_thread(rabbit.kill)
            await complete(b, leased[:1])  # during the outage: the store alone records it
        finally:
            await b.close()
        return leased[1:], failing

    async def scenario() -> None:
        leased, failing = await before()
        await asyncio.to_thread(rabbit.start)
        b = open_broker(rabbit.url, prefix, redis_url)
        try:
            await complete(b, leased)  # the leases held across the crash
            await rabbit_holds(b, 14)
            await eventually(b.promote_due, "the retry to be promoted and relayed", 20)
            after = await finish(b, job.id)
            assert sorted(int(m.index) for m in after) == sorted(
                [*range(6, 20), int(failing.index)]
            )
            again = next(m for m in after if m.id == failing.id)
            assert again.attempt == 2
            await assert_done_once(b, job, {failing.index: 2})
        finally:
            await b.close()

    run(scenario)


def test_a_submit_while_rabbitmq_is_down_fails_clearly_and_leaves_nothing_runnable(
    rabbit: RabbitServer, prefix: str, redis_url: str
) -> None:
    """With RabbitMQ down a submit fails, saying RabbitMQ cannot be reached, and the job is not
    left to run (never stored, or cancelled). After the restart a submit works, and only its
    tasks are delivered."""
    refused = make_job({"task": "t", "inputs": list(range(5))})
    job = make_job({"task": "t", "inputs": list(range(5))})

    async def scenario() -> None:
        await asyncio.to_thread(rabbit.kill)
        b = open_broker(rabbit.url, prefix, redis_url)
        try:
            with pytest.raises(BrokerError) as caught:
                await b.submit(refused)
            assert str(caught.value) == (
                f"Cannot reach RabbitMQ at 127.0.0.1:{rabbit.port} (connection refused). "
                "Start it (rabbitmq-server) or point broker-url at a running one."
            )
            await assert_not_runnable(b, refused)
        finally:
            await b.close()
        await asyncio.to_thread(rabbit.start)
        b = open_broker(rabbit.url, prefix, redis_url)
        try:
            await submit_ok(b, job)
            after = await finish(b, job.id)
            assert {m.job_id for m in after} == {job.id}
            await assert_done_once(b, job)
            await assert_not_runnable(b, refused)
        finally:
            await b.close()

    run(scenario)


def test_a_broker_open_across_the_crash_fails_cleanly_then_carries_on(
    rabbit: RabbitServer, prefix: str, redis_url: str
) -> None:
    """A broker object kept open across the crash, as a running worker's or master's is: while
    RabbitMQ is down every call that needs it fails with a ``BrokerError`` naming RabbitMQ (so
    the worker's and the scheduler's loops retry), a submit among them, whose job is not left
    to run; ``ping`` fails too. Once RabbitMQ is back the same object reconnects by itself:
    the leased tasks complete, the rest is delivered once, and a new submit works."""
    job = make_job({"task": "t", "inputs": list(range(20))})
    refused = make_job({"task": "t", "inputs": list(range(5))})
    later = make_job({"task": "t", "inputs": list(range(5))})
    where = f"RabbitMQ at 127.0.0.1:{rabbit.port}"

    async def scenario() -> None:
        b = open_broker(rabbit.url, prefix, redis_url)
        try:
            await submit_ok(b, job)
            leased = await take(b, 2)
            await asyncio.to_thread(rabbit.wait_durable)
            await asyncio.to_thread(rabbit.kill)
            with pytest.raises(BrokerError, match=where):
                await b.fetch(W, [Q], 1, LONG_LEASE)
            with pytest.raises(BrokerError, match=where):
                await b.submit(refused)
            await assert_not_runnable(b, refused)
            with pytest.raises(BrokerError, match=where):
                await b.ping()
            await complete(b, leased[:1])
            await asyncio.to_thread(rabbit.start)
            await complete(b, leased[1:])
            await rabbit_holds(b, 18)
            after = await finish(b, job.id)
            assert sorted(int(m.index) for m in after) == list(range(2, 20))
            await assert_done_once(b, job)
            await submit_ok(b, later)
            assert {m.job_id for m in await finish(b, later.id)} == {later.id}
            await assert_done_once(b, later)
            await assert_not_runnable(b, refused)
        finally:
            await b.close()

    run(scenario)


# -- the Redis state store killed -9 -------------------------------------------------------------


def test_redis_state_store_kill9_and_restart_loses_no_accepted_task(
    rabbit: RabbitServer, prefix: str, redis_server: RedisServer, r: redis.Redis
) -> None:
    """A job of 30 tasks, 10 done and 2 leased; the state store (Redis, AOF on) is killed -9
    once every write reached its AOF, and restarted: RabbitMQ still holds the other 18, the
    leased ones complete, and the job succeeds with each task started once."""
    job = make_job({"task": "t", "inputs": list(range(30))})

    async def scenario() -> None:
        b = open_broker(rabbit.url, prefix, redis_server.url)
        try:
            await submit_ok(b, job)
            await complete(b, await take(b, 10))
            leased = await take(b, 2)
            await asyncio.to_thread(
                wait_until, lambda: aof_written(r), 10, "Redis to write its AOF"
            )
            await asyncio.to_thread(redis_server.kill)
            await asyncio.to_thread(redis_server.start)  # same port and directory: AOF reloads
            await complete(b, leased)
            await rabbit_holds(b, 18)
            after = await finish(b, job.id)
            assert sorted(int(m.index) for m in after) == list(range(12, 30))
            await assert_done_once(b, job)
        finally:
            await b.close()

    run(scenario)
