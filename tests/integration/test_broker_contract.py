"""The broker contract, run unchanged against every backend: the task queue, the scheduler's
timer work, the job store, the dead-letter queue, task logs and the monitor's reads.

``broker_url`` is parametrized over Redis (127.0.0.1:6379 DB 0, under a key prefix of the
test's own, deleted afterwards), SQLite (a file in the test's ``tmp_path``) and RabbitMQ (the
local one, queues under the test's prefix, deleted afterwards) with either as its state store.
Released and reclaimed tasks are the one documented difference: RabbitMQ appends them to their
priority band (``Store.requeues_at_front``). Each test runs
one async scenario with ``asyncio.run``: brokers are opened with ``open_broker`` inside the
event loop and closed at the end. Everything is read through the public surface; tests of one
backend's internals (Redis keys and TTLs) live in ``test_redis_broker.py`` and its siblings.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest

from sje.broker import redis_logs, views_shape
from sje.broker.base import Broker, JobQuery, NewJob
from sje.broker.registry import open_broker
from sje.config import MasterSettings
from sje.errors import BrokerError, ConfigError
from sje.events import HISTOGRAM_BOUNDS_MS, SLOT_S
from sje.master.planner import plan
from sje.models import TaskMessage, parse_job
from sje.signing import verify
from sje.tasks import TaskDefaults
from tests.support import ROOT, drop_amqp_queues, eventually

T = TypeVar("T")
W1, W2 = "worker-1", "worker-2"
LONG_LEASE = 60.0
KEY = b"test-signing-key"
ERROR = {"type": "ValueError", "message": "bad input", "attempt": 1, "traceback": "tb"}
DEAD = {"type": "BadSignature", "message": "signature missing or wrong; it was never run"}
NEVER_S = 600.0  # a retry delay no test waits for: the task stays retrying


# -- the store under test ----------------------------------------------------------------------


@pytest.fixture(params=["redis", "sqlite", "amqp+redis", "amqp+sqlite"])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The backend under test; for RabbitMQ, its state store is Redis (``amqp+redis``) or a SQLite
    file (``amqp+sqlite``)."""
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    if request.param.startswith("amqp"):
        return str(request.getfixturevalue("amqp_url"))
    return f"sqlite:///{tmp_path}/sje.db"


@dataclass(frozen=True)
class Store:
    """The test's store: its URL, (for Redis and RabbitMQ) its key prefix and (for RabbitMQ)
    the state store's URL."""

    url: str
    prefix: str
    state_url: str | None = None

    @property
    def requeues_at_front(self) -> bool:
        """Released and reclaimed tasks go to the front of their queue (RabbitMQ appends:
        to the back of their priority band)."""
        return self.state_url is None

    def open(self) -> Broker:
        return open_broker(self.url, self.prefix, self.state_url)


@pytest.fixture
def store(broker_url: str, request: pytest.FixtureRequest) -> Iterator[Store]:
    if broker_url.startswith("sqlite:"):
        yield Store(broker_url, "sje")
        return
    prefix = str(request.getfixturevalue("prefix"))
    if not broker_url.startswith("amqp"):
        yield Store(broker_url, prefix)
        return
    if request.node.callspec.params["broker_url"] == "amqp+sqlite":
        state_url = f"sqlite:///{request.getfixturevalue('tmp_path')}/sje.db"
    else:
        state_url = str(request.getfixturevalue("redis_url"))
    yield Store(broker_url, prefix, state_url)
    drop_amqp_queues(broker_url, prefix, asyncio.run(queue_names(state_url, prefix)))


async def queue_names(state_url: str, prefix: str) -> list[str]:
    """Every SJE queue the test's state store knows (their RabbitMQ queues are deleted)."""
    state = open_broker(state_url, prefix)
    try:
        return await state.views.queue_names()
    finally:
        await state.close()


def run(store: Store, scenario: Callable[[Broker], Awaitable[T]]) -> T:
    """Run ``scenario`` with a broker opened (and closed) inside its own event loop."""

    async def main() -> T:
        broker = store.open()
        try:
            return await scenario(broker)
        finally:
            await broker.close()

    return asyncio.run(main())


def make_job(definition: dict[str, Any], **settings: Any) -> NewJob:
    """A planned job, as the master would store it (no task catalog needed)."""
    return plan(parse_job(definition), {}, MasterSettings(**settings), KEY)


def payload_of(message: TaskMessage) -> bytes:
    """The message's payload after checking its signature, as a worker does."""
    payload = verify(KEY, message.id, message.header, message.payload)
    assert payload is not None, f"bad signature on {message.id}"
    return payload


async def later_than(b: Broker, seconds: float) -> None:
    """Wait until the broker's clock is at least ``seconds`` later."""
    start = await b.server_time()

    async def moved_on() -> bool:
        return await b.server_time() >= start + seconds

    await eventually(moved_on, f"the broker clock to move on by {seconds}s")


async def next_millisecond(b: Broker) -> None:
    """Wait until the broker clock is at least two milliseconds later (job indexes are
    ordered by creation time in ms)."""
    await later_than(b, 0.002)


async def submit_ok(b: Broker, job: NewJob) -> str:
    outcome = await b.submit(job)
    assert outcome.status == "ok", outcome
    return outcome.job_id


async def submit(b: Broker, definition: dict[str, Any]) -> str:
    return await submit_ok(b, make_job(definition))


async def job_of(b: Broker, job_id: str) -> dict[str, str]:
    record = await b.job(job_id)
    assert record is not None, f"job {job_id} is not stored"
    return record


def counts(record: dict[str, str]) -> dict[str, int]:
    names = ("queued", "running", "retrying", "succeeded", "failed", "dead", "cancelled")
    return {name: int(record[f"c_{name}"]) for name in names}


def indexes(messages: list[TaskMessage]) -> list[str]:
    return [m.index for m in messages]


async def task_rows(b: Broker, job_id: str) -> list[dict[str, Any]]:
    """Every row of a job's per-task table."""
    job = await job_of(b, job_id)
    _, rows = await b.views.tasks(job_id, job, None, 0, 1000)
    return rows


async def running_per_worker(b: Broker) -> dict[str, int]:
    """Leases held, by registered worker name."""
    return {str(w["name"]): int(w["running"]) for w in await b.workers()}


async def complete_all(b: Broker, queue: str, worker: str = W1) -> int:
    """Fetch and complete every task queued on ``queue``; returns how many."""
    done = 0
    while messages := await b.fetch(worker, [queue], 100, LONG_LEASE):
        for m in messages:
            assert await b.complete(m.id, worker, b"1") == "ok"
        done += len(messages)
    return done


async def retry_then_succeed(b: Broker, queue: str) -> None:
    """The next task on ``queue`` fails once (retry without delay), then succeeds."""
    (first,) = await b.fetch(W1, [queue], 1, LONG_LEASE)
    assert await b.fail(first.id, W1, ERROR, 0.0) == "retry"
    await eventually(b.promote_due, "the retry to be promoted")
    (again,) = await b.fetch(W1, [queue], 1, LONG_LEASE)
    assert (again.id, again.attempt) == (first.id, 2)
    assert await b.complete(again.id, W1, b"1") == "ok"


async def fail_next(b: Broker, queue: str) -> str:
    """The next task on ``queue`` fails for good (its job fails); returns its id."""
    (message,) = await b.fetch(W1, [queue], 1, LONG_LEASE)
    assert await b.fail(message.id, W1, ERROR, None) == "failed"
    return message.id


async def global_types(b: Broker, worker: str) -> list[str]:
    """Types of the global events about ``worker``, oldest first."""
    events = await b.views.global_events("0", None, 100_000)
    return [f["type"] for _i, f in events if f.get("worker") == worker]


# -- submit ------------------------------------------------------------------------------------


def test_submit_stores_the_whole_job_pending_with_counts(store: Store) -> None:
    job = make_job({"task": "app.square", "name": "sq", "inputs": [1, 2, 3], "priority": 4})

    async def scenario(b: Broker) -> None:
        assert await submit_ok(b, job) == job.id
        record = await job_of(b, job.id)
        assert record["state"] == "pending"
        assert record["name"] == "sq"
        assert record["task"] == "app.square"
        assert record["n"] == "3"
        assert record["remaining"] == "3"
        assert record["priority"] == "4"
        assert "started_at" not in record and "finished_at" not in record
        assert counts(record) == {
            "queued": 3,
            "running": 0,
            "retrying": 0,
            "succeeded": 0,
            "failed": 0,
            "dead": 0,
            "cancelled": 0,
        }
        assert await b.depth("default") == 3
        assert await b.depth("other") == 0
        listed = await b.jobs(10, 0)
        assert [row["id"] for row in listed] == [job.id]
        assert listed[0]["state"] == "pending"

    run(store, scenario)


def test_jobs_lists_newest_first_and_pages(store: Store) -> None:
    jobs = [make_job({"task": "t", "name": f"j{i}"}) for i in range(3)]

    async def scenario(b: Broker) -> None:
        for job in jobs:
            await submit_ok(b, job)
            await next_millisecond(b)
        listed = await b.jobs(10, 0)
        assert [row["name"] for row in listed] == ["j2", "j1", "j0"]
        assert [row["name"] for row in await b.jobs(1, 1)] == ["j1"]

    run(store, scenario)


def test_jobs_with_zero_limit_returns_no_rows(store: Store) -> None:
    async def scenario(b: Broker) -> None:
        await submit_ok(b, make_job({"task": "t"}))
        assert await b.jobs(0, 0) == []

    run(store, scenario)


def test_a_resubmitted_job_whose_first_submit_landed_is_answered_the_same(store: Store) -> None:
    job = make_job({"task": "t", "inputs": [1, 2]})

    async def scenario(b: Broker) -> None:
        await submit_ok(b, job)
        assert await submit_ok(b, job) == job.id
        assert await b.depth("default") == 2  # nothing queued twice

    run(store, scenario)


# -- fetch -------------------------------------------------------------------------------------


def test_fetch_returns_at_most_n_tasks_and_leases_them(store: Store) -> None:
    job = make_job({"task": "app.square", "inputs": [10, 11, 12, 13, 14], "retries": 2})

    async def scenario(b: Broker) -> None:
        await b.register_worker(W1, {"name": "w1"}, {})
        await submit_ok(b, job)
        got = await b.fetch(W1, ["default"], 2, LONG_LEASE)
        assert indexes(got) == ["0", "1"]
        first = got[0]
        assert first.id == f"{job.id}:0"
        assert first.job_id == job.id
        assert first.task == "app.square"
        assert first.kind == "item"
        assert payload_of(first) == b"10"
        assert first.attempt == 1
        assert first.retries == 2
        record = await job_of(b, job.id)
        assert record["state"] == "running"
        assert counts(record)["queued"] == 3
        assert counts(record)["running"] == 2
        assert await b.depth("default") == 3
        assert indexes(await b.fetch(W1, ["default"], 10, LONG_LEASE)) == ["2", "3", "4"]
        assert await b.fetch(W1, ["default"], 10, LONG_LEASE) == []
        rows = await task_rows(b, job.id)
        assert {(t["state"], t["worker"], t["attempts"]) for t in rows} == {("running", W1, 1)}
        assert await running_per_worker(b) == {"w1": 5}

    run(store, scenario)


