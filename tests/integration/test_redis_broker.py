"""The broker contract (task queue, scheduler, job store) against a real Redis server.

Each test runs one async scenario with ``asyncio.run``: the broker is made inside the event
loop, under the test's own key prefix, and closed at the end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
import pytest
import redis

from sje.broker.base import NewJob
from sje.broker.redis import RedisBroker
from sje.config import MasterSettings
from sje.errors import BrokerError
from sje.master.planner import plan
from sje.models import TaskMessage, parse_job
from sje.signing import SIG_LEN, verify
from sje.tasks import TaskDefaults

T = TypeVar("T")
W1, W2 = "worker-1", "worker-2"
LONG_LEASE = 60.0


KEY = b"test-signing-key"


def make_job(definition: dict[str, Any], **settings: Any) -> NewJob:
    """A planned job, as the master would store it (no task catalog needed)."""
    return plan(parse_job(definition), {}, MasterSettings(**settings), KEY)


def payload_of(message: TaskMessage) -> bytes:
    """The message's payload after checking its signature, as a worker does."""
    payload = verify(KEY, message.id, message.header, message.payload)
    assert payload is not None, f"bad signature on {message.id}"
    return payload


def run(redis_url: str, prefix: str, scenario: Callable[[RedisBroker], Awaitable[T]]) -> T:
    """Run ``scenario`` with a broker made (and closed) inside its own event loop."""

    async def main() -> T:
        broker = RedisBroker(redis_url, prefix)
        try:
            return await scenario(broker)
        finally:
            await broker.close()

    return asyncio.run(main())


async def eventually(check: Callable[[], Awaitable[T]], what: str, timeout: float = 10.0) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def submit_ok(broker: RedisBroker, job: NewJob) -> str:
    outcome = await broker.submit(job)
    assert outcome.status == "ok", outcome
    return outcome.job_id


async def job_of(broker: RedisBroker, job_id: str) -> dict[str, str]:
    record = await broker.job(job_id)
    assert record is not None, f"job {job_id} is not stored"
    return record


def counts(record: dict[str, str]) -> dict[str, int]:
    names = ("queued", "running", "retrying", "succeeded", "failed", "dead", "cancelled")
    return {name: int(record[f"c_{name}"]) for name in names}


def indexes(messages: list[TaskMessage]) -> list[str]:
    return [m.index for m in messages]


def pttl(r: redis.Redis, key: str) -> int:
    value: Any = r.pttl(key)  # redis-py types replies as a sync/async union
    return int(value)


# -- submit -----------------------------------------------------------------------------------


def test_submit_stores_the_whole_job_pending_with_counts(redis_url: str, prefix: str) -> None:
    job = make_job({"task": "app.square", "name": "sq", "inputs": [1, 2, 3], "priority": 4})

    async def scenario(b: RedisBroker) -> None:
        assert await submit_ok(b, job) == job.id
        record = await job_of(b, job.id)
        assert record["state"] == "pending"
        assert record["name"] == "sq"
        assert record["task"] == "app.square"
        assert record["n"] == "3"
        assert record["remaining"] == "3"
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
        listed = await b.jobs(10, 0)
        assert [row["id"] for row in listed] == [job.id]

    run(redis_url, prefix, scenario)


def test_submitted_inputs_persist_until_the_job_ends(
    redis_url: str, prefix: str, r: redis.Redis
) -> None:
    job = make_job({"task": "t", "inputs": ["a", "b"]})
    run(redis_url, prefix, lambda b: submit_ok(b, job))
    stored = r.hgetall(f"{prefix}:job:{job.id}:in")
    assert {k: v[SIG_LEN:] for k, v in stored.items()} == {b"0": b'"a"', b"1": b'"b"'}
    assert pttl(r, f"{prefix}:job:{job.id}:in") == -1  # the safety TTL was removed
    assert pttl(r, f"{prefix}:job:{job.id}") == -1


def test_jobs_lists_newest_first_and_pages(redis_url: str, prefix: str) -> None:
    jobs = [make_job({"task": "t", "name": f"j{i}"}) for i in range(3)]

    async def scenario(b: RedisBroker) -> None:
        for job in jobs:
            await submit_ok(b, job)
            await next_millisecond(b)  # the index is scored in ms: keep submissions apart
        listed = await b.jobs(10, 0)
        assert [row["name"] for row in listed] == ["j2", "j1", "j0"]
        assert [row["name"] for row in await b.jobs(1, 1)] == ["j1"]

    run(redis_url, prefix, scenario)


