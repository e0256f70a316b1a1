"""The monitor's read side (``RedisViews``) and worker liveness against a real Redis: every
number is driven by the broker's own fetch / complete / fail scripts, no workers involved."""

from __future__ import annotations

import itertools
from typing import Any

import redis

from sje.broker import redis_views
from sje.broker.redis import RedisBroker
from sje.broker.redis_views import JobQuery
from sje.events import SLOT_S
from tests.integration.test_redis_broker import (
    LONG_LEASE,
    W1,
    W2,
    eventually,
    job_of,
    make_job,
    next_millisecond,
    run,
    submit_ok,
)

ERROR = {"type": "ValueError", "message": "bad input", "attempt": 1, "traceback": "tb"}
NEVER_S = 600.0  # a retry delay no test waits for: the task stays retrying


async def submit(b: RedisBroker, definition: dict[str, Any]) -> str:
    return await submit_ok(b, make_job(definition))


async def complete_all(b: RedisBroker, queue: str, worker: str = W1) -> int:
    """Fetch and complete every task queued on ``queue``; returns how many."""
    done = 0
    while messages := await b.fetch(worker, [queue], 100, LONG_LEASE):
        for m in messages:
            assert await b.complete(m.id, worker, b"1") == "ok"
        done += len(messages)
    return done


async def retry_then_succeed(b: RedisBroker, queue: str) -> None:
    """The next task on ``queue`` fails once (retry without delay), then succeeds."""
    (first,) = await b.fetch(W1, [queue], 1, LONG_LEASE)
    assert await b.fail(first.id, W1, ERROR, 0.0) == "retry"
    await eventually(b.promote_due, "the retry to be promoted")
    (again,) = await b.fetch(W1, [queue], 1, LONG_LEASE)
    assert (again.id, again.attempt) == (first.id, 2)
    assert await b.complete(again.id, W1, b"1") == "ok"


async def fail_next(b: RedisBroker, queue: str) -> str:
    """The next task on ``queue`` fails for good (its job fails); returns its id."""
    (message,) = await b.fetch(W1, [queue], 1, LONG_LEASE)
    assert await b.fail(message.id, W1, ERROR, None) == "failed"
    return message.id


async def newest_first(b: RedisBroker, ids: list[str]) -> list[str]:
    """``ids`` in the jobs index order: created time, then id, descending."""
    created = {jid: int((await job_of(b, jid))["created_at"]) for jid in ids}
    return sorted(ids, key=lambda jid: (created[jid], jid), reverse=True)


async def all_pages(b: RedisBroker, query: JobQuery, limit: int) -> list[str]:
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


def global_types(r: redis.Redis, prefix: str, worker: str) -> list[str]:
    raw: Any = r.xrange(f"{prefix}:events")
    return [f[b"type"].decode() for _id, f in raw if f.get(b"worker") == worker.encode()]


# -- overview and counters -------------------------------------------------------------------


def test_overview_counts_jobs_tasks_queues_and_dead_letters(redis_url: str, prefix: str) -> None:
    async def scenario(b: RedisBroker) -> None:
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

    run(redis_url, prefix, scenario)


async def outcomes_on_two_queues(b: RedisBroker) -> None:
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


def test_stats_count_outcomes_starts_and_histograms_per_queue(redis_url: str, prefix: str) -> None:
    async def scenario(b: RedisBroker) -> None:
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

    run(redis_url, prefix, scenario)


def test_throughput_counts_successes_and_failures_per_slot_and_queue(
    redis_url: str, prefix: str
) -> None:
    async def scenario(b: RedisBroker) -> None:
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

    run(redis_url, prefix, scenario)


# -- the jobs page ---------------------------------------------------------------------------


def test_find_jobs_filters_by_state_name_time_and_id(redis_url: str, prefix: str) -> None:
    names = ["Alpha report", "beta REPORT", "gamma", "delta", "Epsilon Report", "zeta"]

    async def scenario(b: RedisBroker) -> None:
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

    run(redis_url, prefix, scenario)