def test_fetch_with_zero_slots_returns_nothing(store: Store) -> None:
    async def scenario(b: Broker) -> None:
        await submit_ok(b, make_job({"task": "t", "inputs": [1]}))
        assert await b.fetch(W1, ["default"], 0, LONG_LEASE) == []
        assert await b.depth("default") == 1

    run(store, scenario)


def test_fetch_order_is_priority_first_then_fifo(store: Store) -> None:
    low = make_job({"task": "t", "inputs": [1, 2], "priority": 1})
    high_old = make_job({"task": "t", "inputs": [3, 4], "priority": 7})
    high_new = make_job({"task": "t", "inputs": [5], "priority": 7})

    async def scenario(b: Broker) -> None:
        for job in (low, high_old, high_new):
            await submit_ok(b, job)
        got = await b.fetch(W1, ["default"], 10, LONG_LEASE)
        assert [m.id for m in got] == [
            f"{high_old.id}:0",
            f"{high_old.id}:1",
            f"{high_new.id}:0",
            f"{low.id}:0",
            f"{low.id}:1",
        ]

    run(store, scenario)


def test_fetch_takes_queues_in_the_order_given(store: Store) -> None:
    slow = make_job({"task": "t", "inputs": [1], "queue": "slow", "priority": 9})
    fast = make_job({"task": "t", "inputs": [2], "queue": "fast", "priority": 0})

    async def scenario(b: Broker) -> None:
        await submit_ok(b, slow)
        await submit_ok(b, fast)
        got = await b.fetch(W1, ["fast", "slow"], 2, LONG_LEASE)
        assert [m.job_id for m in got] == [fast.id, slow.id]
        assert await b.fetch(W1, ["other"], 5, LONG_LEASE) == []

    run(store, scenario)


def test_call_job_task_carries_args_and_options(store: Store) -> None:
    job = make_job(
        {"task": "app.call", "args": [1], "kwargs": {"k": 2}, "timeout": "5s", "backoff": 0.5}
    )

    async def scenario(b: Broker) -> None:
        await submit_ok(b, job)
        (message,) = await b.fetch(W1, ["default"], 5, LONG_LEASE)
        assert message.kind == "call"
        assert message.index == "0"
        assert orjson.loads(payload_of(message)) == {"args": [1], "kwargs": {"k": 2}}
        assert message.timeout == 5.0
        assert message.backoff == 0.5
        assert message.backoff_max == 300.0

    run(store, scenario)


def test_concurrent_consumers_never_get_a_leased_task(store: Store) -> None:
    """Four brokers (connections) fetch one queue at once: every task is delivered once."""
    n = 300
    job = make_job({"task": "t", "inputs": list(range(n))})

    async def scenario(b: Broker) -> None:
        await submit_ok(b, job)
        consumers = [store.open() for _ in range(4)]
        held: dict[str, str] = {}
        delivered: list[str] = []
        first_batches: list[str] = []
        all_hold = asyncio.Event()  # set once every consumer holds its first batch

        async def consume(wid: str, c: Broker) -> None:
            while got := await c.fetch(wid, ["default"], 3, LONG_LEASE):
                for m in got:
                    assert m.id not in held, f"{m.id} went to {wid} while {held[m.id]} held it"
                    held[m.id] = wid
                    delivered.append(m.id)
                if wid not in first_batches:
                    first_batches.append(wid)
                    if len(first_batches) == len(consumers):
                        all_hold.set()
                    # the others fetch while these are held
                    await asyncio.wait_for(all_hold.wait(), 10.0)
                for m in got:
                    assert await c.complete(m.id, wid, b"1") == "ok"
                    del held[m.id]

        try:
            await asyncio.gather(*(consume(f"w{i}", c) for i, c in enumerate(consumers)))
        finally:
            for c in consumers:
                await c.close()
        assert sorted(delivered) == sorted(f"{job.id}:{i}" for i in range(n))
        record = await job_of(b, job.id)
        assert record["state"] == "succeeded"
        assert counts(record)["succeeded"] == n

    run(store, scenario)


def test_wait_for_work_returns_when_another_broker_queues_a_task(store: Store) -> None:
    async def scenario(b: Broker) -> None:
        assert await b.fetch(W1, ["default"], 1, LONG_LEASE) == []
        other = store.open()
        try:
            waiting = asyncio.ensure_future(b.wait_for_work(["default"], 30.0))
            done, _ = await asyncio.wait({waiting}, timeout=0.05)
            assert not done, "nothing is queued yet: the worker waits"
            started = time.monotonic()
            await submit_ok(other, make_job({"task": "t", "inputs": [1]}))
            await asyncio.wait_for(waiting, 10.0)
            assert time.monotonic() - started < 5.0
        finally:
            await other.close()
        assert len(await b.fetch(W1, ["default"], 1, LONG_LEASE)) == 1
        started = time.monotonic()
        await b.wait_for_work(["default"], 0.1)  # nothing new: it waits out its timeout
        assert time.monotonic() - started >= 0.09

    run(store, scenario)


# -- complete ----------------------------------------------------------------------------------


def test_complete_stores_result_and_is_idempotent(store: Store) -> None:
    job = make_job({"task": "t", "inputs": [1, 2]})

    async def scenario(b: Broker) -> None:
        await submit_ok(b, job)
        first, _second = await b.fetch(W1, ["default"], 2, LONG_LEASE)
        assert await b.complete(first.id, W1, b'"one"') == "ok"
        assert await b.complete(first.id, W1, b'"other"') == "duplicate"
        assert await b.complete(first.id, W2, b'"third"') == "duplicate"
        assert await b.results(job.id, 0, 2) == [b'"one"', None]
        record = await job_of(b, job.id)
        assert counts(record)["succeeded"] == 1
        assert counts(record)["running"] == 1
        assert record["state"] == "running"

    run(store, scenario)


def test_last_complete_sets_job_succeeded(store: Store) -> None:
    job = make_job({"task": "t", "inputs": [1, 2]})

    async def scenario(b: Broker) -> None:
        await b.register_worker(W1, {"name": "w1"}, {})
        await b.register_worker(W2, {"name": "w2"}, {})
        await submit_ok(b, job)
        for message in await b.fetch(W1, ["default"], 2, LONG_LEASE):
            assert await b.complete(message.id, W1, payload_of(message)) == "ok"
        record = await job_of(b, job.id)
        assert record["state"] == "succeeded"
        assert int(record["finished_at"]) >= int(record["started_at"]) >= int(record["created_at"])
        assert counts(record)["succeeded"] == 2
        assert counts(record)["running"] == 0
        # a late result for a finished job is refused
        assert await b.complete(f"{job.id}:0", W2, b"9") == "stale"
        assert await b.results(job.id, 0, 2) == [b"1", b"2"]
        assert await running_per_worker(b) == {"w1": 0, "w2": 0}

    run(store, scenario)


def test_results_are_returned_in_index_order(store: Store) -> None:
    job = make_job({"task": "t", "inputs": list(range(5))})

    async def scenario(b: Broker) -> None:
        await submit_ok(b, job)
        got = await b.fetch(W1, ["default"], 5, LONG_LEASE)
        for message in reversed(got):
            await b.complete(message.id, W1, f'"r{message.index}"'.encode())
        assert await b.results(job.id, 0, 5) == [b'"r0"', b'"r1"', b'"r2"', b'"r3"', b'"r4"']
        assert await b.results(job.id, 2, 4) == [b'"r2"', b'"r3"']
        assert await b.results(job.id, 4, 7) == [b'"r4"', None, None]
        assert await b.results(job.id, 3, 3) == []
        assert await b.results("0" * 32, 0, 2) == [None, None]

    run(store, scenario)


def test_complete_many_stores_a_batch_and_hands_out_the_next_tasks(store: Store) -> None:
    job = make_job({"task": "t", "inputs": [1, 2, 3, 4]})

    async def scenario(b: Broker) -> None:
        await submit_ok(b, job)
        first, second = await b.fetch(W1, ["default"], 2, LONG_LEASE)
        done = [(first.id, b"10"), (second.id, b"20"), (first.id, b"11")]
        statuses, nxt = await b.complete_many(W1, done, 1, ["default"], LONG_LEASE)
        assert statuses == ["ok", "ok", "duplicate"], "in order; the first success wins"
        assert indexes(nxt) == ["2"]
        assert await b.results(job.id, 0, 2) == [b"10", b"20"]
        statuses, nxt = await b.complete_many(W1, [(nxt[0].id, b"30")], 0, ["default"], LONG_LEASE)
        assert (statuses, nxt) == (["ok"], [])
        statuses, nxt = await b.complete_many(W1, [], 5, ["default"], LONG_LEASE)
        assert (statuses, indexes(nxt)) == ([], ["3"])

    run(store, scenario)


def test_reduce_task_is_enqueued_after_the_last_map_task(store: Store) -> None:
    job = make_job({"task": "app.square", "inputs": [2, 3], "reduce": "app.sum"})

    async def scenario(b: Broker) -> None:
        await submit_ok(b, job)
        first, second = await b.fetch(W1, ["default"], 5, LONG_LEASE)
        await b.complete(first.id, W1, b"4")
        assert await b.fetch(W1, ["default"], 5, LONG_LEASE) == []  # no reduce yet
        await b.complete(second.id, W1, b"9")
        record = await job_of(b, job.id)
        assert record["state"] == "running"
        (reduce,) = await b.fetch(W2, ["default"], 5, LONG_LEASE)
        assert reduce.id == f"{job.id}:r"
        assert reduce.index == "r"
        assert reduce.kind == "reduce"
        assert reduce.is_reduce
        assert reduce.task == "app.sum"
        assert payload_of(reduce) == b""
        assert reduce.attempt == 1
        assert await b.complete(reduce.id, W2, b"13") == "ok"
        assert (await job_of(b, job.id))["state"] == "succeeded"
        assert await b.reduce_result(job.id) == b"13"
        assert await b.results(job.id, 0, 2) == [b"4", b"9"]

    run(store, scenario)


# -- fail and retry ----------------------------------------------------------------------------


