"""The relay contract (``RelayStore`` in ``sje.broker.base``), run unchanged against every
backend: the outbox that transitions fill once ``enable_relay`` was called (held after a
submit, visible at once after a release, redelivery, promoted retry, reduce step or requeue),
claims that hide entries for their hold and drop the ones no longer ready, ``settle_outbox``,
and ``start``, which leases the tasks a delivery names as ``fetch`` would.

Same fixtures and helpers as ``test_broker_contract.py``: ``broker_url`` is parametrized over
Redis and SQLite, each test one async scenario run with ``asyncio.run``. No test waits for
``SUBMIT_HOLD_S``: hidden entries are shown by claims of short holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol, TypeVar, cast

import pytest

from sje.broker import sqlite_ops
from sje.broker.base import Broker, RelayStore
from sje.models import TaskMessage
from tests.integration.test_broker_contract import (
    ERROR,
    LONG_LEASE,
    NEVER_S,
    W1,
    W2,
    Store,
    counts,
    job_of,
    later_than,
    make_job,
    payload_of,
    run,
    submit_ok,
)
from tests.support import eventually

T = TypeVar("T")
Entry = tuple[str, str, int]
#: a claim's hold no test outlives: its entries stay hidden for the rest of the test
HIDE_S = 60.0


class RelayBroker(Broker, RelayStore, Protocol):
    """A backend with the relay's methods (both implement them)."""


@pytest.fixture(params=["redis", "sqlite"])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    return f"sqlite:///{tmp_path}/sje.db"


@pytest.fixture
def store(broker_url: str, request: pytest.FixtureRequest) -> Store:
    if broker_url.startswith("sqlite:"):
        return Store(broker_url, "sje")
    return Store(broker_url, str(request.getfixturevalue("prefix")))


def run_relay(store: Store, scenario: Callable[[RelayBroker], Awaitable[T]]) -> T:
    """``run`` with the broker typed as a relay store."""
    return run(store, lambda b: scenario(cast(RelayBroker, b)))


async def claim(b: RelayBroker, hold_s: float = HIDE_S) -> list[Entry]:
    """Every visible entry (sorted), hidden for ``hold_s`` afterwards."""
    return sorted(await b.claim_outbox(1000, hold_s))


async def ready_again(b: RelayBroker, queue: str, n: int) -> list[str]:
    """Fetch ``n`` tasks of ``queue`` and release them: they are ready again, their outbox
    entries visible at once. Returns their ids."""
    messages = await b.fetch(W1, [queue], n, LONG_LEASE)
    assert len(messages) == n
    ids = [m.id for m in messages]
    assert await b.release(W1, ids) == n
    return ids


async def event_types(b: RelayBroker, job_id: str) -> list[tuple[str, str]]:
    """(type, task) of the job's events, oldest first."""
    return [(f["type"], f.get("task", "")) for _i, f in await b.events(job_id, "0", None)]


# -- filling the outbox ----------------------------------------------------------------------


def test_without_enable_relay_no_transition_fills_the_outbox(store: Store) -> None:
    job = make_job({"task": "t", "inputs": [1, 2, 3], "reduce": "sum"})

    async def scenario(b: RelayBroker) -> None:
        await submit_ok(b, job)
        await ready_again(b, "default", 1)  # released
        (short,) = await b.fetch(W1, ["default"], 1, 0.05)
        await eventually(lambda: b.reclaim_expired(3), "the lease to expire")  # redelivered
        tasks = await b.fetch(W1, ["default"], 3, LONG_LEASE)
        assert len(tasks) == 3 and short.id in [m.id for m in tasks]
        assert await b.fail(tasks[0].id, W1, ERROR, 0.0) == "retry"
        await eventually(b.promote_due, "the retry to be promoted")  # retried
        (again,) = await b.fetch(W1, ["default"], 1, LONG_LEASE)
        for m in (again, *tasks[1:]):
            assert await b.complete(m.id, W1, b"1") == "ok"
        assert (await job_of(b, job.id))["c_queued"] == "1"  # the reduce step is ready
        assert await claim(b) == []
        await later_than(b, 0.05)
        assert await claim(b, 0.0) == []

    run_relay(store, scenario)