async def next_millisecond(b: RedisBroker) -> None:
    """Wait until the Redis clock is at least two milliseconds later."""
    start = await b.server_time()

    async def moved_on() -> bool:
        return await b.server_time() >= start + 0.002

    await eventually(moved_on, "the Redis clock to move on")


def test_jobs_with_zero_limit_returns_no_rows(redis_url: str, prefix: str) -> None:
    async def scenario(b: RedisBroker) -> None:
        await submit_ok(b, make_job({"task": "t"}))
        assert await b.jobs(0, 0) == []

    run(redis_url, prefix, scenario)


# -- fetch ------------------------------------------------------------------------------------


def test_fetch_returns_at_most_n_tasks_and_leases_them(
    redis_url: str, prefix: str, r: redis.Redis
) -> None:
    job = make_job({"task": "app.square", "inputs": [10, 11, 12, 13, 14], "retries": 2})

    async def scenario(b: RedisBroker) -> None:
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

    run(redis_url, prefix, scenario)
    owners: Any = r.hgetall(f"{prefix}:owner")
    assert owners == {f"{job.id}:{i}".encode(): W1.encode() for i in range(5)}
    assert r.zcard(f"{prefix}:leases") == 5
    states: Any = r.hgetall(f"{prefix}:job:{job.id}:st")
    assert set(states.values()) == {b"running"}


def test_fetch_with_zero_slots_returns_nothing(redis_url: str, prefix: str) -> None:
    async def scenario(b: RedisBroker) -> None:
        await submit_ok(b, make_job({"task": "t", "inputs": [1]}))
        assert await b.fetch(W1, ["default"], 0, LONG_LEASE) == []
        assert await b.depth("default") == 1

    run(redis_url, prefix, scenario)


def test_fetch_order_is_priority_first_then_fifo(redis_url: str, prefix: str) -> None:
    low = make_job({"task": "t", "inputs": [1, 2], "priority": 1})
    high_old = make_job({"task": "t", "inputs": [3, 4], "priority": 7})
    high_new = make_job({"task": "t", "inputs": [5], "priority": 7})

    async def scenario(b: RedisBroker) -> None:
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

    run(redis_url, prefix, scenario)


def test_fetch_takes_queues_in_the_order_given(redis_url: str, prefix: str) -> None:
    slow = make_job({"task": "t", "inputs": [1], "queue": "slow", "priority": 9})
    fast = make_job({"task": "t", "inputs": [2], "queue": "fast", "priority": 0})

    async def scenario(b: RedisBroker) -> None:
        await submit_ok(b, slow)
        await submit_ok(b, fast)
        got = await b.fetch(W1, ["fast", "slow"], 2, LONG_LEASE)
        assert [m.job_id for m in got] == [fast.id, slow.id]
        assert await b.fetch(W1, ["other"], 5, LONG_LEASE) == []

    run(redis_url, prefix, scenario)


def test_call_job_task_carries_args_and_options(redis_url: str, prefix: str) -> None:
    job = make_job(
        {"task": "app.call", "args": [1], "kwargs": {"k": 2}, "timeout": "5s", "backoff": 0.5}
    )

    async def scenario(b: RedisBroker) -> None:
        await submit_ok(b, job)
        (message,) = await b.fetch(W1, ["default"], 5, LONG_LEASE)
        assert message.kind == "call"
        assert message.index == "0"
        assert orjson.loads(payload_of(message)) == {"args": [1], "kwargs": {"k": 2}}
        assert message.timeout == 5.0
        assert message.backoff == 0.5
        assert message.backoff_max == 300.0

    run(redis_url, prefix, scenario)


# -- complete ---------------------------------------------------------------------------------


def test_complete_stores_result_and_is_idempotent(redis_url: str, prefix: str) -> None:
    job = make_job({"task": "t", "inputs": [1, 2]})

    async def scenario(b: RedisBroker) -> None:
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

    run(redis_url, prefix, scenario)


