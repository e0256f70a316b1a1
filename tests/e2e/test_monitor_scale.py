"""The monitor at scale: 1,000 jobs holding 100,000 task records, and the jobs and job-detail
pages still answer with one bounded page each (never everything).

The store is loaded directly through the broker (``RedisBroker.submit`` of planned jobs, then
its fetch / complete / fail scripts in batches): no workers, so nothing moves while the
monitor, a real ``sje monitor`` process, is asked. Timing belongs in bench/monitor.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis

from sje.broker.base import NewJob
from sje.broker.redis import RedisBroker
from sje.config import MasterSettings
from sje.master.planner import plan
from sje.models import parse_job
from tests.support import auth, sje_env, start_monitor

JOBS = 1_000
TASKS = 100_000
SMALL = 50  # tasks of each of the 999 small jobs
BIG = TASKS - (JOBS - 1) * SMALL  # the one big job: 50,050 tasks
SUCCEEDED_JOBS = 100  # small jobs run to success
FAILED_JOBS = 50  # small jobs whose first task fails (the rest is cancelled)
BIG_DONE = 5_000  # tasks of the big job that succeeded
BIG_RUNNING = 100
BIG_RETRYING = 5
MAX_BYTES = 200_000  # an answer with the default page size stays below this
MAX_PAGE_BYTES = 1_000_000  # and one of a page as large as allowed
WORKER = "loader"
LEASE_S = 3600.0
BATCH = 50  # concurrent script calls (the broker's pool has 100 connections)


@dataclass(frozen=True)
class Store:
    big: str
    succeeded: list[str]
    failed: list[str]
    pending: list[str]


def planned(definition: dict[str, Any]) -> NewJob:
    return plan(parse_job(definition), {}, MasterSettings(), b"scale-test-signing-key")


async def complete(b: RedisBroker, queue: str, n: int) -> None:
    done = 0
    while done < n:
        messages = await b.fetch(WORKER, [queue], min(500, n - done), LEASE_S)
        assert messages, f"queue {queue} ran dry after {done} of {n}"
        for start in range(0, len(messages), BATCH):
            outcomes = await asyncio.gather(
                *(b.complete(m.id, WORKER, b"1") for m in messages[start : start + BATCH])
            )
            assert set(outcomes) == {"ok"}
        done += len(messages)


def small_job(i: int) -> NewJob:
    """The first 100 go to queue ``done``, the next 50 to ``bad``, the rest to ``default``."""
    if i < SUCCEEDED_JOBS:
        queue = "done"
    elif i < SUCCEEDED_JOBS + FAILED_JOBS:
        queue = "bad"
    else:
        queue = "default"
    return planned(
        {"task": "app.item", "name": f"batch {i:04d}", "inputs": list(range(SMALL)), "queue": queue}
    )


async def load(url: str, prefix: str) -> Store:
    """1 big job (queue ``big``) and 999 small ones: 100 succeed (``done``), 50 fail (``bad``),
    849 stay pending (``default``); of the big job 5,000 tasks succeed, 100 run, 5 retry."""
    b = RedisBroker(url, prefix)
    try:
        big = planned(
            {
                "task": "app.scan",
                "name": "Big nightly scan",
                "inputs": list(range(BIG)),
                "queue": "big",
                "retries": 3,
            }
        )
        assert (await b.submit(big)).status == "ok"
        small = [small_job(i) for i in range(JOBS - 1)]
        for start in range(0, len(small), BATCH):
            outcomes = await asyncio.gather(*(b.submit(j) for j in small[start : start + BATCH]))
            assert {o.status for o in outcomes} == {"ok"}
        await complete(b, "done", SUCCEEDED_JOBS * SMALL)
        for _ in range(FAILED_JOBS):
            (message,) = await b.fetch(WORKER, ["bad"], 1, LEASE_S)
            error = {"type": "ValueError", "message": f"bad row in {message.job_id}"}
            assert await b.fail(message.id, WORKER, error, None) == "failed"
        await complete(b, "big", BIG_DONE)
        held = await b.fetch(WORKER, ["big"], BIG_RUNNING + BIG_RETRYING, LEASE_S)
        for m in held[:BIG_RETRYING]:
            assert (
                await b.fail(m.id, WORKER, {"type": "Timeout", "message": "slow"}, 3600.0)
                == "retry"
            )
    finally:
        await b.close()
    ids = [j.id for j in small]
    return Store(
        big.id,
        ids[:SUCCEEDED_JOBS],
        ids[SUCCEEDED_JOBS : SUCCEEDED_JOBS + FAILED_JOBS],
        ids[SUCCEEDED_JOBS + FAILED_JOBS :],
    )


@dataclass(frozen=True)
class Scale:
    store: Store
    api: httpx.Client


@pytest.fixture(scope="module")
def scale(redis_url: str) -> Iterator[Scale]:
    """The loaded store (under a key prefix of this module's, deleted afterwards) and a client
    of a real monitor on it; loaded once for the tests below, which only read."""
    prefix = f"sjetest-{uuid.uuid4().hex[:12]}"
    env = sje_env(
        SJE_BROKER_URL=redis_url,
        SJE_KEY_PREFIX=prefix,
        SJE_TOKEN=f"token-{prefix}",
        SJE_SECRET=f"secret-{prefix}",
    )
    try:
        store = asyncio.run(load(redis_url, prefix))
        proc, url = start_monitor(env)
        try:
            timeout = httpx.Timeout(60.0, connect=5.0)
            with httpx.Client(base_url=url, headers=auth(env), timeout=timeout) as client:
                yield Scale(store, client)
        finally:
            proc.stop()
    finally:
        r = redis.Redis.from_url(redis_url)
        keys = list(r.scan_iter(match=f"{prefix}:*", count=5000))
        for i in range(0, len(keys), 1000):
            r.delete(*keys[i : i + 1000])
        r.close()


def get(api: httpx.Client, path: str, max_bytes: int = MAX_BYTES, **params: Any) -> Any:
    """A 200 answer of under ``max_bytes``, decoded."""
    response = api.get(path, params=params)
    assert response.status_code == 200, (path, params, response.text[:500])
    assert len(response.content) < max_bytes, (path, params, len(response.content))
    return response.json()


def all_ids(api: httpx.Client, max_bytes: int = MAX_BYTES, **params: Any) -> list[str]:
    """Every job a filter finds, page by page (each page bounded)."""
    ids: list[str] = []
    offset: int | None = 0
    for _ in range(100):
        if offset is None:
            return ids
        page = get(api, "/api/v1/jobs", max_bytes, offset=offset, **params)
        ids += [j["id"] for j in page["jobs"]]
        offset = page["next"]
    raise AssertionError(f"no end of the pages of {params}")


def test_jobs_pages_answer_one_bounded_page_over_a_thousand_jobs(scale: Scale) -> None:
    api, store = scale.api, scale.store
    first = get(api, "/api/v1/jobs", limit=50)
    assert len(first["jobs"]) == 50 and first["next"] == 50
    second = get(api, "/api/v1/jobs", limit=50, offset=first["next"])
    assert len(second["jobs"]) == 50
    assert not {j["id"] for j in first["jobs"]} & {j["id"] for j in second["jobs"]}
    everything = all_ids(api, MAX_PAGE_BYTES, limit=1000)  # the largest page allowed
    assert len(everything) == len(set(everything)) == JOBS

    for state, expected in (("succeeded", store.succeeded), ("failed", store.failed)):
        page = get(api, "/api/v1/jobs", state=state, limit=50)
        assert len(page["jobs"]) == 50 and page["next"] is not None
        assert {j["state"] for j in page["jobs"]} == {state}
        found = all_ids(api, state=state, limit=50)
        assert sorted(found) == sorted(expected)
    pending = get(api, "/api/v1/jobs", state="pending", limit=50)
    assert len(pending["jobs"]) == 50 and {j["state"] for j in pending["jobs"]} == {"pending"}
    assert len(all_ids(api, state="pending", limit=200)) == len(store.pending)
    assert [j["id"] for j in get(api, "/api/v1/jobs", state="running")["jobs"]] == [store.big]
    assert [j["id"] for j in get(api, "/api/v1/jobs", name="NIGHTLY")["jobs"]] == [store.big]
    named = get(api, "/api/v1/jobs", name="batch 0042")["jobs"]
    assert [j["name"] for j in named] == ["batch 0042"]
    assert [j["id"] for j in get(api, "/api/v1/jobs", q=store.big)["jobs"]] == [store.big]
    assert get(api, "/api/v1/jobs", state="timed_out")["jobs"] == []


def test_job_detail_tasks_timeline_and_overview_stay_bounded_over_100k_tasks(
    scale: Scale,
) -> None:
    api, store = scale.api, scale.store
    big = get(api, f"/api/v1/jobs/{store.big}")
    assert big["state"] == "running"
    assert big["tasks"] == {
        "total": BIG,
        "queued": BIG - BIG_DONE - BIG_RUNNING - BIG_RETRYING,
        "running": BIG_RUNNING,
        "retrying": BIG_RETRYING,
        "succeeded": BIG_DONE,
        "failed": 0,
        "dead": 0,
        "cancelled": 0,
    }
    assert len(get(api, f"/api/v1/jobs/{store.big}", errors=1)["task_errors"]) == BIG_RETRYING

    deep = get(api, f"/api/v1/jobs/{store.big}/tasks", offset=40_000, limit=100)
    assert deep["total"] == BIG
    assert [t["index"] for t in deep["tasks"]] == [str(i) for i in range(40_000, 40_100)]
    assert {t["state"] for t in deep["tasks"]} == {"queued"}
    tail = get(api, f"/api/v1/jobs/{store.big}/tasks", offset=BIG - 30, limit=100)
    assert [t["index"] for t in tail["tasks"]] == [str(i) for i in range(BIG - 30, BIG)]
    done = get(api, f"/api/v1/jobs/{store.big}/tasks", state="succeeded", offset=4_950, limit=100)
    assert done["total"] == BIG_DONE
    assert [t["index"] for t in done["tasks"]] == [str(i) for i in range(4_950, 5_000)]
    assert all(t["worker"] == WORKER and t["attempts"] == 1 for t in done["tasks"])
    retrying = get(api, f"/api/v1/jobs/{store.big}/tasks", state="retrying")
    assert retrying["total"] == BIG_RETRYING
    assert {t["error"]["type"] for t in retrying["tasks"]} == {"Timeout"}
    assert (
        get(api, f"/api/v1/jobs/{store.big}/tasks", state="running", limit=10)["total"]
        == BIG_RUNNING
    )
    widest = get(api, f"/api/v1/jobs/{store.big}/tasks", offset=10_000, limit=1000)
    assert len(widest["tasks"]) == 1000

    failed = store.failed[0]
    view = get(api, f"/api/v1/jobs/{failed}")
    assert view["state"] == "failed" and list(view["task_errors"]) == ["0"]
    cancelled = get(api, f"/api/v1/jobs/{failed}/tasks", state="cancelled")
    assert cancelled["total"] == SMALL - 1

    timeline = get(api, f"/api/v1/jobs/{store.big}/timeline")["events"]
    assert len(timeline) == 200
    assert timeline[-1]["type"] == "task.retrying"  # the newest, last
    wide = get(api, f"/api/v1/jobs/{store.big}/timeline", MAX_PAGE_BYTES, limit=2000)
    assert len(wide["events"]) == 2000

    overview = get(api, "/api/v1/overview")
    assert overview["jobs"] == {
        "submitted": JOBS,
        "succeeded": len(store.succeeded),
        "failed": len(store.failed),
        "cancelled": 0,
        "timed_out": 0,
        "active": 1 + len(store.pending),
    }
    assert overview["tasks"] == {
        "succeeded": SUCCEEDED_JOBS * SMALL + BIG_DONE,
        "failed": FAILED_JOBS,
        "dead": 0,
        "retried": BIG_RETRYING,
    }
    depths = {q["name"]: q["depth"] for q in overview["queues"]}
    assert depths == {
        "bad": 0,
        "big": BIG - BIG_DONE - BIG_RUNNING - BIG_RETRYING,
        "default": len(store.pending) * SMALL,
        "done": 0,
    }
    queues = get(api, "/api/v1/queues")
    big_queue = next(q for q in queues["queues"] if q["name"] == "big")
    assert (big_queue["running"], big_queue["retrying"], len(big_queue["peek"])) == (
        BIG_RUNNING,
        BIG_RETRYING,
        10,
    )
    assert queues["dead_letters"] == FAILED_JOBS
    metrics = api.get("/metrics")
    assert metrics.status_code == 200 and len(metrics.content) < MAX_BYTES
    assert f'sje_queue_depth{{queue="default"}} {len(store.pending) * SMALL}.0' in metrics.text