def test_a_submits_entries_are_held_for_its_submitter(store: Store) -> None:
    job = make_job({"task": "t", "inputs": [1, 2, 3]})

    async def scenario(b: RelayBroker) -> None:
        await b.enable_relay()
        await b.enable_relay()  # idempotent
        await submit_ok(b, job)
        assert await b.depth("default") == 3
        assert await claim(b, 0.0) == []  # held for SUBMIT_HOLD_S
        await b.settle_outbox([f"{job.id}:{i}" for i in range(3)] + ["nojob:0", "junk"])
        await b.settle_outbox([])
        assert await claim(b, 0.0) == []
        assert await b.depth("default") == 3  # settling touches the outbox only

    run_relay(store, scenario)


def test_claim_returns_queue_and_priority_and_hides_entries_for_its_hold(store: Store) -> None:
    low = make_job({"task": "t", "inputs": [1, 2], "queue": "qa", "priority": 2})
    high = make_job({"task": "t", "inputs": [3], "queue": "qb", "priority": 8})

    async def scenario(b: RelayBroker) -> None:
        await b.enable_relay()
        await submit_ok(b, low)
        await submit_ok(b, high)
        await ready_again(b, "qa", 2)
        await ready_again(b, "qb", 1)
        everything = [
            (f"{low.id}:0", "qa", 2),
            (f"{low.id}:1", "qa", 2),
            (f"{high.id}:0", "qb", 8),
        ]
        first = await b.claim_outbox(2, 0.3)
        assert len(first) == 2 and set(first) < set(everything)
        (rest,) = await b.claim_outbox(10, 0.3)  # the first two are hidden
        assert sorted([*first, rest]) == sorted(everything)
        assert await b.claim_outbox(10, 0.3) == []
        await b.settle_outbox([first[0][0]])
        await later_than(b, 0.35)  # the holds ran out: the entries not settled come back
        assert await claim(b) == sorted([first[1], rest])
        assert await claim(b) == []

    run_relay(store, scenario)


def test_a_settled_entry_does_not_come_back(store: Store) -> None:
    job = make_job({"task": "t", "inputs": [1, 2]})

    async def scenario(b: RelayBroker) -> None:
        await b.enable_relay()
        await submit_ok(b, job)
        one, two = sorted(await ready_again(b, "default", 2))
        assert [e[0] for e in await claim(b, 0.3)] == [one, two]
        await b.settle_outbox([one])
        await later_than(b, 0.35)
        assert [e[0] for e in await claim(b)] == [two]

    run_relay(store, scenario)


def test_settle_keeps_an_entry_the_task_got_again_after_the_claim(store: Store) -> None:
    """A delivered task that was released before its entry was settled is ready again: the
    settle of the old entry must not lose the new one."""
    job = make_job({"task": "t", "inputs": [1]})

    async def scenario(b: RelayBroker) -> None:
        await b.enable_relay()
        await submit_ok(b, job)
        (tid,) = await ready_again(b, "default", 1)
        assert [e[0] for e in await claim(b)] == [tid]
        (message,) = await b.start(W1, [tid], LONG_LEASE)
        assert await b.release(W1, [message.id]) == 1
        await b.settle_outbox([tid])
        assert [e[0] for e in await claim(b)] == [tid]

    run_relay(store, scenario)


def test_released_redelivered_and_promoted_tasks_are_visible_at_once(store: Store) -> None:
    job = make_job({"task": "t", "inputs": [1, 2, 3], "priority": 6})

    async def scenario(b: RelayBroker) -> None:
        await b.enable_relay()
        await submit_ok(b, job)
        (lost,) = await b.fetch(W1, ["default"], 1, 0.05)
        kept, retried = await b.fetch(W1, ["default"], 2, LONG_LEASE)
        assert await claim(b, 0.0) == []
        await eventually(lambda: b.reclaim_expired(3), "the lease to expire")
        assert await claim(b) == [(lost.id, "default", 6)]
        assert await b.release(W1, [kept.id]) == 1
        assert await claim(b) == [(kept.id, "default", 6)]
        assert await b.fail(retried.id, W1, ERROR, 0.0) == "retry"
        assert await claim(b, 0.0) == []  # retrying is not ready
        await eventually(b.promote_due, "the retry to be promoted")
        assert await claim(b) == [(retried.id, "default", 6)]
        assert await claim(b, 0.0) == []

    run_relay(store, scenario)


