"""Delivery when the master dies: mid-job (nothing lost, workers unaffected) and
mid-submission (the job is stored whole or not at all)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis

from tests.support import (
    Proc,
    api_client,
    auth,
    event_kind,
    events_of,
    read_runs,
    runs_by_index,
    start_master,
    wait_until,
)

MARK = "tests.apps.fault_tasks.mark"
FAULT_TASKS = ("--tasks", "tests.apps.fault_tasks")


def test_master_sigkilled_mid_job_a_new_master_sees_it_finish_and_workers_never_notice(
    env: dict[str, str],
    worker: Callable[..., Proc],
    procs: list[Proc],
    r: redis.Redis,
    prefix: str,
    tmp_path: Path,
) -> None:
    old, url = start_master(env)
    procs.append(old)
    env["SJE_MASTER"] = url
    workers = [worker(*FAULT_TASKS, "--concurrency", "2") for _ in range(2)]
    runs_dir, gate = tmp_path / "runs", tmp_path / "gate"
    items = [{"index": i, "dir": str(runs_dir), "gate": str(gate)} for i in range(20)]
    handle = api_client(env).submit({"task": MARK, "inputs": items})
    wait_until(lambda: len(read_runs(runs_dir)) == 4, 30, "the job to be under way")
    old.signal(signal.SIGKILL)
    old.wait(10)
    gate.touch()
    # the workers need no master: the whole job runs while none is up
    wait_until(
        lambda: sum(run.finished for run in read_runs(runs_dir)) == 20,
        30,
        "the job to go on without a master",
    )
    new, new_url = start_master(env)
    procs.append(new)

    assert api_client(env, new_url).job(handle.id).result(timeout=60) == list(range(20))
    by_index = runs_by_index(read_runs(runs_dir))
    assert {i: len(same) for i, same in by_index.items()} == {i: 1 for i in range(20)}
    assert all(same[0].finished for same in by_index.values())
    assert "task.queued:redelivered" not in [event_kind(e) for e in events_of(r, prefix, handle.id)]
    for w in workers:
        assert w.popen.poll() is None
        assert not [line for line in w.lines if " ERROR " in line], w.output()


def _keys(r: redis.Redis, pattern: str) -> list[str]:
    return sorted(k.decode() for k in r.scan_iter(match=pattern, count=10_000))


def _members(r: redis.Redis, key: str) -> list[str]:
    members: Any = r.zrange(key, 0, -1)
    return [member.decode() for member in members]


def _submission_state(r: redis.Redis, p: str, n: int) -> dict[str, Any]:
    """Every job of prefix ``p`` checked to be stored whole or absent without a trace that
    lasts: returns {"whole": [...ids], "absent": [...ids], "problems": [...]}."""
    ids = {key.removeprefix(f"{p}:job:").split(":")[0] for key in _keys(r, f"{p}:job:*")}
    indexed = set(_members(r, f"{p}:jobs"))
    queued_jobs = [member.split(":")[0] for member in _members(r, f"{p}:q:default")]
    state: dict[str, Any] = {"whole": [], "absent": [], "problems": []}
    for jid in sorted(ids):
        if r.exists(f"{p}:job:{jid}"):
            state["whole"].append(jid)
            record: Any = r.hgetall(f"{p}:job:{jid}")
            checks = {
                "indexed": jid in indexed,
                "n": record.get(b"n") == str(n).encode(),
                "c_queued": record.get(b"c_queued") == str(n).encode(),
                "inputs stored": r.hlen(f"{p}:job:{jid}:in") == n,
                "inputs kept": r.ttl(f"{p}:job:{jid}:in") == -1,
                "tasks queued": queued_jobs.count(jid) == n,
            }
            state["problems"] += [
                f"job {jid} exists but not {k}" for k, ok in checks.items() if not ok
            ]
        else:
            state["absent"].append(jid)
            if jid in indexed or jid in queued_jobs:
                state["problems"].append(f"job {jid} has no record but is indexed or queued")
            for key in _keys(r, f"{p}:job:{jid}*"):
                if r.ttl(key) == -1:
                    state["problems"].append(f"{key} of the never-stored job {jid} has no TTL")
    return state


def _kill_master_while_it_stores(
    env: dict[str, str], procs: list[Proc], r: redis.Redis, p: str, body: bytes
) -> list[object]:
    """Start a master on prefix ``p``, POST ``body`` and SIGKILL the master the moment the
    job's task inputs start arriving in Redis; returns the HTTP reply or error, if any."""
    proc, url = start_master({**env, "SJE_KEY_PREFIX": p})
    procs.append(proc)
    replies: list[object] = []
    headers = {**auth(env), "Content-Type": "application/json"}

    def post() -> None:
        try:
            replies.append(
                httpx.post(f"{url}/api/v1/jobs", content=body, headers=headers, timeout=120)
            )
        except httpx.HTTPError as exc:
            replies.append(exc)

    poster = threading.Thread(target=post)
    poster.start()
    wait_until(lambda: _keys(r, f"{p}:job:*:in") or replies, 60, "the master to store", every=0.002)
    proc.signal(signal.SIGKILL)
    proc.wait(10)
    poster.join(30)
    return replies


def test_master_sigkilled_mid_submission_leaves_the_job_whole_or_absent(
    env: dict[str, str], procs: list[Proc], r: redis.Redis, prefix: str
) -> None:
    n = 200_000
    job = {"task": "tests.apps.sample_tasks.square", "inputs": list(range(n))}
    body = orjson.dumps({**job, "allow-unknown-task": True})
    outcomes: list[dict[str, Any]] = []
    for attempt in range(6):
        p = f"{prefix}:attempt{attempt}"  # under the test's prefix, so cleaned up with it
        replies = _kill_master_while_it_stores(env, procs, r, p, body)
        state = _submission_state(r, p, n)
        # inputs arrived but no job record: the kill landed while the job was being stored
        landed = bool(state["absent"])
        outcomes.append({**state, "landed": landed, "reply": replies[:1]})
        assert state["problems"] == [], outcomes
        assert len(state["whole"]) + len(state["absent"]) <= 1, outcomes
        acknowledged = [x for x in replies if isinstance(x, httpx.Response) and x.is_success]
        assert len(acknowledged) <= len(state["whole"]), "an acknowledged job is whole"
        if landed:
            break
    assert outcomes[-1]["landed"], f"no kill landed while the job was being stored: {outcomes}"
