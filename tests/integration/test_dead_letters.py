"""The dead-letter queue on a real Redis: what goes in, what requeue and purge do."""

from __future__ import annotations

from typing import Any

import redis

from sje.broker.redis import RedisBroker
from tests.integration.test_redis_broker import (
    LONG_LEASE,
    W1,
    W2,
    counts,
    job_of,
    make_job,
    payload_of,
    run,
    submit_ok,
)

ERROR = {"type": "BadSignature", "message": "signature missing or wrong; it was never run"}


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


def test_dead_letter_fails_the_job_and_requeue_reopens_it_whole(
    redis_url: str, prefix: str, r: redis.Redis
) -> None:
    job = make_job({"task": "t", "inputs": [1, 2, 3, 4], "retries": 2})

    async def scenario(b: RedisBroker) -> None:
        await submit_ok(b, job)
        first, second = await b.fetch(W1, ["default"], 2, LONG_LEASE)
        assert await b.complete(first.id, W1, b"1") == "ok"
        assert await b.dead_letter(second.id, W2, ERROR) == "stale"  # W2 holds no lease
        assert await b.dead_letter(second.id, W1, ERROR) == "dead"
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
        assert r.ttl(f"{prefix}:job:{job.id}") > 0
        entry = await b.dlq.entry(second.id)
        assert entry is not None
        assert (entry["job"], entry["task"], entry["name"], entry["queue"]) == (
            job.id,
            "1",
            "t",
            "default",
        )
        assert entry["attempt"] == 1
        assert entry["error"] == ERROR
        assert entry["job_state"] == "failed"
        assert entry["payload"] == "2"

        assert await b.dlq.requeue(second.id) == ("ok", job.id, 3)
        assert await b.dlq.page(10, 0) == (0, [])
        assert await b.dlq.requeue(second.id) == ("missing", "", 0)
        record = await job_of(b, job.id)
        assert record["state"] == "running"
        assert "error" not in record and "finished_at" not in record
        assert counts(record)["queued"] == 3 and counts(record)["dead"] == 0
        assert r.ttl(f"{prefix}:job:{job.id}") == -1  # no longer expiring
        again = await b.fetch(W2, ["default"], 10, LONG_LEASE)
        assert sorted(m.index for m in again) == ["1", "2", "3"]
        assert {m.index: m.attempt for m in again}["1"] == 1  # a fresh count for the dead task
        for m in again:
            assert await b.complete(m.id, W2, payload_of(m)) == "ok"
        assert (await job_of(b, job.id))["state"] == "succeeded"
        assert await b.results(job.id, 0, 4) == [b"1", b"2", b"3", b"4"]

    run(redis_url, prefix, scenario)


def test_requeue_refuses_jobs_that_cannot_run_again(
    redis_url: str, prefix: str, r: redis.Redis
) -> None:
    gone = make_job({"task": "t", "inputs": [1]})
    cancelled = make_job({"task": "t", "inputs": [1, 2]})

    async def scenario(b: RedisBroker) -> None:
        await submit_ok(b, gone)
        await submit_ok(b, cancelled)
        one, two, _ = await b.fetch(W1, ["default"], 3, LONG_LEASE)
        await b.dead_letter(one.id, W1, ERROR)
        await b.dead_letter(two.id, W1, ERROR)
        r.delete(*[k for k in r.scan_iter(f"{prefix}:job:{one.job_id}*")])
        assert await b.dlq.requeue(one.id) == ("expired", one.job_id, 0)
        entry = await b.dlq.entry(one.id)
        assert entry is not None and entry["job_state"] == "expired"
        assert entry["payload"] is None
        # a failed job that was then reopened and cancelled is no longer 'failed'
        r.hset(f"{prefix}:job:{two.job_id}", "state", "cancelled")
        assert await b.dlq.requeue(two.id) == ("cancelled", two.job_id, 0)

    run(redis_url, prefix, scenario)


def test_a_dead_reduce_step_is_requeued_alone(redis_url: str, prefix: str) -> None:
    job = make_job({"task": "t", "inputs": [1, 2], "reduce": "app.sum"})

    async def scenario(b: RedisBroker) -> None:
        await submit_ok(b, job)
        for m in await b.fetch(W1, ["default"], 2, LONG_LEASE):
            await b.complete(m.id, W1, payload_of(m))
        (reduce,) = await b.fetch(W1, ["default"], 1, LONG_LEASE)
        await b.dead_letter(reduce.id, W1, ERROR)
        entry = await b.dlq.entry(reduce.id)
        assert entry is not None and entry["name"] == "app.sum" and "payload" not in entry
        assert await b.dlq.requeue(reduce.id) == ("ok", job.id, 1)
        (again,) = await b.fetch(W2, ["default"], 5, LONG_LEASE)
        assert again.id == reduce.id
        assert payload_of(again) == b""
        assert await b.complete(again.id, W2, b"3") == "ok"
        assert (await job_of(b, job.id))["state"] == "succeeded"

    run(redis_url, prefix, scenario)


def test_the_dead_letter_queue_is_listed_newest_first_and_paged(
    redis_url: str, prefix: str
) -> None:
    jobs = [make_job({"task": "t", "inputs": [i]}) for i in range(3)]

    async def scenario(b: RedisBroker) -> None:
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
        assert all(e["state"] == "failed" for e in page)
        assert sorted(await b.dlq.ids()) == sorted(ids)

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