def test_fail_with_retry_schedules_it_and_promote_due_requeues(store: Store) -> None:
    job = make_job({"task": "t", "inputs": [1], "retries": 2})
    error = {"type": "ValueError", "message": "flaky", "attempt": 1}

    async def scenario(b: Broker) -> None:
        await submit_ok(b, job)
        (message,) = await b.fetch(W1, ["default"], 1, LONG_LEASE)
        assert await b.fail(message.id, W1, error, 0.05) == "retry"
        record = await job_of(b, job.id)
        assert counts(record)["retrying"] == 1
        assert counts(record)["running"] == 0
        assert record["state"] == "running"
        assert orjson.loads((await b.errors(job.id))["0"]) == error
        assert await b.depth("default") == 0  # waiting in the delayed set, not the queue
        assert (await task_rows(b, job.id))[0]["state"] == "retrying"
        await eventually(b.promote_due, "the retry to become due and be promoted")
        assert counts(await job_of(b, job.id))["queued"] == 1
        assert (await task_rows(b, job.id))[0]["state"] == "queued"
        assert await b.depth("default") == 1
        (again,) = await b.fetch(W1, ["default"], 1, LONG_LEASE)
        assert again.id == message.id
        assert again.attempt == 2
        assert await b.complete(again.id, W1, b"1") == "ok"
        assert (await job_of(b, job.id))["state"] == "succeeded"
        assert orjson.loads((await b.errors(job.id))["0"]) == error  # the last error stays

    run(store, scenario)


def test_retry_is_not_promoted_before_its_delay(store: Store) -> None:
    job = make_job({"task": "t", "inputs": [1], "retries": 1})

    async def scenario(b: Broker) -> None:
        await submit_ok(b, job)
        (message,) = await b.fetch(W1, ["default"], 1, LONG_LEASE)
        assert await b.fail(message.id, W1, {"type": "E"}, 600.0) == "retry"
        assert await b.promote_due() == 0
        assert await b.fetch(W1, ["default"], 1, LONG_LEASE) == []

    run(store, scenario)


def test_fail_without_retry_fails_the_job_with_its_error(store: Store) -> None:
    job = make_job({"task": "t", "inputs": [1, 2, 3]})
    error = {"type": "KeyError", "message": "'x'", "attempt": 1, "traceback": "tb"}

    async def scenario(b: Broker) -> None:
        await submit_ok(b, job)
        (message,) = await b.fetch(W1, ["default"], 1, LONG_LEASE)
        assert await b.fail(message.id, W1, error, None) == "failed"
        record = await job_of(b, job.id)
        assert record["state"] == "failed"
        dead_letter = f"{job.id}:0"
        assert orjson.loads(record["error"]) == {
            "task": "0",
            "dead_letter": dead_letter,
            "error": error,
        }
        assert counts(record)["failed"] == 1
        assert counts(record)["cancelled"] == 2  # the queued rest was dropped
        total, entries = await b.dlq.page(10, 0)
        assert total == 1
        assert entries[0]["id"] == dead_letter
        assert entries[0]["state"] == "failed"
        assert entries[0]["error"] == error
        assert counts(record)["queued"] == 0
        assert await b.depth("default") == 0
        assert await b.fetch(W1, ["default"], 5, LONG_LEASE) == []

    run(store, scenario)


def test_fail_by_a_worker_without_the_lease_is_stale(store: Store) -> None:
    job = make_job({"task": "t", "inputs": [1]})

    async def scenario(b: Broker) -> None:
        await submit_ok(b, job)
        (message,) = await b.fetch(W1, ["default"], 1, LONG_LEASE)
        assert await b.fail(message.id, W2, {"type": "E"}, None) == "stale"
        assert await b.fail(f"{job.id}:9", W1, {"type": "E"}, None) == "stale"
        assert (await job_of(b, job.id))["state"] == "running"

    run(store, scenario)


# -- leases ------------------------------------------------------------------------------------


def test_renew_extends_the_lease(store: Store) -> None:
    job = make_job({"task": "t", "inputs": [1, 2]})

    async def scenario(b: Broker) -> None:
        await b.register_worker(W1, {"name": "w1"}, {})
        await submit_ok(b, job)
        kept, control = await b.fetch(W1, ["default"], 2, 0.05)
        assert await b.renew(W1, [kept.id], LONG_LEASE) == []
        # the control task's lease of 50 ms expires; the renewed one does not
        assert await eventually(lambda: b.reclaim_expired(5), "the control lease to expire") == 1
        assert [(t["index"], t["state"]) for t in await task_rows(b, job.id)] == [
            ("0", "running"),
            ("1", "queued"),
        ]
        assert control.index == "1"
        (w,) = await b.workers()
        assert 0 <= w["last_seen_s"] < 5 and w["running"] == 1

    run(store, scenario)


def test_renew_returns_lost_ids_for_a_cancelled_job(store: Store) -> None:
    job = make_job({"task": "t", "inputs": [1, 2]})

    async def scenario(b: Broker) -> None:
        await b.register_worker(W1, {"name": "w1"}, {})
        await submit_ok(b, job)
        got = await b.fetch(W1, ["default"], 2, LONG_LEASE)
        ids = [m.id for m in got]
        assert await b.cancel(job.id) == "ok"
        assert await running_per_worker(b) == {"w1": 2}  # until its next heartbeat
        assert sorted(await b.renew(W1, ids, LONG_LEASE)) == sorted(ids)
        assert await running_per_worker(b) == {"w1": 0}

    run(store, scenario)


def test_renew_reports_a_task_leased_to_another_worker_as_lost(store: Store) -> None:
    job = make_job({"task": "t", "inputs": [1]})

    async def scenario(b: Broker) -> None:
        await submit_ok(b, job)
        (message,) = await b.fetch(W1, ["default"], 1, LONG_LEASE)
        assert await b.renew(W2, [message.id], LONG_LEASE) == [message.id]
        assert await b.renew(W1, [message.id], LONG_LEASE) == []  # W1 still owns it

    run(store, scenario)


def test_release_puts_tasks_back_at_the_front_without_counting(store: Store) -> None:
    job = make_job({"task": "t", "inputs": [1, 2, 3]})

    async def scenario(b: Broker) -> None:
        await submit_ok(b, job)
        _first, second = await b.fetch(W1, ["default"], 2, LONG_LEASE)
        assert await b.release(W2, [second.id]) == 0  # not W2's to release
        assert await b.release(W1, [second.id]) == 1
        record = await job_of(b, job.id)
        assert counts(record)["queued"] == 2
        assert counts(record)["running"] == 1
        if store.requeues_at_front:
            (again,) = await b.fetch(W2, ["default"], 1, LONG_LEASE)
        else:
            (_third, again) = await b.fetch(W2, ["default"], 2, LONG_LEASE)
        assert again.id == second.id  # ahead of task 2, which was queued all along
        assert again.attempt == 1
        assert await b.release(W1, []) == 0
        events = await b.events(job.id, "0", None)
        released = [f for _i, f in events if f["type"] == "task.queued"]
        assert released == [
            {"type": "task.queued", "task": "1", "reason": "released", "worker": W1}
        ]

    run(store, scenario)


def test_reclaim_expired_requeues_then_fails_after_max_redeliveries(store: Store) -> None:
    job = make_job({"task": "t", "inputs": [1, 2]})

    async def scenario(b: Broker) -> None:
        await submit_ok(b, job)
        (message,) = await b.fetch(W1, ["default"], 1, 0.05)
        await eventually(lambda: b.reclaim_expired(1), "the first lease to expire")
        record = await job_of(b, job.id)
        assert counts(record)["queued"] == 2
        assert counts(record)["running"] == 0
        if store.requeues_at_front:
            (again,) = await b.fetch(W2, ["default"], 1, 0.05)
        else:
            (_second, again) = await b.fetch(W2, ["default"], 2, 0.05)
        assert again.id == message.id  # redelivered at the front
        assert again.attempt == 2
        await eventually(lambda: b.reclaim_expired(1), "the second lease to expire")
        record = await job_of(b, job.id)
        assert record["state"] == "failed"
        error = orjson.loads(record["error"])
        assert error["task"] == "0"
        assert error["error"]["type"] == "WorkerLost"
        assert error["error"]["attempt"] == 2
        assert "max-redeliveries=1" in error["error"]["message"]
        assert counts(record)["dead"] == 1
        entry = await b.dlq.entry(message.id)
        assert entry is not None
        assert entry["state"] == "dead"
        assert entry["error"]["type"] == "WorkerLost"
        assert entry["payload"] == "1"
        # the worker that lost the lease can no longer complete it
        assert await b.complete(again.id, W2, b"1") == "stale"
        kinds = [(f["type"], f.get("reason")) for _i, f in await b.events(job.id, "0", None)]
        assert ("task.queued", "redelivered") in kinds
        assert kinds[-2:] == [("task.dead", None), ("job.failed", None)]

    run(store, scenario)


def test_reclaim_leaves_live_leases_alone(store: Store) -> None:
    job = make_job({"task": "t", "inputs": [1]})

    async def scenario(b: Broker) -> None:
        await submit_ok(b, job)
        await b.fetch(W1, ["default"], 1, LONG_LEASE)
        assert await b.reclaim_expired(0) == 0
        assert counts(await job_of(b, job.id))["running"] == 1

    run(store, scenario)


# -- cancel and timeouts -----------------------------------------------------------------------


def test_cancel_drops_queued_tasks_and_reports_state(store: Store) -> None:
    job = make_job({"task": "t", "inputs": [1, 2, 3]})

    async def scenario(b: Broker) -> None:
        await submit_ok(b, job)
        await b.fetch(W1, ["default"], 1, LONG_LEASE)
        assert await b.cancel(job.id) == "ok"
        record = await job_of(b, job.id)
        assert record["state"] == "cancelled"
        assert "was cancelled on request" in orjson.loads(record["error"])["message"]
        assert counts(record)["cancelled"] == 3
        assert counts(record)["queued"] == counts(record)["running"] == 0
        assert await b.depth("default") == 0
        assert await b.fetch(W1, ["default"], 5, LONG_LEASE) == []
        assert await b.cancel(job.id) == "cancelled"
        assert await b.cancel("no-such-job") == "missing"

    run(store, scenario)


def test_cancel_of_a_finished_job_returns_its_state(store: Store) -> None:
    job = make_job({"task": "t", "inputs": [1]})

    async def scenario(b: Broker) -> None:
        await submit_ok(b, job)
        (message,) = await b.fetch(W1, ["default"], 1, LONG_LEASE)
        await b.complete(message.id, W1, b"1")
        assert await b.cancel(job.id) == "succeeded"
        assert (await job_of(b, job.id))["state"] == "succeeded"

    run(store, scenario)


def test_expire_jobs_times_out_a_job_past_its_job_timeout(store: Store) -> None:
    late = make_job({"task": "t", "inputs": [1, 2], "job-timeout": "50ms"})
    patient = make_job({"task": "t", "inputs": [3], "job-timeout": "1h"})

    async def scenario(b: Broker) -> None:
        await submit_ok(b, late)
        await submit_ok(b, patient)
        await eventually(b.expire_jobs, "the job timeout to pass")
        record = await job_of(b, late.id)
        assert record["state"] == "timed_out"
        message = orjson.loads(record["error"])["message"]
        assert message == f"Job timeout: job {late.id} ran longer than its job-timeout of 0.05s"
        assert counts(record)["cancelled"] == 2
        assert (await job_of(b, patient.id))["state"] == "pending"
        assert [m.job_id for m in await b.fetch(W1, ["default"], 5, LONG_LEASE)] == [patient.id]
        assert await b.expire_jobs() == 0

    run(store, scenario)