def test_last_complete_sets_job_succeeded(redis_url: str, prefix: str, r: redis.Redis) -> None:
    job = make_job({"task": "t", "inputs": [1, 2]})

    async def scenario(b: RedisBroker) -> None:
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

    run(redis_url, prefix, scenario)
    assert r.zcard(f"{prefix}:leases") == 0
    assert r.hlen(f"{prefix}:owner") == 0


def test_results_are_returned_in_index_order(redis_url: str, prefix: str) -> None:
    job = make_job({"task": "t", "inputs": list(range(5))})

    async def scenario(b: RedisBroker) -> None:
        await submit_ok(b, job)
        got = await b.fetch(W1, ["default"], 5, LONG_LEASE)
        for message in reversed(got):
            await b.complete(message.id, W1, f'"r{message.index}"'.encode())
        assert await b.results(job.id, 0, 5) == [b'"r0"', b'"r1"', b'"r2"', b'"r3"', b'"r4"']
        assert await b.results(job.id, 2, 4) == [b'"r2"', b'"r3"']
        assert await b.results(job.id, 4, 7) == [b'"r4"', None, None]
        assert await b.results(job.id, 3, 3) == []

    run(redis_url, prefix, scenario)


def test_complete_and_fetch_stores_and_hands_out_the_next_task(redis_url: str, prefix: str) -> None:
    job = make_job({"task": "t", "inputs": [1, 2, 3]})

    async def scenario(b: RedisBroker) -> None:
        await submit_ok(b, job)
        (first,) = await b.fetch(W1, ["default"], 1, LONG_LEASE)
        status, nxt = await b.complete_and_fetch(first.id, W1, b"10", 1, ["default"], LONG_LEASE)
        assert status == "ok"
        assert indexes(nxt) == ["1"]
        assert await b.results(job.id, 0, 1) == [b"10"]

    run(redis_url, prefix, scenario)


def test_reduce_task_is_enqueued_after_the_last_map_task(redis_url: str, prefix: str) -> None:
    job = make_job({"task": "app.square", "inputs": [2, 3], "reduce": "app.sum"})

    async def scenario(b: RedisBroker) -> None:
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

    run(redis_url, prefix, scenario)


# -- fail and retry ---------------------------------------------------------------------------


def test_fail_with_retry_schedules_it_and_promote_due_requeues(
    redis_url: str, prefix: str, r: redis.Redis
) -> None:
    job = make_job({"task": "t", "inputs": [1], "retries": 2})
    error = {"type": "ValueError", "message": "flaky", "attempt": 1}
    states = f"{prefix}:job:{job.id}:st"

    async def scenario(b: RedisBroker) -> None:
        await submit_ok(b, job)
        (message,) = await b.fetch(W1, ["default"], 1, LONG_LEASE)
        assert await b.fail(message.id, W1, error, 0.05) == "retry"
        record = await job_of(b, job.id)
        assert counts(record)["retrying"] == 1
        assert counts(record)["running"] == 0
        assert record["state"] == "running"
        assert orjson.loads((await b.errors(job.id))["0"]) == error
        assert await b.depth("default") == 0  # waiting in the delayed set, not the queue
        assert r.hget(states, "0") == b"retrying"
        await eventually(b.promote_due, "the retry to become due and be promoted")
        assert counts(await job_of(b, job.id))["queued"] == 1
        assert r.hget(states, "0") == b"queued"
        assert await b.depth("default") == 1
        (again,) = await b.fetch(W1, ["default"], 1, LONG_LEASE)
        assert again.id == message.id
        assert again.attempt == 2
        assert await b.complete(again.id, W1, b"1") == "ok"
        assert (await job_of(b, job.id))["state"] == "succeeded"

    run(redis_url, prefix, scenario)


def test_retry_is_not_promoted_before_its_delay(redis_url: str, prefix: str) -> None:
    job = make_job({"task": "t", "inputs": [1], "retries": 1})

    async def scenario(b: RedisBroker) -> None:
        await submit_ok(b, job)
        (message,) = await b.fetch(W1, ["default"], 1, LONG_LEASE)
        assert await b.fail(message.id, W1, {"type": "E"}, 600.0) == "retry"
        assert await b.promote_due() == 0
        assert await b.fetch(W1, ["default"], 1, LONG_LEASE) == []

    run(redis_url, prefix, scenario)


