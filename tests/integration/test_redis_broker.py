"""What the Redis broker keeps where: key names, TTLs and what a refused submit leaves behind.
Its behaviour is the broker contract (``test_broker_contract.py``), run against every backend.

Each test runs one async scenario with ``asyncio.run``: the broker is made inside the event
loop, under the test's own key prefix, and closed at the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import redis

from sje.broker.redis import RedisBroker
from sje.errors import BrokerError
from sje.signing import SIG_LEN
from tests.integration.test_broker_contract import LONG_LEASE, W1, make_job, submit_ok

T = TypeVar("T")


def run(redis_url: str, prefix: str, scenario: Callable[[RedisBroker], Awaitable[T]]) -> T:
    """Run ``scenario`` with a broker made (and closed) inside its own event loop."""

    async def main() -> T:
        broker = RedisBroker(redis_url, prefix)
        try:
            return await scenario(broker)
        finally:
            await broker.close()

    return asyncio.run(main())


def pttl(r: redis.Redis, key: str) -> int:
    value: Any = r.pttl(key)  # redis-py types replies as a sync/async union
    return int(value)


def test_submitted_inputs_persist_until_the_job_ends(
    redis_url: str, prefix: str, r: redis.Redis
) -> None:
    job = make_job({"task": "t", "inputs": ["a", "b"]})
    run(redis_url, prefix, lambda b: submit_ok(b, job))
    stored = r.hgetall(f"{prefix}:job:{job.id}:in")
    assert {k: v[SIG_LEN:] for k, v in stored.items()} == {b"0": b'"a"', b"1": b'"b"'}
    assert pttl(r, f"{prefix}:job:{job.id}:in") == -1  # the safety TTL was removed
    assert pttl(r, f"{prefix}:job:{job.id}") == -1


def test_fetch_records_leases_owners_and_task_states_in_their_keys(
    redis_url: str, prefix: str, r: redis.Redis
) -> None:
    job = make_job({"task": "t", "inputs": [1, 2, 3]})

    async def scenario(b: RedisBroker) -> None:
        await submit_ok(b, job)
        await b.fetch(W1, ["default"], 3, LONG_LEASE)

    run(redis_url, prefix, scenario)
    owners: Any = r.hgetall(f"{prefix}:owner")
    assert owners == {f"{job.id}:{i}".encode(): W1.encode() for i in range(3)}
    assert r.zcard(f"{prefix}:leases") == 3
    states: Any = r.hgetall(f"{prefix}:job:{job.id}:st")
    assert set(states.values()) == {b"running"}


def test_a_refused_submit_leaves_no_inputs_behind(
    redis_url: str, prefix: str, r: redis.Redis
) -> None:
    first = make_job({"task": "t", "inputs": [1, 2], "idempotency-key": "order-42"})
    other = make_job({"task": "t", "inputs": [1, 3], "idempotency-key": "order-42"})
    huge = make_job({"task": "t", "inputs": [1, 2, 3, 4]}, max_queue_length=3)

    async def scenario(b: RedisBroker) -> None:
        await submit_ok(b, first)
        assert (await b.submit(other)).status == "conflict"
        assert (await b.submit(huge)).status == "full"

    run(redis_url, prefix, scenario)
    assert r.exists(f"{prefix}:job:{other.id}:in", f"{prefix}:job:{huge.id}:in") == 0


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


def test_a_succeeded_job_end_carries_its_record_and_small_value_but_not_a_large_one(
    redis_url: str, prefix: str
) -> None:
    """``P:ends``: a waiting request answers from the entry; a value over 16 KiB is read."""
    small, large = make_job({"task": "t", "args": [1]}), make_job({"task": "t", "args": [2]})

    async def scenario(b: RedisBroker) -> None:
        mark = await b.views.last_job_end()
        for job, value in ((small, b"[1,2]"), (large, b'"' + b"x" * 20_000 + b'"')):
            await submit_ok(b, job)
            (message,) = await b.fetch(W1, ["default"], 1, LONG_LEASE)
            assert await b.complete(message.id, W1, value) == "ok"
        _, ends = await b.views.job_ends(mark, 1000)
        assert [e.job_id for e in ends] == [small.id, large.id]
        for end in ends:
            assert end.record == await b.job(end.job_id)
        assert ends[0].value == b"[1,2]"
        assert ends[1].value is None

    run(redis_url, prefix, scenario)


def test_a_job_end_whose_record_cannot_be_read_is_still_a_job_end(
    redis_url: str, prefix: str, r: redis.Redis
) -> None:
    """A ``rec`` that is not JSON: the end is reported without it (the waiting request reads
    the record), not dropped, and the reader goes on."""

    async def scenario(b: RedisBroker) -> None:
        mark = await b.views.last_job_end()
        r.xadd(f"{prefix}:ends", {"job": "a" * 32, "rec": b"\xff[", "val": b"1"})
        r.xadd(f"{prefix}:ends", {"job": "b" * 32})
        _, ends = await b.views.job_ends(mark, 1000)
        assert [(e.job_id, e.record, e.value) for e in ends] == [
            ("a" * 32, None, None),
            ("b" * 32, None, None),
        ]

    run(redis_url, prefix, scenario)