def test_the_reduce_step_is_visible_once_the_last_task_completes(store: Store) -> None:
    job = make_job({"task": "app.square", "inputs": [2, 3], "reduce": "app.sum", "priority": 3})

    async def scenario(b: RelayBroker) -> None:
        await b.enable_relay()
        await submit_ok(b, job)
        first, second = await b.fetch(W1, ["default"], 2, LONG_LEASE)
        assert await b.complete(first.id, W1, b"4") == "ok"
        assert await claim(b, 0.0) == []
        assert await b.complete(second.id, W1, b"9") == "ok"
        assert await claim(b) == [(f"{job.id}:r", "default", 3)]
        (reduce,) = await b.start(W2, [f"{job.id}:r"], LONG_LEASE)
        assert (reduce.id, reduce.kind, reduce.task, reduce.attempt) == (
            f"{job.id}:r",
            "reduce",
            "app.sum",
            1,
        )

    run_relay(store, scenario)


def test_a_requeued_job_puts_its_tasks_in_the_outbox(store: Store) -> None:
    job = make_job({"task": "t", "inputs": [1, 2, 3]})

    async def scenario(b: RelayBroker) -> None:
        await b.enable_relay()
        await submit_ok(b, job)
        done, failing = await b.fetch(W1, ["default"], 2, LONG_LEASE)
        assert await b.complete(done.id, W1, b"1") == "ok"
        assert await b.fail(failing.id, W1, ERROR, None) == "failed"
        assert await claim(b, 0.0) == []
        assert await b.dlq.requeue(failing.id) == ("ok", job.id, 2)
        expected = sorted({f"{job.id}:{i}" for i in range(3)} - {done.id})
        assert [e[0] for e in await claim(b)] == expected

    run_relay(store, scenario)


def test_claim_drops_entries_of_tasks_no_longer_ready(store: Store) -> None:
    taken = make_job({"task": "t", "inputs": [1, 2]})
    cancelled = make_job({"task": "t", "inputs": [1, 2]})

    async def scenario(b: RelayBroker) -> None:
        await b.enable_relay()
        await submit_ok(b, taken)
        await submit_ok(b, cancelled)
        await ready_again(b, "default", 4)
        assert len(await b.start(W2, [f"{taken.id}:0", f"{taken.id}:1"], LONG_LEASE)) == 2
        assert await b.cancel(cancelled.id) == "ok"
        assert await b.depth("default") == 0
        assert await claim(b, 0.05) == []
        await later_than(b, 0.1)
        assert await claim(b, 0.0) == []  # removed, not hidden

    run_relay(store, scenario)


def test_concurrent_claimers_never_get_the_same_entry(store: Store) -> None:
    job = make_job({"task": "t", "inputs": list(range(60))})

    async def scenario(b: RelayBroker) -> None:
        await b.enable_relay()
        await submit_ok(b, job)
        ids = await ready_again(b, "default", 60)
        other = cast(RelayBroker, store.open())
        try:
            got: list[str] = []
            while True:
                batches = await asyncio.gather(
                    *(c.claim_outbox(7, HIDE_S) for c in (b, other, b, other))
                )
                if not any(batches):
                    break
                got += [tid for batch in batches for tid, _q, _p in batch]
        finally:
            await other.close()
        assert len(got) == len(set(got)) == 60
        assert set(got) == set(ids)

    run_relay(store, scenario)


# -- start --------------------------------------------------------------------------------------