def test_fail_without_retry_fails_the_job_with_its_error(redis_url: str, prefix: str) -> None:
    job = make_job({"task": "t", "inputs": [1, 2, 3]})
    error = {"type": "KeyError", "message": "'x'", "attempt": 1, "traceback": "tb"}

    async def scenario(b: RedisBroker) -> None:
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

    run(redis_url, prefix, scenario)


def test_fail_by_a_worker_without_the_lease_is_stale(redis_url: str, prefix: str) -> None:
    job = make_job({"task": "t", "inputs": [1]})

    async def scenario(b: RedisBroker) -> None:
        await submit_ok(b, job)
        (message,) = await b.fetch(W1, ["default"], 1, LONG_LEASE)
        assert await b.fail(message.id, W2, {"type": "E"}, None) == "stale"
        assert (await job_of(b, job.id))["state"] == "running"

    run(redis_url, prefix, scenario)


# -- leases -----------------------------------------------------------------------------------


def test_renew_extends_the_lease(redis_url: str, prefix: str, r: redis.Redis) -> None:
    job = make_job({"task": "t", "inputs": [1]})

    async def scenario(b: RedisBroker) -> None:
        await submit_ok(b, job)
        (message,) = await b.fetch(W1, ["default"], 1, 1.0)
        before: Any = r.zscore(f"{prefix}:leases", message.id)
        assert await b.renew(W1, [message.id], LONG_LEASE) == []
        after: Any = r.zscore(f"{prefix}:leases", message.id)
        assert after - before >= (LONG_LEASE - 1.0) * 1000 - 50
        seen: Any = r.zscore(f"{prefix}:seen", W1)
        assert seen is not None

    run(redis_url, prefix, scenario)


def test_renew_returns_lost_ids_for_a_cancelled_job(
    redis_url: str, prefix: str, r: redis.Redis
) -> None:
    job = make_job({"task": "t", "inputs": [1, 2]})

    async def scenario(b: RedisBroker) -> None:
        await submit_ok(b, job)
        got = await b.fetch(W1, ["default"], 2, LONG_LEASE)
        ids = [m.id for m in got]
        assert await b.cancel(job.id) == "ok"
        assert sorted(await b.renew(W1, ids, LONG_LEASE)) == sorted(ids)
        assert r.zcard(f"{prefix}:leases") == 0

    run(redis_url, prefix, scenario)


def test_renew_reports_a_task_leased_to_another_worker_as_lost(redis_url: str, prefix: str) -> None:
    job = make_job({"task": "t", "inputs": [1]})

    async def scenario(b: RedisBroker) -> None:
        await submit_ok(b, job)
        (message,) = await b.fetch(W1, ["default"], 1, LONG_LEASE)
        assert await b.renew(W2, [message.id], LONG_LEASE) == [message.id]
        assert await b.renew(W1, [message.id], LONG_LEASE) == []  # W1 still owns it

    run(redis_url, prefix, scenario)


def test_release_puts_tasks_back_at_the_front_without_counting(redis_url: str, prefix: str) -> None:
    job = make_job({"task": "t", "inputs": [1, 2, 3]})

    async def scenario(b: RedisBroker) -> None:
        await submit_ok(b, job)
        _first, second = await b.fetch(W1, ["default"], 2, LONG_LEASE)
        assert await b.release(W2, [second.id]) == 0  # not W2's to release
        assert await b.release(W1, [second.id]) == 1
        record = await job_of(b, job.id)
        assert counts(record)["queued"] == 2
        assert counts(record)["running"] == 1
        (again,) = await b.fetch(W2, ["default"], 1, LONG_LEASE)
        assert again.id == second.id  # ahead of task 2, which was queued all along
        assert again.attempt == 1
        assert await b.release(W1, []) == 0

    run(redis_url, prefix, scenario)


def test_reclaim_expired_requeues_then_fails_after_max_redeliveries(
    redis_url: str, prefix: str
) -> None:
    job = make_job({"task": "t", "inputs": [1, 2]})

    async def scenario(b: RedisBroker) -> None:
        await submit_ok(b, job)
        (message,) = await b.fetch(W1, ["default"], 1, 0.05)
        await eventually(lambda: b.reclaim_expired(1), "the first lease to expire")
        record = await job_of(b, job.id)
        assert counts(record)["queued"] == 2
        assert counts(record)["running"] == 0
        (again,) = await b.fetch(W2, ["default"], 1, 0.05)
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

    run(redis_url, prefix, scenario)