# -- idempotency, bounds, expiry ---------------------------------------------------------------


def test_same_idempotency_key_and_definition_is_a_duplicate(store: Store) -> None:
    definition = {"task": "t", "inputs": [1, 2], "idempotency-key": "order-42"}
    first, again = make_job(definition), make_job(definition)
    assert first.id != again.id

    async def scenario(b: Broker) -> None:
        await submit_ok(b, first)
        outcome = await b.submit(again)
        assert (outcome.status, outcome.job_id) == ("duplicate", first.id)
        assert await b.depth("default") == 2  # nothing enqueued twice
        assert await b.job(again.id) is None

    run(store, scenario)


def test_same_idempotency_key_and_other_definition_is_a_conflict(store: Store) -> None:
    first = make_job({"task": "t", "inputs": [1, 2], "idempotency-key": "order-42"})
    other = make_job({"task": "t", "inputs": [1, 3], "idempotency-key": "order-42"})

    async def scenario(b: Broker) -> None:
        await submit_ok(b, first)
        outcome = await b.submit(other)
        assert (outcome.status, outcome.job_id) == ("conflict", first.id)
        assert await b.job(other.id) is None
        assert await b.depth("default") == 2

    run(store, scenario)


def test_submit_beyond_max_queue_length_is_full(store: Store) -> None:
    small = make_job({"task": "t", "inputs": [1, 2]}, max_queue_length=3)
    too_big = make_job({"task": "t", "inputs": [1, 2]}, max_queue_length=3)
    huge = make_job({"task": "t", "inputs": [1, 2, 3, 4]}, max_queue_length=3)

    async def scenario(b: Broker) -> None:
        outcome = await b.submit(huge)
        assert (outcome.status, outcome.job_id, outcome.depth) == ("full", huge.id, 0)
        await submit_ok(b, small)
        outcome = await b.submit(too_big)
        assert (outcome.status, outcome.depth) == ("full", 2)
        assert await b.job(too_big.id) is None
        assert await b.job(huge.id) is None
        assert await b.depth("default") == 2
        assert [row["id"] for row in await b.jobs(10, 0)] == [small.id]

    run(store, scenario)


def test_a_finished_job_is_gone_after_its_result_ttl(store: Store) -> None:
    definition = {"task": "t", "inputs": [1], "result-ttl": "200ms", "idempotency-key": "k"}
    job = make_job(definition)

    async def scenario(b: Broker) -> None:
        await submit_ok(b, job)
        (message,) = await b.fetch(W1, ["default"], 1, LONG_LEASE)
        await b.complete(message.id, W1, b"1")
        assert (await job_of(b, job.id))["state"] == "succeeded"  # kept while the TTL runs
        assert (await b.submit(make_job(definition))).status == "duplicate"

        async def gone() -> bool:
            return await b.job(job.id) is None

        await eventually(gone, "the job record to expire")
        assert await b.results(job.id, 0, 1) == [None]
        assert await b.events(job.id, "0", None) == []
        assert job.id not in [row["id"] for row in await b.jobs(10, 0)]
        assert await b.errors(job.id) == {}
        assert await b.views.timeline(job.id, 10) == []
        again = make_job(definition)
        assert await submit_ok(b, again) == again.id  # the idempotency key expired with it

    run(store, scenario)


def test_job_level_events_record_the_lifecycle(store: Store) -> None:
    job = make_job({"task": "t", "inputs": [1]})

    async def scenario(b: Broker) -> None:
        await submit_ok(b, job)
        (message,) = await b.fetch(W1, ["default"], 1, LONG_LEASE)
        await b.complete(message.id, W1, b"1")
        job_events = await b.events(job.id, "0", None, job_level=True)
        assert [f["type"] for _id, f in job_events] == [
            "job.submitted",
            "job.started",
            "job.succeeded",
        ]
        all_events = await b.events(job.id, "0", None)
        assert [f["type"] for _id, f in all_events] == [
            "job.submitted",
            "job.started",
            "task.started",
            "task.succeeded",
            "job.succeeded",
        ]
        assert all_events[2][1] == {
            "type": "task.started",
            "task": "0",
            "attempt": "1",
            "worker": W1,
            "wait_ms": all_events[2][1]["wait_ms"],
        }
        assert all_events[-1][1] == {"type": "job.succeeded", "state": "succeeded"}
        last_id = all_events[-1][0]
        assert await b.events(job.id, last_id, None) == []
        assert await b.events(job.id, all_events[1][0], None) == all_events[2:]
        ids = [i for i, _f in all_events]
        assert ids == sorted(ids, key=lambda i: tuple(int(p) for p in i.split("-")))

    run(store, scenario)


def test_a_batch_of_tasks_gives_one_event_per_task_and_resumes_after_any(store: Store) -> None:
    """A fetch and a store of several tasks at once (Redis writes each as one stream entry):
    one task.started and one task.succeeded per task with its own fields, ids in order, and
    reading after any event's id gives exactly the events after it."""
    job = make_job({"task": "t", "inputs": [1, 2, 3]})

    async def scenario(b: Broker) -> None:
        await submit_ok(b, job)
        got = await b.fetch(W1, ["default"], 3, LONG_LEASE)
        done = [(m.id, b"1") for m in got]
        statuses, _ = await b.complete_many(W1, done, 0, ["default"], LONG_LEASE)
        assert statuses == ["ok"] * 3
        events = await b.events(job.id, "0", None)
        task_events = [f for _i, f in events if f["type"].startswith("task.")]
        assert [(f["type"], f["task"], f["attempt"], f["worker"]) for f in task_events] == [
            *[("task.started", str(i), "1", W1) for i in range(3)],
            *[("task.succeeded", str(i), "1", W1) for i in range(3)],
        ]
        for f in task_events:
            timing = "wait_ms" if f["type"] == "task.started" else "duration_ms"
            assert set(f) == {"type", "task", "attempt", "worker", timing}
            assert f[timing].isdigit()
        ids = [i for i, _f in events]
        assert len(set(ids)) == len(ids)
        assert ids == sorted(ids, key=lambda i: tuple(int(p) for p in i.split("-")))
        for cut, (event_id, _f) in enumerate(events):
            assert await b.events(job.id, event_id, None) == events[cut + 1 :]
        assert await b.views.timeline(job.id, 4) == events[-4:]
        assert await b.views.timeline(job.id, 100) == events

    run(store, scenario)


def test_events_wait_for_the_next_event_of_the_job(store: Store) -> None:
    job = make_job({"task": "t", "inputs": [1]})

    async def scenario(b: Broker) -> None:
        await submit_ok(b, job)
        ((last, _),) = await b.events(job.id, "0", None)
        assert await b.events(job.id, last, 50) == []  # nothing within 50 ms
        other = store.open()
        try:
            waiting = asyncio.ensure_future(b.events(job.id, last, 20_000))
            done, _ = await asyncio.wait({waiting}, timeout=0.05)
            assert not done, "no new event yet: the reader waits"
            await other.fetch(W1, ["default"], 1, LONG_LEASE)
            got = await asyncio.wait_for(waiting, 10.0)
        finally:
            await other.close()
        assert [f["type"] for _i, f in got] == ["job.started", "task.started"]

    run(store, scenario)


def test_a_job_stream_keeps_about_its_newest_10000_events(store: Store) -> None:
    """Past the bound, the oldest events of a job go (inline on Redis, in the scheduler tick on
    SQLite); its job-level stream still has every job event."""
    n = 5600  # 2 events per task, and 3 of the job: 11,203 in all
    job = make_job({"task": "t", "inputs": list(range(n))})

    async def scenario(b: Broker) -> None:
        await submit_ok(b, job)
        while got := await b.fetch(W1, ["default"], 500, LONG_LEASE):
            for m in got:
                await b.complete(m.id, W1, b"1")
        await b.prune_index()
        events, after = [], "0"
        while page := await b.events(job.id, after, None):
            events += page
            after = page[-1][0]
        assert 10_000 <= len(events) < 11_000
        assert events[-1][1]["type"] == "job.succeeded"
        assert await b.views.timeline(job.id, 3) == events[-3:]
        types = [f["type"] for _i, f in await b.events(job.id, "0", None, job_level=True)]
        assert types == ["job.submitted", "job.started", "job.succeeded"]

    run(store, scenario)


# -- workers and the task catalog ---------------------------------------------------------------


def test_workers_registry_register_list_and_deregister(store: Store) -> None:
    job = make_job({"task": "t", "inputs": [1, 2]})

    async def scenario(b: Broker) -> None:
        await b.register_worker(W1, {"name": "alpha", "concurrency": 2}, {})
        await b.register_worker(W2, {"name": "beta", "concurrency": 1}, {})
        await submit_ok(b, job)
        await b.fetch(W2, ["default"], 2, LONG_LEASE)
        workers = await b.workers()
        assert [w["name"] for w in workers] == ["alpha", "beta"]
        assert [w["running"] for w in workers] == [0, 2]
        assert workers[0]["concurrency"] == 2
        assert all(0 <= w["last_seen_s"] < 60 for w in workers)
        assert all(w["state"] == "alive" for w in workers)
        await b.deregister_worker(W1)
        assert [w["name"] for w in await b.workers()] == ["beta"]

    run(store, scenario)


def test_task_catalog_round_trips_task_defaults(store: Store) -> None:
    catalog = {
        "app.a": TaskDefaults(queue="gpu", priority=3, retries=2, backoff=0.5, timeout=9.0),
        "app.b": TaskDefaults(),
    }

    async def scenario(b: Broker) -> None:
        assert await b.task_catalog() == {}
        await b.register_worker(W1, {"name": "w"}, catalog)
        assert await b.task_catalog() == catalog
        await b.deregister_worker(W1)
        assert await b.task_catalog() == catalog  # tasks stay known to plan new jobs

    run(store, scenario)


def test_task_defaults_from_catalog_shape_the_planned_job(store: Store) -> None:
    async def scenario(b: Broker) -> None:
        await b.register_worker(W1, {"name": "w"}, {"app.a": TaskDefaults(queue="gpu", retries=5)})
        spec = parse_job({"task": "app.a", "inputs": [1]})
        job = plan(spec, await b.task_catalog(), MasterSettings(), KEY)
        await submit_ok(b, job)
        (message,) = await b.fetch(W1, ["gpu"], 1, LONG_LEASE)
        assert message.retries == 5

    run(store, scenario)


def test_shared_values_are_created_once(store: Store) -> None:
    async def scenario(b: Broker) -> None:
        assert await b.shared_value("token", "first") == ("first", True)
        assert await b.shared_value("token", "second") == ("first", False)
        assert await b.shared_value("secret", "s") == ("s", True)
        await b.ping()
        assert abs(await b.server_time() - time.time()) < 5
        assert isinstance(await b.durability_warnings(), list)

    run(store, scenario)


