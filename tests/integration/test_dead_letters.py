"""The dead-letter queue and the job index on a real Redis, where the tests need its keys:
entries written into a queue by something other than a master, and the index's cursor. The
rest of the dead-letter queue is the broker contract (``test_broker_contract.py``)."""

from __future__ import annotations

from typing import Any

import redis

from sje.broker.redis import RedisBroker
from tests.integration.test_broker_contract import (
    LONG_LEASE,
    W1,
    counts,
    job_of,
    make_job,
    submit_ok,
)
from tests.integration.test_redis_broker import run


def test_queue_entries_naming_no_stored_task_are_dead_lettered_not_run(
    redis_url: str, prefix: str, r: redis.Redis
) -> None:
    job = make_job({"task": "t", "inputs": [1, 2]})
    queue = f"{prefix}:q:default"
    garbage = [b"\xff\xfe-not-utf8", b"no-colon", b"deadbeef:0", f"{job.id}:7".encode()]

    async def scenario(b: RedisBroker) -> None:
        await submit_ok(b, job)
        r.zadd(queue, {member: 0 for member in garbage})  # ahead of the real tasks
        got = await b.fetch(W1, ["default"], 10, LONG_LEASE)
        assert sorted(m.id for m in got) == [f"{job.id}:0", f"{job.id}:1"]
        assert r.zcard(queue) == 0
        total, entries = await b.dlq.page(10, 0)
        assert total == 4
        assert {e["error"]["type"] for e in entries} == {"OrphanMessage"}
        assert all(e["state"] == "dead" and "job" not in e for e in entries)
        shown = {(await b.dlq.entry(e["id"]) or {})["raw"] for e in entries}
        assert shown == {"\\xff\\xfe-not-utf8", "no-colon", "deadbeef:0", f"{job.id}:7"}
        messages = " ".join(e["error"]["message"] for e in entries)
        assert "is not a task id" in messages
        assert "job deadbeef, which is not stored" in messages
        assert f"task 7 of job {job.id}, which has only 2 tasks" in messages
        for e in entries:
            assert await b.dlq.requeue(e["id"]) == ("orphan", "", 0)
        assert await b.dlq.purge([entries[0]["id"]]) == 1
        assert await b.dlq.purge([entries[0]["id"]]) == 0
        assert await b.dlq.purge(None) == 3
        assert await b.dlq.page(10, 0) == (0, [])
        assert counts(await job_of(b, job.id))["running"] == 2  # the real job is untouched

    run(redis_url, prefix, scenario)


def test_the_job_index_forgets_expired_jobs_a_slice_at_a_time(
    redis_url: str, prefix: str, r: redis.Redis
) -> None:
    jobs = [make_job({"task": "t", "inputs": [i]}) for i in range(5)]

    async def scenario(b: RedisBroker) -> None:
        for job in jobs:
            await submit_ok(b, job)
        for job in jobs[1::2]:  # records expired (result-ttl passed)
            r.delete(f"{prefix}:job:{job.id}")
        assert await b.prune_index() == 2
        assert r.zcard(f"{prefix}:jobs") == 3
        assert await b.prune_index() == 0
        r.delete(f"{prefix}:job:{jobs[0].id}")
        assert await b.prune_index() == 1  # each walk starts over once the index is done
        members: Any = r.zrange(f"{prefix}:jobs", 0, -1)  # redis-py types replies loosely
        assert {m.decode() for m in members} == {
            jobs[2].id,
            jobs[4].id,
        }

    run(redis_url, prefix, scenario)