def test_reclaim_leaves_live_leases_alone(redis_url: str, prefix: str) -> None:
    job = make_job({"task": "t", "inputs": [1]})

    async def scenario(b: RedisBroker) -> None:
        await submit_ok(b, job)
        await b.fetch(W1, ["default"], 1, LONG_LEASE)
        assert await b.reclaim_expired(0) == 0
        assert counts(await job_of(b, job.id))["running"] == 1

    run(redis_url, prefix, scenario)


# -- cancel and timeouts ----------------------------------------------------------------------


def test_cancel_drops_queued_tasks_and_reports_state(redis_url: str, prefix: str) -> None:
    job = make_job({"task": "t", "inputs": [1, 2, 3]})

    async def scenario(b: RedisBroker) -> None:
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

    run(redis_url, prefix, scenario)


def test_cancel_of_a_finished_job_returns_its_state(redis_url: str, prefix: str) -> None:
    job = make_job({"task": "t", "inputs": [1]})

    async def scenario(b: RedisBroker) -> None:
        await submit_ok(b, job)
        (message,) = await b.fetch(W1, ["default"], 1, LONG_LEASE)
        await b.complete(message.id, W1, b"1")
        assert await b.cancel(job.id) == "succeeded"
        assert (await job_of(b, job.id))["state"] == "succeeded"

    run(redis_url, prefix, scenario)


def test_expire_jobs_times_out_a_job_past_its_job_timeout(redis_url: str, prefix: str) -> None:
    late = make_job({"task": "t", "inputs": [1, 2], "job-timeout": "50ms"})
    patient = make_job({"task": "t", "inputs": [3], "job-timeout": "1h"})

    async def scenario(b: RedisBroker) -> None:
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

    run(redis_url, prefix, scenario)


# -- idempotency, bounds, expiry --------------------------------------------------------------


def test_same_idempotency_key_and_definition_is_a_duplicate(redis_url: str, prefix: str) -> None:
    definition = {"task": "t", "inputs": [1, 2], "idempotency-key": "order-42"}
    first, again = make_job(definition), make_job(definition)
    assert first.id != again.id

    async def scenario(b: RedisBroker) -> None:
        await submit_ok(b, first)
        outcome = await b.submit(again)
        assert (outcome.status, outcome.job_id) == ("duplicate", first.id)
        assert await b.depth("default") == 2  # nothing enqueued twice
        assert await b.job(again.id) is None

    run(redis_url, prefix, scenario)


def test_same_idempotency_key_and_other_definition_is_a_conflict(
    redis_url: str, prefix: str, r: redis.Redis
) -> None:
    first = make_job({"task": "t", "inputs": [1, 2], "idempotency-key": "order-42"})
    other = make_job({"task": "t", "inputs": [1, 3], "idempotency-key": "order-42"})

    async def scenario(b: RedisBroker) -> None:
        await submit_ok(b, first)
        outcome = await b.submit(other)
        assert (outcome.status, outcome.job_id) == ("conflict", first.id)
        assert await b.job(other.id) is None

    run(redis_url, prefix, scenario)
    assert r.exists(f"{prefix}:job:{other.id}:in") == 0  # the refused job left nothing behind


def test_submit_beyond_max_queue_length_is_full(
    redis_url: str, prefix: str, r: redis.Redis
) -> None:
    small = make_job({"task": "t", "inputs": [1, 2]}, max_queue_length=3)
    too_big = make_job({"task": "t", "inputs": [1, 2]}, max_queue_length=3)
    huge = make_job({"task": "t", "inputs": [1, 2, 3, 4]}, max_queue_length=3)

    async def scenario(b: RedisBroker) -> None:
        outcome = await b.submit(huge)
        assert (outcome.status, outcome.job_id, outcome.depth) == ("full", huge.id, 0)
        await submit_ok(b, small)
        outcome = await b.submit(too_big)
        assert (outcome.status, outcome.depth) == ("full", 2)
        assert await b.job(too_big.id) is None
        assert await b.depth("default") == 2

    run(redis_url, prefix, scenario)
    assert r.exists(f"{prefix}:job:{huge.id}:in", f"{prefix}:job:{too_big.id}:in") == 0