# -- the dead-letter queue ---------------------------------------------------------------------


def test_dead_letter_fails_the_job_and_requeue_reopens_it_whole(store: Store) -> None:
    job = make_job({"task": "t", "inputs": [1, 2, 3, 4], "retries": 2})

    async def scenario(b: Broker) -> None:
        await submit_ok(b, job)
        first, second = await b.fetch(W1, ["default"], 2, LONG_LEASE)
        assert await b.complete(first.id, W1, b"1") == "ok"
        assert await b.dead_letter(second.id, W2, DEAD) == "stale"  # W2 holds no lease
        assert await b.dead_letter(second.id, W1, DEAD) == "dead"
        record = await job_of(b, job.id)
        assert record["state"] == "failed"
        assert counts(record) == {
            "queued": 0,
            "running": 0,
            "retrying": 0,
            "succeeded": 1,
            "failed": 0,
            "dead": 1,
            "cancelled": 2,
        }
        entry = await b.dlq.entry(second.id)
        assert entry is not None
        assert (entry["job"], entry["task"], entry["name"], entry["queue"]) == (
            job.id,
            "1",
            "t",
            "default",
        )
        assert entry["attempt"] == 1
        assert entry["error"] == DEAD
        assert entry["job_state"] == "failed"
        assert entry["payload"] == "2"
        assert len(entry["signature"]) == 32
        assert abs(entry["at"] - time.time()) < 60  # epoch seconds

        assert await b.dlq.requeue(second.id) == ("ok", job.id, 3)
        assert await b.dlq.page(10, 0) == (0, [])
        assert await b.dlq.requeue(second.id) == ("missing", "", 0)
        record = await job_of(b, job.id)
        assert record["state"] == "running"
        assert "error" not in record and "finished_at" not in record
        assert counts(record)["queued"] == 3 and counts(record)["dead"] == 0
        assert counts(record)["succeeded"] == 1
        again = await b.fetch(W2, ["default"], 10, LONG_LEASE)
        assert sorted(m.index for m in again) == ["1", "2", "3"]
        assert {m.index: m.attempt for m in again}["1"] == 1  # a fresh count for the dead task
        for m in again:
            assert await b.complete(m.id, W2, payload_of(m)) == "ok"
        assert (await job_of(b, job.id))["state"] == "succeeded"
        assert await b.results(job.id, 0, 4) == [b"1", b"2", b"3", b"4"]
        types = [f["type"] for _i, f in await b.events(job.id, "0", None, job_level=True)]
        assert types == [
            "job.submitted",
            "job.started",
            "job.failed",
            "job.requeued",
            "job.succeeded",
        ]

    run(store, scenario)


def test_requeue_makes_a_failed_job_permanent_again(store: Store) -> None:
    job = make_job({"task": "t", "inputs": [1], "result-ttl": "300ms"})

    async def scenario(b: Broker) -> None:
        await submit_ok(b, job)
        (message,) = await b.fetch(W1, ["default"], 1, LONG_LEASE)
        assert await b.dead_letter(message.id, W1, DEAD) == "dead"
        assert await b.dlq.requeue(message.id) == ("ok", job.id, 1)  # well within its TTL
        await later_than(b, 0.4)
        assert (await job_of(b, job.id))["state"] == "running"  # no longer expiring
        (again,) = await b.fetch(W1, ["default"], 1, LONG_LEASE)
        assert await b.complete(again.id, W1, b"1") == "ok"

        async def gone() -> bool:
            return await b.job(job.id) is None

        await eventually(gone, "the job, finished again, to expire")

    run(store, scenario)


def test_requeue_refuses_jobs_that_cannot_run_again(store: Store) -> None:
    gone = make_job({"task": "t", "inputs": [1], "result-ttl": "0s"})
    reopened = make_job({"task": "t", "inputs": [1, 2]})

    async def scenario(b: Broker) -> None:
        await submit_ok(b, gone)
        await submit_ok(b, reopened)
        one, two, _ = await b.fetch(W1, ["default"], 3, LONG_LEASE)
        await b.dead_letter(one.id, W1, DEAD)  # the job fails, and its record expires at once
        await b.dead_letter(two.id, W1, DEAD)
        assert await b.dlq.requeue(one.id) == ("expired", one.job_id, 0)
        entry = await b.dlq.entry(one.id)
        assert entry is not None and entry["job_state"] == "expired"
        assert entry["payload"] is None
        # a failed job that was then reopened and cancelled is no longer 'failed'
        assert await b.dlq.requeue(two.id) == ("ok", two.job_id, 2)
        assert await b.cancel(two.job_id) == "ok"
        assert await b.dlq.requeue("", two.job_id) == ("cancelled", two.job_id, 0)
        assert await b.dlq.requeue("no-such-entry") == ("missing", "", 0)

    run(store, scenario)


def test_a_dead_reduce_step_is_requeued_alone(store: Store) -> None:
    job = make_job({"task": "t", "inputs": [1, 2], "reduce": "app.sum"})

    async def scenario(b: Broker) -> None:
        await submit_ok(b, job)
        for m in await b.fetch(W1, ["default"], 2, LONG_LEASE):
            await b.complete(m.id, W1, payload_of(m))
        (reduce,) = await b.fetch(W1, ["default"], 1, LONG_LEASE)
        await b.dead_letter(reduce.id, W1, DEAD)
        entry = await b.dlq.entry(reduce.id)
        assert entry is not None and entry["name"] == "app.sum" and "payload" not in entry
        assert await b.dlq.requeue(reduce.id) == ("ok", job.id, 1)
        (again,) = await b.fetch(W2, ["default"], 5, LONG_LEASE)
        assert again.id == reduce.id
        assert payload_of(again) == b""
        assert await b.complete(again.id, W2, b"3") == "ok"
        assert (await job_of(b, job.id))["state"] == "succeeded"

    run(store, scenario)


def test_the_dead_letter_queue_is_listed_newest_first_paged_and_purged(store: Store) -> None:
    jobs = [make_job({"task": "t", "inputs": [i]}) for i in range(3)]

    async def scenario(b: Broker) -> None:
        ids = []
        for job in jobs:
            await submit_ok(b, job)
            (m,) = await b.fetch(W1, ["default"], 1, LONG_LEASE)
            await b.fail(m.id, W1, {"type": "ValueError", "message": "no"}, None)
            ids.append(m.id)
        total, page = await b.dlq.page(2, 0)
        assert total == 3
        assert [e["id"] for e in page] == [ids[2], ids[1]]
        assert [e["id"] for e in (await b.dlq.page(2, 2))[1]] == [ids[0]]
        assert (await b.dlq.page(0, 0)) == (3, [])
        assert all(e["state"] == "failed" for e in page)
        assert await b.dlq.ids() == ids  # oldest first
        assert await b.dlq.entry("no-such-entry") is None
        assert await b.dlq.purge([ids[0]]) == 1
        assert await b.dlq.purge([ids[0]]) == 0
        assert await b.dlq.purge([]) == 0
        assert await b.dlq.purge(None) == 2
        assert await b.dlq.page(10, 0) == (0, [])
        assert (await b.views.overview(60))["dead_letters"] == 0

    run(store, scenario)


def test_prune_index_forgets_expired_jobs(store: Store) -> None:
    keep = [make_job({"task": "t", "inputs": [i]}) for i in range(3)]
    expire = [make_job({"task": "t", "inputs": [i], "result-ttl": "0s"}) for i in range(2)]

    async def scenario(b: Broker) -> None:
        for job in (*keep, *expire):
            await submit_ok(b, job)
        for job in expire:
            assert await b.cancel(job.id) == "ok"
        assert await b.prune_index() == 2
        assert await b.prune_index() == 0
        assert sorted(row["id"] for row in await b.jobs(10, 0)) == sorted(j.id for j in keep)

    run(store, scenario)


# -- task logs ---------------------------------------------------------------------------------


def test_task_logs_are_stored_per_attempt_bounded_and_paged(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_logs, "MAX_LOGS", 4)
    job = make_job({"task": "t", "inputs": [1, 2, 3]})

    async def scenario(b: Broker) -> None:
        assert await b.logs.store("0123feed", "0", 1, {"text": "x"}) == "missing"
        await submit_ok(b, job)
        log = b.logs.store
        assert await log(job.id, "1", 1, {"text": "one\n"}) == "ok"
        assert await log(job.id, "0", 2, {"text": "zero again\n", "truncated": True}) == "ok"
        assert await log(job.id, "0", 1, {"text": "zero\n"}) == "ok"
        assert await log(job.id, "r", 1, {"text": "reduce\n"}) == "ok"
        assert await log(job.id, "2", 1, {"text": "two\n"}) == "full"  # over MAX_LOGS
        assert await log(job.id, "1", 1, {"text": "one, replaced\n"}) == "ok"
        page = await b.logs.of_job(job.id, 0, 100)
        assert [(e["task"], e["attempt"], e["text"], e["truncated"]) for e in page.logs] == [
            ("0", 1, "zero\n", False),
            ("0", 2, "zero again\n", True),
            ("1", 1, "one, replaced\n", False),
            ("r", 1, "reduce\n", False),
        ]
        assert (page.next, page.dropped) == (None, 1)
        first = await b.logs.of_job(job.id, 0, 2)
        assert [e["task"] for e in first.logs] == ["0", "0", "1"] and first.next == 2
        rest = await b.logs.of_job(job.id, 2, 2)
        assert [e["task"] for e in rest.logs] == ["r"] and rest.next is None
        one = await b.logs.of_task(job.id, "0")
        assert [e["attempt"] for e in one.logs] == [1, 2] and one.next is None
        assert (await b.logs.of_task(job.id, "2")).logs == []
        assert (await b.logs.of_job("0" * 32, 0, 10)).logs == []

    run(store, scenario)


# -- the monitor's views: overview and counters ----------------------------------------------


def test_overview_counts_jobs_tasks_queues_and_dead_letters(store: Store) -> None:
    async def scenario(b: Broker) -> None:
        await submit(b, {"task": "t", "inputs": [1, 2, 3]})
        await complete_all(b, "default")
        await submit(b, {"task": "t", "inputs": [1], "retries": 1})
        await retry_then_succeed(b, "default")
        await submit(b, {"task": "t", "inputs": [1, 2], "queue": "bad"})
        await fail_next(b, "bad")
        await submit(b, {"task": "t", "inputs": [1, 2, 3, 4], "queue": "parked"})

        view = await b.views.overview(3600)
        assert view["jobs"] == {
            "submitted": 4,
            "succeeded": 2,
            "failed": 1,
            "cancelled": 0,
            "timed_out": 0,
            "active": 1,
        }
        assert view["tasks"] == {"succeeded": 4, "failed": 1, "dead": 0, "retried": 1}
        assert view["queues"] == [
            {"name": "bad", "depth": 0},
            {"name": "default", "depth": 0},
            {"name": "parked", "depth": 4},
        ]
        assert view["dead_letters"] == 1
        assert view["workers"] == {"alive": 0, "lost": 0, "busy": 0, "slots": 0}
        series = view["series"]
        assert len(series) == 3600 // SLOT_S
        assert all(s["t"] % SLOT_S == 0 for s in series)
        assert [b["t"] - a["t"] for a, b in itertools.pairwise(series)] == [SLOT_S] * 359
        assert sum(s["succeeded"] for s in series) == 4
        assert sum(s["failed"] for s in series) == 1
        # rates: over the current slot and the six before it (60 to 70 seconds)
        rates = view["rates"]
        assert round(4 / 70, 3) <= rates["succeeded_per_s"] <= round(4 / 60, 3)
        assert round(1 / 70, 3) <= rates["failed_per_s"] <= round(1 / 60, 3)
        snap = await b.views.snapshot()
        assert (snap.queues, snap.depths["parked"], snap.dead_letters) == (
            ["bad", "default", "parked"],
            4,
            1,
        )
        assert snap.unfinished == {"parked": {"queued": 4, "running": 0, "retrying": 0}}

    run(store, scenario)


