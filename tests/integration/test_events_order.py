"""Every event of a job reaches a subscriber in order, exactly once: through the master's SSE
route, with the sync and the async client, live and when resuming with ``Last-Event-ID``.

Real master and worker processes on a real Redis; the job's stored stream
(``P:job:<id>:ev``) is the reference every received sequence is compared with.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis

import sje
from sje.broker.redis_events import expand_all
from sje.client import SSEParser
from sje.events import event_view
from tests.support import Proc, api_client, auth, wait_until

TASKS = "tests.apps.monitor_tasks"
FAIL_FIRST = "tests.apps.monitor_tasks.fail_first"
HELD = "tests.apps.sample_tasks.started_then_wait"
Event = dict[str, Any]


def stored(r: redis.Redis, prefix: str, job_id: str) -> list[tuple[str, dict[str, str]]]:
    """The job's stored stream, oldest first, one (id, fields) per event: an entry holding the
    same event of several tasks is one event per task (see ``sje.broker.redis_events``)."""
    raw: Any = r.xrange(f"{prefix}:job:{job_id}:ev")  # redis-py types replies as a union
    return expand_all(raw)


def order_key(event_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in event_id.split("-"))


def with_ids(events: list[Event]) -> list[Event]:
    """The stored events among those received: all but the ``job.progress`` snapshots (which
    carry no event id; their ``id`` is the job's)."""
    return [e for e in events if e["type"] != "job.progress"]


def read_stream(
    url: str,
    env: dict[str, str],
    job_id: str,
    last_event_id: str | None = None,
    stop: Callable[[Event], bool] = lambda e: False,
) -> list[Event]:
    """A job's SSE stream read with the client's parser until the final snapshot, or until
    ``stop(event)``: then the connection is dropped."""
    headers = auth(env) | ({"Last-Event-ID": last_event_id} if last_event_id else {})
    parser, out = SSEParser(), []
    timeout = httpx.Timeout(30.0, connect=5.0)
    with (
        httpx.Client(base_url=url, headers=headers, timeout=timeout) as http,
        http.stream("GET", f"/api/v1/jobs/{job_id}/events") as response,
    ):
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            event = parser.feed(line)
            if event is not None:
                out.append(event)
                if stop(event):
                    return out
            if parser.finished:
                return out
    raise AssertionError(f"the event stream of job {job_id} ended before its final snapshot")


def assert_matches_store(events: list[Event], reference: list[tuple[str, dict[str, str]]]) -> None:
    """``events`` (as received) are exactly the stored ones: same ids in the same order, each
    once, with the stored fields, then one final snapshot."""
    ids = [e["id"] for e in with_ids(events)]
    assert ids == [i for i, _f in reference]
    assert all(order_key(a) < order_key(b) for a, b in itertools.pairwise(ids))
    job_id = events[-1]["id"]  # the final snapshot is the job record
    for event, (event_id, fields) in zip(with_ids(events), reference, strict=True):
        assert event == event_view(event_id, fields, job_id)
    assert events[-1]["type"] == "job.progress"
    assert events[-1]["state"] == "succeeded"


def assert_lifecycle(events: list[Event], n: int, retried: str) -> None:
    """Job events frame the task events; each task starts then succeeds; the task ``retried``
    fails once, is queued again for the retry and succeeds on its second attempt."""
    types = [e["type"] for e in events]
    assert types[0] == "job.submitted" and events[0]["tasks"] == n
    assert types[-1] == "job.succeeded"
    assert types.count("job.started") == 1
    assert types.index("job.started") < types.index("task.started")
    assert [t for t in types if t.startswith("job.")] == [
        "job.submitted",
        "job.started",
        "job.succeeded",
    ]
    per_task: dict[str, list[tuple[str, str, str]]] = {}
    for e in events:
        if e["type"].startswith("task."):
            per_task.setdefault(e["task"], []).append(
                (e["type"], str(e.get("attempt", "")), e.get("reason", ""))
            )
    assert sorted(per_task) == sorted(str(i) for i in range(n))
    for task, seen in per_task.items():
        if task == retried:
            assert seen == [
                ("task.started", "1", ""),
                ("task.retrying", "1", ""),
                ("task.queued", "", "retry"),
                ("task.started", "2", ""),
                ("task.succeeded", "2", ""),
            ]
        else:
            assert seen == [("task.started", "1", ""), ("task.succeeded", "1", "")], task


class Subscriber:
    """Collects a job's events on a thread: the sync client, or the async one."""

    def __init__(self, env: dict[str, str], job_id: str, use_async: bool) -> None:
        self.events: list[Event] = []
        self.errors: list[BaseException] = []
        self.env, self.job_id = env, job_id
        target = self._run_async if use_async else self._run_sync
        self.thread = threading.Thread(target=self._guard(target), daemon=True)
        self.thread.start()

    def _guard(self, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # reported by the test, not lost in the thread
                self.errors.append(exc)

        return run

    def _run_sync(self) -> None:
        with api_client(self.env) as client:
            for event in client.events(self.job_id, timeout=120):
                self.events.append(event)

    def _run_async(self) -> None:
        async def collect() -> None:
            client = sje.AsyncClient(self.env["SJE_MASTER"], token=self.env["SJE_TOKEN"])
            try:
                async for event in client.events(self.job_id):
                    self.events.append(event)
            finally:
                await client.aclose()

        asyncio.run(asyncio.wait_for(collect(), 120))

    def has(self, etype: str) -> bool:
        return any(e["type"] == etype for e in list(self.events))

    def finish(self) -> list[Event]:
        self.thread.join(150)
        assert not self.thread.is_alive(), "the subscriber did not reach the end of the job"
        assert self.errors == []
        return self.events


def test_a_subscriber_receives_every_event_of_a_job_in_order_once(
    master: str,
    env: dict[str, str],
    worker: Callable[..., Proc],
    r: redis.Redis,
    prefix: str,
    tmp_path: Path,
) -> None:
    items = [
        {"value": i, "marker": str(tmp_path / f"calls-{i}"), "fail_times": 1 if i == 2 else 0}
        for i in range(5)
    ]
    job = {
        "task": FAIL_FIRST,
        "name": "ordered",
        "inputs": items,
        "retries": 2,
        "backoff": 0.05,
        "allow-unknown-task": True,  # no worker has registered it yet
    }
    with api_client(env) as client:
        handle = client.submit(job)
        # both subscribe before any worker exists, so before the job starts
        subscribers = [Subscriber(env, handle.id, use_async) for use_async in (False, True)]
        wait_until(
            lambda: all(s.has("job.submitted") for s in subscribers),
            30,
            "both subscribers to receive job.submitted",
        )
        assert client.job(handle.id).status()["state"] == "pending"
        worker("--tasks", TASKS, "--concurrency", "2")
        sync_events, async_events = (sub.finish() for sub in subscribers)
        assert handle.result(timeout=30) == list(range(5))

    reference = stored(r, prefix, handle.id)
    assert_matches_store(sync_events, reference)
    assert_lifecycle(with_ids(sync_events), 5, retried="2")
    assert with_ids(async_events) == with_ids(sync_events)
    assert async_events[-1] == sync_events[-1]

    # resuming after any event gives exactly the ones after it, then the final snapshot
    for cut in range(len(reference)):
        rest = read_stream(master, env, handle.id, last_event_id=reference[cut][0])
        assert_matches_store(rest, reference[cut + 1 :])


def test_resuming_with_last_event_id_mid_job_gives_exactly_the_rest(
    master: str,
    env: dict[str, str],
    worker: Callable[..., Proc],
    r: redis.Redis,
    prefix: str,
    tmp_path: Path,
) -> None:
    worker("--concurrency", "2")
    gate = tmp_path / "release"
    items = [
        {"value": i, "started": str(tmp_path / "started"), "release": str(gate)} for i in range(3)
    ]
    with api_client(env) as client:
        handle = client.submit({"task": HELD, "inputs": items})
        first = read_stream(
            master, env, handle.id, stop=lambda e: e["type"] == "task.started"
        )  # then the connection is dropped, while every task is held
        assert client.job(handle.id).status()["state"] == "running"
        gate.touch()
        rest = read_stream(master, env, handle.id, last_event_id=with_ids(first)[-1]["id"])
        assert handle.result(timeout=60) == [0, 1, 2]

    reference = stored(r, prefix, handle.id)
    cut = len(with_ids(first))
    assert [e["id"] for e in with_ids(first)] == [i for i, _f in reference[:cut]]
    assert_matches_store(rest, reference[cut:])
    both = with_ids(first) + with_ids(rest)
    assert len({e["id"] for e in both}) == len(both) == len(reference)
    assert_lifecycle(both, 3, retried="none")