def test_find_jobs_pages_cover_every_job_exactly_once(redis_url: str, prefix: str) -> None:
    async def scenario(b: RedisBroker) -> None:
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

    run(redis_url, prefix, scenario)


def test_find_jobs_scans_at_most_the_budget_per_call_then_continues(
    redis_url: str, prefix: str, r: redis.Redis
) -> None:
    """Behind the budget of index entries only old jobs match: the first call returns no row
    but where to continue, and the next one finds them."""
    budget = redis_views.SCAN_BUDGET
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


# -- one job: tasks and timeline -------------------------------------------------------------


def test_tasks_page_and_filter_a_running_job(redis_url: str, prefix: str) -> None:
    async def scenario(b: RedisBroker) -> None:
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

    run(redis_url, prefix, scenario)


def test_tasks_of_failed_and_cancelled_jobs_show_unfinished_ones_cancelled(
    redis_url: str, prefix: str
) -> None:
    async def scenario(b: RedisBroker) -> None:
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

    run(redis_url, prefix, scenario)


def test_tasks_of_a_job_with_a_reduce_step_end_with_r(redis_url: str, prefix: str) -> None:
    async def scenario(b: RedisBroker) -> None:
        jid = await submit(b, {"task": "t", "inputs": [1, 2], "reduce": "total"})
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

    run(redis_url, prefix, scenario)


def test_timeline_is_the_newest_events_oldest_first(redis_url: str, prefix: str) -> None:
    async def scenario(b: RedisBroker) -> None:
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

    run(redis_url, prefix, scenario)


# -- queues ----------------------------------------------------------------------------------


def test_queues_show_depth_counts_peek_and_oldest_wait(redis_url: str, prefix: str) -> None:
    async def scenario(b: RedisBroker) -> None:
        await b.register_worker(W2, {"name": "idle", "queues": ["q2"], "concurrency": 1}, {})
        low = await submit(b, {"task": "t", "name": "low", "inputs": [1, 2, 3], "queue": "q1"})
        await next_millisecond(b)
        high = await submit(
            b, {"task": "t", "name": "high", "inputs": [1, 2], "queue": "q1", "priority": 5}
        )
        start = await b.server_time()

        async def waited() -> bool:
            return await b.server_time() >= start + 0.05

        await eventually(waited, "50 ms to pass on the Redis clock")
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

    run(redis_url, prefix, scenario)


# -- workers ---------------------------------------------------------------------------------


def test_worker_lifecycle_alive_lost_once_back_and_left(
    redis_url: str, prefix: str, r: redis.Redis
) -> None:
    stats = {"busy": 1, "slots": 2, "done": 7, "failed": 2, "cpu_percent": 12.5, "rss_mb": 48.0}

    async def scenario(b: RedisBroker) -> None:
        info = {"id": W1, "name": "alpha", "host": "h1", "pid": 4242, "concurrency": 2}
        await b.register_worker(W1, info, {})
        (w,) = await b.workers()
        assert (w["name"], w["state"], w["pid"]) == ("alpha", "alive", 4242)
        assert global_types(r, prefix, W1) == ["worker.joined"]

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
        types = global_types(r, prefix, W1)
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
        assert global_types(r, prefix, W1)[-1] == "worker.back"
        assert global_types(r, prefix, W1).count("worker.heartbeat") == 1
        assert await b.mark_lost_workers() == 0

        await b.deregister_worker(W1)
        assert await b.workers() == []
        types = global_types(r, prefix, W1)
        assert types[-1] == "worker.left"
        assert (types.count("worker.lost"), types.count("worker.back")) == (1, 1)

    run(redis_url, prefix, scenario)


def test_global_events_resume_after_an_id(redis_url: str, prefix: str) -> None:
    async def scenario(b: RedisBroker) -> None:
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
        assert await b.views.last_event_id() == everything[-1][0]
        assert await b.views.global_events(everything[-1][0], None) == []

    run(redis_url, prefix, scenario)