async def outcomes_on_two_queues(b: Broker) -> None:
    """On ``qa``: 3 tasks succeed, one of them after a retry. On ``qb``: one task fails for
    good (its job fails), and one of another job is dead-lettered."""
    await submit(b, {"task": "t", "inputs": [1], "queue": "qa", "retries": 1})
    await retry_then_succeed(b, "qa")
    await submit(b, {"task": "t", "inputs": [1, 2], "queue": "qa"})
    assert await complete_all(b, "qa") == 2
    await submit(b, {"task": "t", "inputs": [1], "queue": "qb"})
    await fail_next(b, "qb")
    await submit(b, {"task": "t", "inputs": [1], "queue": "qb"})
    (message,) = await b.fetch(W1, ["qb"], 1, LONG_LEASE)
    assert await b.dead_letter(message.id, W1, {"type": "BadSignature"}) == "dead"


def test_stats_count_outcomes_starts_and_histograms_per_queue(store: Store) -> None:
    async def scenario(b: Broker) -> None:
        await outcomes_on_two_queues(b)
        stats = await b.views.stats()
        tasks = {k: v for k, v in stats.items() if k.startswith("tasks|")}
        assert tasks == {
            "tasks|qa|retried": 1,
            "tasks|qa|succeeded": 3,
            "tasks|qb|failed": 1,
            "tasks|qb|dead": 1,
        }
        jobs = {k: v for k, v in stats.items() if k.startswith("jobs|")}
        assert jobs == {"jobs|submitted": 4, "jobs|succeeded": 2, "jobs|failed": 2}

        def histogram(kind: str, queue: str) -> int:
            return sum(n for k, n in stats.items() if k.startswith(f"{kind}|{queue}|"))

        # one observation per attempt: its wait when it started (so the wait histogram's count
        # is the attempts started), its run time when it ended (succeeded, retried, failed or
        # dead-lettered alike)
        assert histogram("wait", "qa") == 4
        assert histogram("wait", "qb") == 2
        assert histogram("dur", "qa") == 4
        assert histogram("dur", "qb") == 2
        assert stats["dur_sum|qa"] >= 0 and stats["wait_sum|qa"] >= 0
        buckets = {k.rpartition("|")[2] for k in stats if k.startswith(("dur|", "wait|"))}
        assert buckets <= {*map(str, HISTOGRAM_BOUNDS_MS), "+Inf"}

    run(store, scenario)


