"""Admission under pressure: a queue at its bound refuses exactly the overflow, and
concurrent submissions under one idempotency key make one job that runs once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

import sje
from tests.support import (
    Proc,
    api_client,
    auth,
    read_runs,
    run_sje,
    runs_by_index,
    start_master,
)

MARK = "tests.apps.fault_tasks.mark"
FAULT_TASKS = ("--tasks", "tests.apps.fault_tasks")


def job(folder: Path, n: int, **options: Any) -> dict[str, Any]:
    items = [{"index": i, "dir": str(folder)} for i in range(n)]
    return {"task": MARK, "inputs": items, "allow-unknown-task": True, **options}


def at_once(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """``fn(0) .. fn(n-1)`` from ``n`` threads released together; their results in order."""
    barrier = threading.Barrier(n)
    out: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait(30)
        try:
            out[i] = fn(i)
        except Exception as exc:  # judged by the caller
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return out


def submit_file(tmp_path: Path, name: str, task_def: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"jobs:\n  - name: {name}\n    task-def:\n{task_def}")
    return str(path)


def test_queue_bound_refuses_exactly_the_overflow_and_everything_accepted_runs(
    env: dict[str, str],
    procs: list[Proc],
    worker: Callable[..., Proc],
    r: redis.Redis,
    prefix: str,
    tmp_path: Path,
) -> None:
    proc, url = start_master({**env, "SJE_MAX_QUEUE_LENGTH": "10"})
    procs.append(proc)
    env["SJE_MASTER"] = url
    client = api_client(env)
    runs = tmp_path / "runs"
    accepted: dict[str, tuple[Path, int]] = {}  # job id -> (its marker folder, its tasks)

    def submit(name: str, n: int) -> None:
        handle = client.submit(job(runs / name, n))
        accepted[handle.id] = (runs / name, n)

    # no worker yet, so the queue only fills: a job is refused whole when it does not fit
    submit("a", 4)
    with pytest.raises(sje.QueueFull) as full:
        submit("too-big", 7)
    assert full.value.message.startswith(
        "Queue full: queue 'default' holds 4 tasks and its bound is 10 (max-queue-length); "
        "this job adds 7."
    )
    submit("b", 3)
    assert r.zcard(f"{prefix}:q:default") == 7
    # eight one-task jobs race for the last three places
    raced = at_once(8, lambda i: submit(f"race-{i}", 1))
    assert sum(outcome is None for outcome in raced) == 3
    refused = [outcome for outcome in raced if outcome is not None]
    assert len(refused) == 5 and all(isinstance(x, sje.QueueFull) for x in refused), refused
    assert r.zcard(f"{prefix}:q:default") == 10
    # the same refusal over plain HTTP and from the command line
    reply = httpx.post(f"{url}/api/v1/jobs", json=job(runs / "http", 1), headers=auth(env))
    assert reply.status_code == 429
    assert reply.headers["retry-after"].isdigit()
    assert reply.json()["error"]["code"] == "queue_full"
    assert reply.json()["error"]["message"].startswith("Queue full: queue 'default' holds 10")
    cli_def = f"      task: {MARK}\n      inputs: [{{index: 0, dir: '{runs / 'cli'}'}}]\n"
    cli_def += "      allow-unknown-task: true\n"
    done = run_sje("submit", "cli", "--config", submit_file(tmp_path, "cli", cli_def), env=env)
    assert done.returncode == 6, done.stderr
    assert "Queue full: queue 'default' holds 10 tasks and its bound is 10" in done.stderr
    assert r.zcard(f"{prefix}:jobs") == len(accepted) == 5

    worker(*FAULT_TASKS, "--concurrency", "2")
    for jid, (_, n) in accepted.items():
        assert client.job(jid).result(timeout=60) == list(range(n))
    # the bound is on what waits, not on what ever ran: a drained queue takes a full job again
    submit("after", 10)
    assert client.job(list(accepted)[-1]).result(timeout=60) == list(range(10))
    ran = {path.name: runs_by_index(read_runs(path)) for path in runs.iterdir()}
    expected = {folder.name: n for folder, n in accepted.values()}
    assert {name: len(by_index) for name, by_index in ran.items()} == expected
    assert all(len(same) == 1 for by_index in ran.values() for same in by_index.values())


def test_concurrent_submissions_with_one_idempotency_key_make_one_job_that_runs_once(
    env: dict[str, str],
    master: str,
    worker: Callable[..., Proc],
    r: redis.Redis,
    prefix: str,
    tmp_path: Path,
) -> None:
    worker(*FAULT_TASKS, "--concurrency", "2")
    runs = tmp_path / "runs"
    definition = job(runs, 5, **{"idempotency-key": "nightly-2026-11-27"})

    def post(_: int) -> httpx.Response:
        return httpx.post(f"{master}/api/v1/jobs", json=definition, headers=auth(env), timeout=60)

    replies = at_once(10, post)
    assert all(isinstance(reply, httpx.Response) for reply in replies), replies
    bodies = [reply.json() for reply in replies]
    ids = {body["id"] for body in bodies}
    assert len(ids) == 1, bodies
    (job_id,) = ids
    assert sorted(reply.status_code for reply in replies) == [200] * 9 + [201]
    assert sum(body["duplicate"] for body in bodies) == 9
    client = api_client(env)
    assert client.job(job_id).result(timeout=60) == list(range(5))
    # once finished, the same submission still names the same job and runs nothing new
    assert client.submit(definition).id == job_id
    # the same key with another definition is a conflict: HTTP 409, exit code 5
    other = job(runs, 6, **{"idempotency-key": "nightly-2026-11-27"})
    with pytest.raises(sje.IdempotencyConflict) as conflict:
        client.submit(other)
    assert f"already belongs to job {job_id}" in conflict.value.message
    reply = httpx.post(f"{master}/api/v1/jobs", json=other, headers=auth(env))
    assert reply.status_code == 409
    assert reply.json()["error"]["code"] == "idempotency_conflict"
    cli_def = f"      task: {MARK}\n      inputs: [{{index: 0, dir: '{runs}'}}]\n"
    cli_def += "      idempotency-key: nightly-2026-11-27\n      allow-unknown-task: true\n"
    done = run_sje("submit", "other", "--config", submit_file(tmp_path, "other", cli_def), env=env)
    assert done.returncode == 5, done.stderr
    assert "Idempotency key 'nightly-2026-11-27' already belongs to job" in done.stderr

    by_index = runs_by_index(read_runs(runs))
    assert {i: len(same) for i, same in by_index.items()} == {i: 1 for i in range(5)}
    # one job stored, and nothing left behind by the submissions that lost the race
    stored: Any = r.zrange(f"{prefix}:jobs", 0, -1)
    assert stored == [job_id.encode()]
    job_keys = {key.decode().split(":")[2] for key in r.scan_iter(match=f"{prefix}:job:*")}
    assert job_keys == {job_id}