def test_terminal_job_keys_get_the_result_ttl(redis_url: str, prefix: str, r: redis.Redis) -> None:
    job = make_job({"task": "t", "inputs": [1], "result-ttl": "60s", "idempotency-key": "k"})

    async def scenario(b: RedisBroker) -> None:
        await submit_ok(b, job)
        assert pttl(r, f"{prefix}:job:{job.id}") == -1  # no expiry while it runs
        (message,) = await b.fetch(W1, ["default"], 1, LONG_LEASE)
        await b.complete(message.id, W1, b"1")

    run(redis_url, prefix, scenario)
    for suffix in ("", ":in", ":res", ":st", ":att", ":ev"):
        ttl = pttl(r, f"{prefix}:job:{job.id}{suffix}")
        assert 0 < ttl <= 60_000, (suffix, ttl)
    assert 0 < pttl(r, f"{prefix}:idem:k") <= 60_000


def test_job_level_events_record_the_lifecycle(redis_url: str, prefix: str) -> None:
    job = make_job({"task": "t", "inputs": [1]})

    async def scenario(b: RedisBroker) -> None:
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
        last_id = all_events[-1][0]
        assert await b.events(job.id, last_id, None) == []

    run(redis_url, prefix, scenario)


# -- workers and the task catalog ---------------------------------------------------------------


def test_workers_registry_register_list_and_deregister(redis_url: str, prefix: str) -> None:
    job = make_job({"task": "t", "inputs": [1, 2]})

    async def scenario(b: RedisBroker) -> None:
        await b.register_worker(W1, {"name": "alpha", "concurrency": 2}, {})
        await b.register_worker(W2, {"name": "beta", "concurrency": 1}, {})
        await submit_ok(b, job)
        await b.fetch(W2, ["default"], 2, LONG_LEASE)
        workers = await b.workers()
        assert [w["name"] for w in workers] == ["alpha", "beta"]
        assert [w["running"] for w in workers] == [0, 2]
        assert workers[0]["concurrency"] == 2
        assert all(0 <= w["last_seen_s"] < 60 for w in workers)
        await b.deregister_worker(W1)
        assert [w["name"] for w in await b.workers()] == ["beta"]

    run(redis_url, prefix, scenario)


def test_task_catalog_round_trips_task_defaults(redis_url: str, prefix: str) -> None:
    catalog = {
        "app.a": TaskDefaults(queue="gpu", priority=3, retries=2, backoff=0.5, timeout=9.0),
        "app.b": TaskDefaults(),
    }

    async def scenario(b: RedisBroker) -> None:
        assert await b.task_catalog() == {}
        await b.register_worker(W1, {"name": "w"}, catalog)
        assert await b.task_catalog() == catalog
        await b.deregister_worker(W1)
        assert await b.task_catalog() == catalog  # tasks stay known to plan new jobs

    run(redis_url, prefix, scenario)


def test_task_defaults_from_catalog_shape_the_planned_job(redis_url: str, prefix: str) -> None:
    async def scenario(b: RedisBroker) -> None:
        await b.register_worker(W1, {"name": "w"}, {"app.a": TaskDefaults(queue="gpu", retries=5)})
        spec = parse_job({"task": "app.a", "inputs": [1]})
        job = plan(spec, await b.task_catalog(), MasterSettings(), KEY)
        await submit_ok(b, job)
        (message,) = await b.fetch(W1, ["gpu"], 1, LONG_LEASE)
        assert message.retries == 5

    run(redis_url, prefix, scenario)


# -- errors -------------------------------------------------------------------------------------


def test_unreachable_redis_raises_broker_error_naming_the_address(prefix: str) -> None:
    async def scenario(b: RedisBroker) -> None:
        with pytest.raises(BrokerError) as info:
            await b.ping()
        message = str(info.value)
        assert "Cannot reach Redis at 127.0.0.1:1" in message
        assert "SJE_BROKER_URL" in message
        with pytest.raises(BrokerError, match=r"127\.0\.0\.1:1"):
            await b.fetch(W1, ["default"], 1, LONG_LEASE)

    run("redis://127.0.0.1:1/0", prefix, scenario)