def test_throughput_counts_successes_and_failures_per_slot_and_queue(store: Store) -> None:
    async def scenario(b: Broker) -> None:
        await outcomes_on_two_queues(b)
        now = await b.server_time()
        slots, queues = await b.views.throughput(120, 120)
        assert len(slots) == 120 // SLOT_S
        assert slots[-1]["t"] == int(now // SLOT_S) * SLOT_S
        assert sum(s["succeeded"] for s in slots) == 3
        assert sum(s["failed"] for s in slots) == 2  # failed and dead; a retry is neither

        assert queues == {
            "qa": {"succeeded": 3, "failed": 0},
            "qb": {"succeeded": 0, "failed": 2},
        }

    run(store, scenario)


# -- the monitor's views: the jobs page -----------------------------------------------------


async def newest_first(b: Broker, ids: list[str]) -> list[str]:
    """``ids`` in the jobs index order: created time, then id, descending."""
    created = {jid: int((await job_of(b, jid))["created_at"]) for jid in ids}
    return sorted(ids, key=lambda jid: (created[jid], jid), reverse=True)


async def all_pages(b: Broker, query: JobQuery, limit: int) -> list[str]:
    """Every job a query finds, following ``next`` from offset 0 to the end."""
    seen: list[str] = []
    offset: int | None = 0
    for _ in range(100):
        if offset is None:
            return seen
        rows, offset = await b.views.find_jobs(query, limit, offset)
        assert len(rows) <= limit
        seen += [row["id"] for row in rows]
    raise AssertionError("find_jobs never reached the end of the index")


def test_find_jobs_filters_by_state_name_time_and_id(store: Store) -> None:
    names = ["Alpha report", "beta REPORT", "gamma", "delta", "Epsilon Report", "zeta"]

    async def scenario(b: Broker) -> None:
        ids = []
        for name in names:
            ids.append(await submit(b, {"task": "t", "name": name, "inputs": [1]}))
            await next_millisecond(b)
        alpha, beta, gamma, delta, epsilon, zeta = ids
        for _ in (alpha, beta, gamma):  # FIFO: the three oldest jobs' tasks come first
            (message,) = await b.fetch(W1, ["default"], 1, LONG_LEASE)
            assert await b.complete(message.id, W1, b"1") == "ok"
        await fail_next(b, "default")  # delta
        views = b.views

        async def found(query: JobQuery, limit: int = 50) -> list[str]:
            rows, after = await views.find_jobs(query, limit, 0)
            assert after is None
            return [row["id"] for row in rows]

        assert await found(JobQuery()) == ids[::-1]
        assert await found(JobQuery(state="succeeded")) == [gamma, beta, alpha]
        assert await found(JobQuery(state="failed")) == [delta]
        assert await found(JobQuery(state="pending")) == [zeta, epsilon]
        assert await found(JobQuery(state="cancelled")) == []
        assert await found(JobQuery(name="report")) == [epsilon, beta, alpha]
        assert await found(JobQuery(name="REPORT", state="pending")) == [epsilon]
        assert await found(JobQuery(name="no such name")) == []

        created = [int((await job_of(b, jid))["created_at"]) for jid in ids]
        since, until = created[1], created[3]
        assert await found(JobQuery(since_ms=since)) == ids[1:][::-1]
        assert await found(JobQuery(until_ms=until)) == ids[:4][::-1]
        assert await found(JobQuery(since_ms=since, until_ms=until)) == [delta, gamma, beta]
        assert await found(JobQuery(since_ms=since, until_ms=until, state="succeeded")) == [
            gamma,
            beta,
        ]

        prefix6 = gamma[:6]
        assert await found(JobQuery(id_prefix=prefix6)) == [j for j in ids if j[:6] == prefix6]
        rows, after = await views.find_jobs(JobQuery(id_prefix=gamma), 50, 0)
        assert ([row["id"] for row in rows], after) == ([gamma], None)
        assert rows[0]["name"] == "gamma" and rows[0]["state"] == "succeeded"
        assert await found(JobQuery(id_prefix=gamma, state="failed")) == []
        assert await found(JobQuery(id_prefix="0" * 32)) == [j for j in ids if j == "0" * 32]

    run(store, scenario)


def test_find_jobs_pages_cover_every_job_exactly_once(store: Store) -> None:
    async def scenario(b: Broker) -> None:
        ids = [await submit(b, {"task": "t", "name": f"job {i}", "inputs": [1]}) for i in range(23)]
        for _ in range(9):
            (message,) = await b.fetch(W1, ["default"], 1, LONG_LEASE)
            assert await b.complete(message.id, W1, b"1") == "ok"
        order = await newest_first(b, ids)
        succeeded = await newest_first(b, ids[:9])

        rows, after = await b.views.find_jobs(JobQuery(), 5, 0)
        assert [row["id"] for row in rows] == order[:5]
        assert after == 5
        rows, after = await b.views.find_jobs(JobQuery(), 5, 20)
        assert ([row["id"] for row in rows], after) == (order[20:], None)

        for limit in (1, 5, 7, 23, 50):
            assert await all_pages(b, JobQuery(), limit) == order, limit
        for limit in (1, 2, 4, 9, 10):
            assert await all_pages(b, JobQuery(state="succeeded"), limit) == succeeded, limit
            assert await all_pages(b, JobQuery(state="pending"), limit) == [
                j for j in order if j not in succeeded
            ], limit

    run(store, scenario)


def test_find_jobs_scans_at_most_the_budget_per_call_then_continues(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within the budget of index entries only newer, cancelled jobs: the first call returns
    no row but where to continue, and the next one finds the old pending ones."""
    assert views_shape.SCAN_BUDGET == 10_000  # docs/monitor.md promises this number
    budget = 20
    monkeypatch.setattr(views_shape, "SCAN_BUDGET", budget)

    async def scenario(b: Broker) -> None:
        old = [await submit(b, {"task": "t", "name": f"old {i}", "inputs": [1]}) for i in range(3)]
        await next_millisecond(b)
        for i in range(budget + 5):
            assert await b.cancel(await submit(b, {"task": "t", "name": f"new {i}"})) == "ok"
        query = JobQuery(state="pending")
        rows, after = await b.views.find_jobs(query, 50, 0)
        assert (rows, after) == ([], budget)
        rows, after = await b.views.find_jobs(query, 50, budget)
        assert [row["id"] for row in rows] == await newest_first(b, old)
        assert after is None
        assert await all_pages(b, query, 2) == await newest_first(b, old)

    run(store, scenario)


# -- the monitor's views: one job -----------------------------------------------------------


def test_tasks_page_and_filter_a_running_job(store: Store) -> None:
    async def scenario(b: Broker) -> None:
        jid = await submit(b, {"task": "t", "inputs": list(range(10)), "retries": 1})
        got = await b.fetch(W1, ["default"], 6, LONG_LEASE)
        for m in got[:3]:
            assert await b.complete(m.id, W1, b"1") == "ok"
        assert await b.fail(got[3].id, W1, ERROR, NEVER_S) == "retry"
        job = await job_of(b, jid)

        async def page(state: str | None, offset: int = 0, limit: int = 100) -> Any:
            return await b.views.tasks(jid, job, state, offset, limit)

        total, rows = await page(None, 0, 4)
        assert total == 10
        assert [(t["index"], t["state"], t["attempts"]) for t in rows] == [
            ("0", "succeeded", 1),
            ("1", "succeeded", 1),
            ("2", "succeeded", 1),
            ("3", "retrying", 1),
        ]
        assert all(t["worker"] == W1 for t in rows)
        assert all(isinstance(t["duration_s"], float) and t["duration_s"] >= 0 for t in rows)
        assert [t["error"] for t in rows] == [
            None,
            None,
            None,
            {"type": "ValueError", "message": "bad input"},
        ]
        total, rows = await page(None, 8, 4)
        assert (total, [t["index"] for t in rows]) == (10, ["8", "9"])
        assert all(
            t
            == {
                "index": t["index"],
                "state": "queued",
                "attempts": 0,
                "duration_s": None,
                "worker": None,
                "error": None,
            }
            for t in rows
        )
        assert await page(None, 10, 4) == (10, [])

        def shown(result: tuple[int, list[dict[str, Any]]]) -> tuple[int, list[str]]:
            return result[0], [t["index"] for t in result[1]]

        assert shown(await page("succeeded")) == (3, ["0", "1", "2"])
        assert shown(await page("retrying")) == (1, ["3"])
        assert shown(await page("running")) == (2, ["4", "5"])
        assert shown(await page("queued")) == (4, ["6", "7", "8", "9"])
        assert shown(await page("queued", 3, 100)) == (4, ["9"])
        assert shown(await page("failed")) == (0, [])
        assert shown(await page("cancelled")) == (0, [])
        running = (await page("running"))[1]
        assert all(t["duration_s"] is None and t["worker"] == W1 for t in running)

    run(store, scenario)


def test_tasks_of_failed_and_cancelled_jobs_show_unfinished_ones_cancelled(store: Store) -> None:
    async def scenario(b: Broker) -> None:
        failed = await submit(b, {"task": "t", "inputs": list(range(5)), "queue": "f"})
        got = await b.fetch(W1, ["f"], 2, LONG_LEASE)
        assert await b.complete(got[0].id, W1, b"1") == "ok"
        assert await b.fail(got[1].id, W1, ERROR, None) == "failed"
        cancelled = await submit(b, {"task": "t", "inputs": list(range(4)), "queue": "c"})
        await b.fetch(W1, ["c"], 1, LONG_LEASE)  # one running when it is cancelled
        assert await b.cancel(cancelled) == "ok"

        async def shown(jid: str, state: str | None) -> tuple[int, list[tuple[str, str]]]:
            job = await job_of(b, jid)
            total, rows = await b.views.tasks(jid, job, state, 0, 100)
            return total, [(t["index"], t["state"]) for t in rows]

        assert await shown(failed, None) == (
            5,
            [
                ("0", "succeeded"),
                ("1", "failed"),
                ("2", "cancelled"),
                ("3", "cancelled"),
                ("4", "cancelled"),
            ],
        )
        assert await shown(failed, "failed") == (1, [("1", "failed")])
        assert await shown(failed, "cancelled") == (
            3,
            [("2", "cancelled"), ("3", "cancelled"), ("4", "cancelled")],
        )
        assert await shown(failed, "queued") == (0, [])
        job = await job_of(b, failed)
        _, (row,) = await b.views.tasks(failed, job, "failed", 0, 100)
        assert row["error"] == {"type": "ValueError", "message": "bad input"}
        assert row["attempts"] == 1 and row["worker"] == W1
        assert await shown(cancelled, "cancelled") == (4, [(str(i), "cancelled") for i in range(4)])
        assert await shown(cancelled, "running") == (0, [])

    run(store, scenario)


def test_tasks_of_a_job_with_a_reduce_step_end_with_r(store: Store) -> None:
    async def scenario(b: Broker) -> None:
        jid = await submit(b, {"task": "t", "inputs": [1, 2], "reduce": "total"})
        job = await job_of(b, jid)
        assert [t["index"] for t in (await b.views.tasks(jid, job, "queued", 0, 100))[1]] == [
            "0",
            "1",
            "r",
        ]
        assert await complete_all(b, "default") == 3  # two tasks, then the reduce step
        job = await job_of(b, jid)
        assert job["state"] == "succeeded"
        total, rows = await b.views.tasks(jid, job, None, 0, 100)
        assert total == 3
        assert [(t["index"], t["state"]) for t in rows] == [
            ("0", "succeeded"),
            ("1", "succeeded"),
            ("r", "succeeded"),
        ]

    run(store, scenario)


def test_timeline_is_the_newest_events_oldest_first(store: Store) -> None:
    async def scenario(b: Broker) -> None:
        jid = await submit(b, {"task": "t", "inputs": [1, 2, 3]})
        await complete_all(b, "default")
        stored = await b.events(jid, "0", None)
        assert [f["type"] for _i, f in stored] == [
            "job.submitted",
            "job.started",
            *["task.started"] * 3,
            *["task.succeeded"] * 3,
            "job.succeeded",
        ]
        assert await b.views.timeline(jid, 4) == stored[-4:]
        assert await b.views.timeline(jid, 1) == stored[-1:]
        assert await b.views.timeline(jid, 200) == stored
        ids = [i for i, _f in await b.views.timeline(jid, 200)]
        assert ids == sorted(ids, key=lambda i: tuple(int(p) for p in i.split("-")))
        assert await b.views.timeline("0" * 32, 10) == []

    run(store, scenario)


# -- the monitor's views: queues, workers, the global stream ---------------------------------


def test_queues_show_depth_counts_peek_and_oldest_wait(store: Store) -> None:
    async def scenario(b: Broker) -> None:
        await b.register_worker(W2, {"name": "idle", "queues": ["q2"], "concurrency": 1}, {})
        low = await submit(b, {"task": "t", "name": "low", "inputs": [1, 2, 3], "queue": "q1"})
        await next_millisecond(b)
        high = await submit(
            b, {"task": "t", "name": "high", "inputs": [1, 2], "queue": "q1", "priority": 5}
        )
        await later_than(b, 0.05)
        view = await b.views.queues(10)
        q1, q2 = view["queues"]
        assert (q1["name"], q1["depth"], q1["running"], q1["retrying"]) == ("q1", 5, 0, 0)
        peek = [(p["task"], p["job"], p["index"], p["name"], p["priority"]) for p in q1["peek"]]
        assert peek == [
            (f"{high}:0", high, "0", "high", 5),
            (f"{high}:1", high, "1", "high", 5),
            (f"{low}:0", low, "0", "low", 0),
            (f"{low}:1", low, "1", "low", 0),
            (f"{low}:2", low, "2", "low", 0),
        ]
        waits = [p["waiting_s"] for p in q1["peek"]]
        assert all(w >= 0.05 for w in waits)
        assert q1["oldest_wait_s"] == max(waits) == waits[2]  # the low job was queued first
        assert (q1["succeeded_per_s"], q1["failed_per_s"]) == (0.0, 0.0)
        assert q2 == {
            "name": "q2",
            "depth": 0,
            "running": 0,
            "retrying": 0,
            "succeeded_per_s": 0.0,
            "failed_per_s": 0.0,
            "oldest_wait_s": None,
            "peek": [],
        }
        assert view["dead_letters"] == 0

        got = await b.fetch(W1, ["q1"], 2, LONG_LEASE)
        assert [m.id for m in got] == [f"{high}:0", f"{high}:1"]
        assert await b.fail(got[1].id, W1, ERROR, NEVER_S) == "retry"
        q1 = (await b.views.queues(2))["queues"][0]
        assert (q1["depth"], q1["running"], q1["retrying"]) == (3, 1, 1)
        assert [p["task"] for p in q1["peek"]] == [f"{low}:0", f"{low}:1"]
        assert q1["oldest_wait_s"] == q1["peek"][0]["waiting_s"]

    run(store, scenario)


def test_worker_lifecycle_alive_lost_once_back_and_left(store: Store) -> None:
    stats = {"busy": 1, "slots": 2, "done": 7, "failed": 2, "cpu_percent": 12.5, "rss_mb": 48.0}

    async def scenario(b: Broker) -> None:
        info = {"id": W1, "name": "alpha", "host": "h1", "pid": 4242, "concurrency": 2}
        await b.register_worker(W1, info, {})
        (w,) = await b.workers()
        assert (w["name"], w["state"], w["pid"]) == ("alpha", "alive", 4242)
        assert await global_types(b, W1) == ["worker.joined"]
        joined = (await b.views.global_events("0", None))[-1][1]
        assert joined == {
            "type": "worker.joined",
            "worker": W1,
            "name": "alpha",
            "host": "h1",
            "pid": "4242",
        }

        assert await b.renew(W1, [], LONG_LEASE, stats) == []
        (w,) = await b.workers()
        assert {k: w[k] for k in stats} == stats
        assert w["state"] == "alive" and 0 <= w["last_seen_s"] < 5
        assert (await b.views.overview(60))["workers"] == {
            "alive": 1,
            "lost": 0,
            "busy": 1,
            "slots": 2,
        }
        assert await b.mark_lost_workers() == 0

        await b.renew(W1, [], LONG_LEASE, stats, due_s=0.05)
        assert await eventually(b.mark_lost_workers, "the worker to miss its deadline") == 1
        (w,) = await b.workers()
        assert w["state"] == "lost"
        assert await b.mark_lost_workers() == 0  # once
        types = await global_types(b, W1)
        assert types.count("worker.lost") == 1
        assert types[-1] == "worker.lost"
        assert (await b.views.overview(60))["workers"] == {
            "alive": 0,
            "lost": 1,
            "busy": 0,
            "slots": 0,
        }

        await b.renew(W1, [], LONG_LEASE, {**stats, "busy": 0})
        (w,) = await b.workers()
        assert (w["state"], w["busy"]) == ("alive", 0)
        # back at once; no second heartbeat event within 30 s of the first
        assert (await global_types(b, W1))[-1] == "worker.back"
        assert (await global_types(b, W1)).count("worker.heartbeat") == 1
        assert await b.mark_lost_workers() == 0

        await b.deregister_worker(W1)
        assert await b.workers() == []
        types = await global_types(b, W1)
        assert types[-1] == "worker.left"
        assert (types.count("worker.lost"), types.count("worker.back")) == (1, 1)

    run(store, scenario)


def test_global_events_resume_after_an_id(store: Store) -> None:
    async def scenario(b: Broker) -> None:
        assert await b.views.last_event_id() == "0-0"
        first = await submit(b, {"task": "t", "inputs": [1]})
        mark = await b.views.last_event_id()
        second = await submit(b, {"task": "t", "inputs": [1, 2]})
        everything = await b.views.global_events("0", None)
        assert [(f["type"], f["job"]) for _i, f in everything] == [
            ("job.submitted", first),
            ("job.submitted", second),
        ]
        assert everything[1][1]["tasks"] == "2"
        assert await b.views.global_events(mark, None) == everything[1:]
        assert await b.views.global_events("0", None, 1) == everything[:1]
        assert await b.views.last_event_id() == everything[-1][0]
        assert await b.views.global_events(everything[-1][0], None) == []
        assert await b.views.global_events(everything[-1][0], 50) == []  # waited 50 ms
        # an id within an entry of several events (a job stream's, on Redis): after that entry
        assert await b.views.global_events(f"{everything[0][0]}-0", None) == everything[1:]

    run(store, scenario)


def test_job_ends_are_read_from_a_position_and_nothing_else_is(store: Store) -> None:
    async def scenario(b: Broker) -> None:
        early = await submit(b, {"task": "t", "inputs": [1]})
        await b.cancel(early)
        mark = await b.views.last_job_end()
        done = await submit(b, {"task": "t", "inputs": [1]})
        cancelled = await submit(b, {"task": "t", "inputs": [1, 2]})
        # RabbitMQ may first deliver the cancelled job's message, which is skipped
        (m,) = await eventually(lambda: b.fetch(W1, ["default"], 1, LONG_LEASE), "a task")
        assert m.job_id == done
        assert await b.complete(m.id, W1, b"1") == "ok"
        await b.cancel(cancelled)

        after, ended = await b.views.job_ends(mark, 1000)
        assert [e.job_id for e in ended] == [done, cancelled]  # not submits, not starts
        assert after == await b.views.last_job_end()
        assert await b.views.job_ends(after, 50) == (after, [])  # waited 50 ms for one
        every = (await b.views.job_ends("0-0", 1000))[1]
        assert [e.job_id for e in every] == [early, done, cancelled]
        # what an end carries (a backend may carry nothing) is what a read would give
        for end in every:
            stored = await b.job(end.job_id)
            assert end.record is None or end.record == stored
        assert ended[1].record is None and ended[1].value is None  # only successes carry

    run(store, scenario)


def test_the_end_of_an_args_job_may_carry_its_record_and_value(store: Store) -> None:
    async def scenario(b: Broker) -> None:
        mark = await b.views.last_job_end()
        jid = await submit(b, {"task": "t", "args": [7]})
        (m,) = await eventually(lambda: b.fetch(W1, ["default"], 1, LONG_LEASE), "a task")
        assert await b.complete(m.id, W1, b'{"v": 49}') == "ok"
        _, (end,) = await b.views.job_ends(mark, 1000)
        assert end.job_id == jid
        if end.record is not None:
            assert end.record == await b.job(jid)
            assert end.record["state"] == "succeeded"
            assert end.value == b'{"v": 49}' == (await b.results(jid, 0, 1))[0]

    run(store, scenario)


def test_failures_and_dead_letters_reach_the_global_stream_in_order(store: Store) -> None:
    async def scenario(b: Broker) -> None:
        jid = await submit(b, {"task": "t", "inputs": [1], "retries": 1})
        (m,) = await b.fetch(W1, ["default"], 1, LONG_LEASE)
        assert await b.fail(m.id, W1, ERROR, 0.0) == "retry"
        await eventually(b.promote_due, "the retry to be promoted")
        (m,) = await b.fetch(W1, ["default"], 1, LONG_LEASE)
        assert await b.fail(m.id, W1, ERROR, None) == "failed"
        events = [f for _i, f in await b.views.global_events("0", None)]
        assert [f["type"] for f in events] == [
            "job.submitted",
            "job.started",
            "task.retrying",
            "task.dead_lettered",
            "task.failed",
            "job.failed",
        ]
        assert events[2]["delay_ms"] == "0" and events[2]["job"] == jid
        assert events[3] == {"type": "task.dead_lettered", "entry": m.id}
        assert {k: events[4][k] for k in ("job", "task", "attempt", "worker")} == {
            "job": jid,
            "task": "0",
            "attempt": "2",
            "worker": W1,
        }
        assert events[5] == {"type": "job.failed", "job": jid, "state": "failed"}

    run(store, scenario)


# -- durability and sharing ------------------------------------------------------------------


def test_everything_survives_closing_and_reopening_the_store(store: Store) -> None:
    """A restart of every process: queued tasks, leases, results and events are all in the
    store, none in the broker object."""
    job = make_job({"task": "t", "inputs": [1, 2, 3, 4], "reduce": "app.sum"})

    async def before(b: Broker) -> list[tuple[str, dict[str, str]]]:
        await submit_ok(b, job)
        first, second = await b.fetch(W1, ["default"], 2, LONG_LEASE)
        assert await b.complete(first.id, W1, b"10") == "ok"
        assert second.index == "1"
        return await b.events(job.id, "0", None)

    async def after(b: Broker) -> None:
        assert await b.events(job.id, "0", None) == events
        record = await job_of(b, job.id)
        assert (record["state"], counts(record)["queued"], counts(record)["running"]) == (
            "running",
            2,
            1,
        )
        assert await b.depth("default") == 2
        assert await b.results(job.id, 0, 4) == [b"10", None, None, None]
        assert await b.renew(W2, [f"{job.id}:1"], LONG_LEASE) == [f"{job.id}:1"]
        assert await b.renew(W1, [f"{job.id}:1"], LONG_LEASE) == []  # W1 still holds it
        assert await b.complete(f"{job.id}:1", W1, b"20") == "ok"
        assert await complete_all(b, "default") == 3  # tasks 2 and 3, then the reduce step
        assert (await job_of(b, job.id))["state"] == "succeeded"

    events = run(store, before)
    run(store, after)


_SHARER = textwrap.dedent(
    """
    import asyncio, sys
    from sje.broker.registry import open_broker

    async def main(url, prefix, state_url, job_id, wid):
        b = open_broker(url, prefix, state_url or None)
        try:
            while (await b.job(job_id))["state"] != "succeeded":
                for m in await b.fetch(wid, ["default"], 1, 60.0):
                    assert await b.complete(m.id, wid, b'"' + wid.encode() + b'"') == "ok"
                await b.wait_for_work(["default"], 0.2)
        finally:
            await b.close()

    asyncio.run(main(*sys.argv[1:]))
    """
)


def test_two_processes_share_one_store(store: Store) -> None:
    """Another process fetches and completes while this one does (for SQLite: two processes
    on one file): nothing is delivered twice, everything is done."""
    n = 1000
    job = make_job({"task": "t", "inputs": list(range(n))})

    async def scenario(b: Broker) -> None:
        await submit_ok(b, job)
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        other = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _SHARER,
                store.url,
                store.prefix,
                store.state_url or "",
                job.id,
                "child",
            ],
            env=env,
            cwd=ROOT,
        )
        try:

            async def child_started() -> bool:
                return b'"child"' in await b.results(job.id, 0, n)

            await eventually(child_started, "the other process to complete a task", 60)
            while got := await b.fetch("parent", ["default"], 1, LONG_LEASE):
                assert await b.complete(got[0].id, "parent", b'"parent"') == "ok"
            assert await asyncio.to_thread(other.wait, 60) == 0
        finally:
            if other.poll() is None:
                other.kill()
                other.wait(10)
        assert (await job_of(b, job.id))["state"] == "succeeded"
        results = await b.results(job.id, 0, n)
        assert set(results) == {b'"parent"', b'"child"'}  # both did work; nothing is missing
        rows = await task_rows(b, job.id)
        assert {t["attempts"] for t in rows} == {1}  # every task delivered exactly once
        events, after = [], "0"
        while page := await b.events(job.id, after, None):  # in pages of 1,000
            events += [f for _i, f in page]
            after = page[-1][0]
        assert sum(f["type"] == "task.started" for f in events) == n

    run(store, scenario)


# -- SQLite's own failures ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///", "sqlite:///:memory:", "sqlite://host/sje.db"]
)
def test_sqlite_urls_that_name_no_shared_file_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match=r"sqlite:////var/lib/sje/sje\.db"):
        open_broker(url, "sje")


def test_unknown_schemes_list_sqlite_among_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"sqlite://"):
        open_broker("mongodb://x", "sje")


def test_a_relative_sqlite_path_is_resolved_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    async def scenario() -> None:
        b = open_broker("sqlite:///sje.db", "sje")
        try:
            await b.ping()
        finally:
            await b.close()

    asyncio.run(scenario())
    assert (tmp_path / "sje.db").is_file()


def _ping_error(url: str) -> str:
    async def scenario() -> str:
        b = open_broker(url, "sje")
        try:
            with pytest.raises(BrokerError) as info:
                await b.ping()
            with pytest.raises(BrokerError):
                await b.fetch(W1, ["default"], 1, LONG_LEASE)
            return str(info.value)
        finally:
            await b.close()

    return asyncio.run(scenario())


def test_sqlite_in_a_missing_directory_says_which_and_how_to_fix(tmp_path: Path) -> None:
    message = _ping_error(f"sqlite:///{tmp_path}/nowhere/sje.db")
    assert f"directory {tmp_path}/nowhere does not exist" in message
    assert "mkdir -p" in message


def test_a_corrupt_sqlite_file_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "sje.db"
    path.write_bytes(b"this is no database " * 500)
    message = _ping_error(f"sqlite:///{path}")
    assert f"The SQLite file {path} is not a database or is corrupt" in message
    assert "move it away" in message
    assert "\n" not in message


def test_an_sqlite_path_that_cannot_be_written_is_refused_with_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "sje.db").mkdir()  # a directory where the file should be
    message = _ping_error(f"sqlite:///{tmp_path}/sje.db")
    assert f"Cannot write the SQLite database {tmp_path}/sje.db" in message
    assert "writable" in message


def test_a_sqlite_file_of_another_application_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    message = _ping_error(f"sqlite:///{path}")
    assert f"The SQLite file {path} holds tables of another application" in message
    with contextlib.closing(sqlite3.connect(path)) as db:
        tables = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    assert tables == [("invoices",)]


def test_a_sqlite_file_on_a_network_filesystem_is_warned_about(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sje.broker import sqlite, sqlite_db

    assert sqlite_db.filesystem_type(str(tmp_path))  # a local one, read from /proc/mounts
    broker = open_broker(f"sqlite:///{tmp_path}/sje.db", "sje")
    assert asyncio.run(broker.durability_warnings()) == []
    monkeypatch.setattr(sqlite, "filesystem_type", lambda folder: "nfs4")
    (warning,) = asyncio.run(broker.durability_warnings())
    assert f"the SQLite database {tmp_path}/sje.db is on a network filesystem (nfs4)" in warning
    assert "redis://" in warning


def test_a_sqlite_file_locked_past_the_busy_timeout_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sje.broker import sqlite_db

    monkeypatch.setattr(sqlite_db, "BUSY_TIMEOUT_MS", 100)
    path = tmp_path / "sje.db"

    async def scenario() -> None:
        b = open_broker(f"sqlite:///{path}", "sje")
        try:
            await b.ping()
            with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
                other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
                with pytest.raises(BrokerError) as info:
                    await submit_ok(b, make_job({"task": "t", "inputs": [1]}))
                other.execute("ROLLBACK")
            message = str(info.value)
            assert f"The SQLite database {path} stayed locked by another process" in message
            assert "over 0.1 s" in message
            await submit_ok(b, make_job({"task": "t", "inputs": [1]}))  # free again
            assert await b.depth("default") == 1
        finally:
            await b.close()

    asyncio.run(scenario())
