"""The monitor's job scan on a real Redis, where the test needs its keys: index entries of
jobs whose records expired count toward the scan budget. The rest of the monitor's reads is the
broker contract (``test_broker_contract.py``)."""

from __future__ import annotations

import redis

from sje.broker import views_shape
from sje.broker.base import JobQuery
from sje.broker.redis import RedisBroker
from tests.integration.test_broker_contract import all_pages, job_of, newest_first, submit
from tests.integration.test_redis_broker import run


def test_find_jobs_scans_at_most_the_budget_per_call_then_continues(
    redis_url: str, prefix: str, r: redis.Redis
) -> None:
    """Behind the budget of index entries only old jobs match: the first call returns no row
    but where to continue, and the next one finds them."""
    budget = views_shape.SCAN_BUDGET
    assert budget == 10_000  # docs/monitor.md promises this number

    async def scenario(b: RedisBroker) -> None:
        old = [await submit(b, {"task": "t", "name": f"old {i}", "inputs": [1]}) for i in range(3)]
        newest = max([int((await job_of(b, jid))["created_at"]) for jid in old])
        # index entries of jobs whose records expired (as prune would find them), all newer
        stale = {f"{i:032x}": newest + 1 + i // 100 for i in range(budget + 250)}
        r.zadd(f"{prefix}:jobs", stale)
        query = JobQuery(state="pending")
        rows, after = await b.views.find_jobs(query, 50, 0)
        assert (rows, after) == ([], budget)
        rows, after = await b.views.find_jobs(query, 50, budget)
        assert [row["id"] for row in rows] == await newest_first(b, old)
        assert after is None
        assert await all_pages(b, query, 2) == await newest_first(b, old)

    run(redis_url, prefix, scenario)