def test_start_leases_the_named_ready_tasks_as_fetch_does(store: Store) -> None:
    job = make_job({"task": "app.square", "inputs": [10, 11, 12], "retries": 2})

    async def scenario(b: RelayBroker) -> None:
        await b.register_worker(W1, {"name": "w1"}, {})
        await submit_ok(b, job)
        t0, t1, t2 = (f"{job.id}:{i}" for i in range(3))
        got = await b.start(W1, [t2, t0, t2], LONG_LEASE)  # named twice: started once
        assert [m.id for m in got] == [t2, t0]
        first: TaskMessage = got[0]
        assert (first.job_id, first.index, first.task, first.kind) == (
            job.id,
            "2",
            "app.square",
            "item",
        )
        assert (first.attempt, first.retries) == (1, 2)
        assert payload_of(first) == b"12"
        record = await job_of(b, job.id)
        assert record["state"] == "running"
        assert counts(record)["queued"] == 1 and counts(record)["running"] == 2
        assert await b.depth("default") == 1
        types = await event_types(b, job.id)
        assert ("task.started", "2") in types and ("task.started", "0") in types
        assert [t for t, _ in types].count("job.started") == 1
        assert {w["name"]: w["running"] for w in await b.workers()} == {"w1": 2}
        assert await b.start(W2, [t0, t2], LONG_LEASE) == []  # running
        assert [m.id for m in await b.fetch(W2, ["default"], 10, LONG_LEASE)] == [t1]
        assert await b.complete(t0, W1, b"100") == "ok"
        assert await b.start(W2, [t0], LONG_LEASE) == []  # done
        assert await b.renew(W1, [t2], LONG_LEASE) == []  # W1 holds it
        stats = await b.views.stats()
        waits = sum(n for k, n in stats.items() if k.startswith("wait|default|"))
        assert waits == 3  # one wait observed per start: t2 and t0 started, t1 fetched

    run_relay(store, scenario)


def test_start_skips_tasks_that_are_not_ready(store: Store) -> None:
    retrying = make_job({"task": "t", "inputs": [1]})
    cancelled = make_job({"task": "t", "inputs": [1, 2]})
    finished = make_job({"task": "t", "inputs": [1]})

    async def scenario(b: RelayBroker) -> None:
        for job in (retrying, cancelled, finished):
            await submit_ok(b, job)
        (r,) = await b.fetch(W1, ["default"], 1, LONG_LEASE)
        assert r.job_id == retrying.id
        assert await b.fail(r.id, W1, ERROR, NEVER_S) == "retry"
        assert await b.cancel(cancelled.id) == "ok"
        (f,) = await b.start(W1, [f"{finished.id}:0"], LONG_LEASE)
        assert await b.complete(f.id, W1, b"1") == "ok"
        assert (await job_of(b, finished.id))["state"] == "succeeded"
        names = [
            r.id,
            f"{cancelled.id}:0",
            f"{cancelled.id}:1",
            f.id,
            f"{finished.id}:5",
            "no-such-job:0",
            f"{retrying.id}:x",
            f"{retrying.id}:00",
            f"{retrying.id}",
            ":0",
            "",
        ]
        assert await b.start(W1, names, LONG_LEASE) == []
        assert await b.start(W1, [], LONG_LEASE) == []
        assert counts(await job_of(b, retrying.id))["retrying"] == 1
        assert (await job_of(b, cancelled.id))["state"] == "cancelled"

    run_relay(store, scenario)


def test_a_started_task_is_not_claimed_and_a_lost_lease_puts_it_back(store: Store) -> None:
    job = make_job({"task": "t", "inputs": [1]})

    async def scenario(b: RelayBroker) -> None:
        await b.enable_relay()
        await submit_ok(b, job)
        (tid,) = await ready_again(b, "default", 1)
        (message,) = await b.start(W1, [tid], 0.05)
        assert message.attempt == 1
        assert await claim(b, 0.0) == []  # running: its old entry is dropped
        await eventually(lambda: b.reclaim_expired(3), "the lease to expire")
        assert await claim(b) == [(tid, "default", 0)]
        (again,) = await b.start(W2, [tid], LONG_LEASE)
        assert again.attempt == 2

    run_relay(store, scenario)


# -- SQLite only: the submit hold --------------------------------------------------------------


def test_sqlite_submit_entries_show_after_the_hold_unless_settled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_ops, "SUBMIT_HOLD_S", 0.2)
    store = Store(f"sqlite:///{tmp_path}/sje.db", "sje")
    published = make_job({"task": "t", "inputs": [1, 2], "queue": "q", "priority": 4})
    orphaned = make_job({"task": "t", "inputs": [1], "queue": "q", "priority": 4})

    async def scenario(b: RelayBroker) -> None:
        await b.enable_relay()
        await submit_ok(b, published)
        await submit_ok(b, orphaned)
        assert await claim(b, 0.0) == []
        await b.settle_outbox([f"{published.id}:0", f"{published.id}:1"])

        async def visible() -> list[Entry]:
            return await claim(b)

        assert await eventually(visible, "the hold to pass") == [(f"{orphaned.id}:0", "q", 4)]
        await later_than(b, 0.25)
        assert await claim(b, 0.0) == []

    run_relay(store, scenario)
