"""Delivery when Redis fails: kill -9 and restart (AOF, appendfsync everysec), and a 10 s
SIGSTOP. Every SJE process must ride it out by itself; counts come from marker files."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

import sje
from tests.support import (
    Proc,
    RedisServer,
    api_client,
    overlapping_runs,
    read_runs,
    runs_by_index,
    wait_until,
)

MARK = "tests.apps.fault_tasks.mark"
FAULT_TASKS = ("--tasks", "tests.apps.fault_tasks")


def inputs(folder: Path, n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"index": i, "dir": str(folder), **extra} for i in range(n)]


@dataclass
class Ack:
    job_id: str
    sent: float  # time.monotonic() when the request left
    received: float  # ... and when the job id came back
    runs_dir: Path


@dataclass
class Submitter:
    """Submits one-task jobs back to back from a thread, recording what was acknowledged
    and what failed, until ``stop`` is set."""

    env: dict[str, str]
    folder: Path
    acks: list[Ack] = field(default_factory=list)
    errors: list[tuple[float, Exception]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        client = api_client(self.env)
        k = 0
        while not self.stop.is_set():
            runs_dir = self.folder / str(k)
            k += 1
            sent = time.monotonic()
            try:
                handle = client.submit({"task": MARK, "inputs": inputs(runs_dir, 1)})
            except Exception as exc:  # recorded, judged by the test
                self.errors.append((time.monotonic(), exc))
                continue
            self.acks.append(Ack(handle.id, sent, time.monotonic(), runs_dir))

    def acked_after(self, t: float) -> int:
        return sum(1 for ack in self.acks if ack.sent > t)


def job_states(r: redis.Redis, prefix: str, ids: list[str]) -> list[str | None]:
    pipe = r.pipeline(transaction=False)
    for jid in ids:
        pipe.hget(f"{prefix}:job:{jid}", "state")
    return [None if s is None else s.decode() for s in pipe.execute()]


def seen_ms(r: redis.Redis, prefix: str) -> dict[str, float]:
    """Each registered worker's last heartbeat, in Redis-clock milliseconds."""
    seen: Any = r.zrange(f"{prefix}:seen", 0, -1, withscores=True)
    return {wid.decode(): score for wid, score in seen}


def redis_ms(r: redis.Redis) -> float:
    seconds, micros = r.time()
    return seconds * 1000 + micros / 1000


def is_clear_broker_error(exc: Exception, port: int) -> bool:
    return isinstance(exc, sje.BrokerError) and f"Redis at 127.0.0.1:{port}" in exc.message


@dataclass
class Call:
    """A client call made while Redis is stopped, run in a thread."""

    name: str
    fn: Callable[[], Any]
    value: Any = None
    error: Exception | None = None
    ended: float = 0.0  # time.monotonic() when it returned or raised

    def __call__(self) -> None:
        try:
            self.value = self.fn()
        except Exception as exc:  # judged by the test
            self.error = exc
        self.ended = time.monotonic()


def test_redis_kill9_and_restart_loses_no_acknowledged_job_and_everyone_reconnects(
    env: dict[str, str],
    master: str,
    worker: Callable[..., Proc],
    redis_server: RedisServer,
    procs: list[Proc],
    r: redis.Redis,
    prefix: str,
    tmp_path: Path,
) -> None:
    """Redis writes each command to the AOF (``write(2)``) before it answers, and a kill -9
    of Redis alone does not lose what reached the kernel: every job whose id came back
    should survive. ``appendfsync everysec`` only promises the data on disk up to ~1 s
    late (what a crash of the machine could lose, or Redis alone when it postponed a write
    behind a slow fsync), so this asserts: (1) every job acknowledged more than 1 s before
    the kill, and every job submitted after the restart, exists and succeeds; (2) a job
    acknowledged within that last second either exists and succeeds or left no trace at
    all. Jobs refused during the outage must have been refused with the Redis error."""
    workers = [worker(*FAULT_TASKS, "--concurrency", "2") for _ in range(2)]
    client = api_client(env)
    big_dir, big_gate = tmp_path / "big", tmp_path / "big-gate"
    # the big job's first tasks hold every slot across the outage; the gate opens after it
    big = client.submit({"task": MARK, "inputs": inputs(big_dir, 30, gate=str(big_gate))})
    submitter = Submitter(env, tmp_path / "small")
    thread = threading.Thread(target=submitter.run)
    waiter = Call("wait", lambda: api_client(env).job(big.id).wait(timeout=120))
    waiting = threading.Thread(target=waiter)
    thread.start()
    try:
        wait_until(
            lambda: len(submitter.acks) >= 30 and len(read_runs(big_dir)) == 4,
            60,
            "submissions to be acknowledged while the big job runs",
        )
        waiting.start()
        killed = time.monotonic()
        redis_server.kill()
        # down until the master has refused a submission and every worker has hit the outage
        wait_until(
            lambda: submitter.errors and all(w.find("Cannot reach Redis") for w in workers),
            30,
            "the outage to be noticed by the master and both workers",
        )
        redis_server.start()  # same port and directory: the AOF reloads
        restarted = time.monotonic()
        big_gate.touch()
        # everyone reconnects by itself: acknowledgements resume and workers heartbeat again
        after_restart = redis_ms(r)
        wait_until(lambda: submitter.acked_after(restarted) >= 20, 20, "acks after the restart")
        wait_until(
            lambda: (
                len(seen_ms(r, prefix)) == 2
                and all(ms > after_restart for ms in seen_ms(r, prefix).values())
            ),
            20,
            "both workers to heartbeat again",
        )
        reconnected = time.monotonic() - restarted
    finally:
        submitter.stop.set()
        thread.join(60)
    waiting.join(120)
    # a client waiting across the outage gets the outcome, or a clear error naming Redis
    if waiter.error is None:
        assert waiter.value["state"] == "succeeded"
    else:
        assert is_clear_broker_error(waiter.error, redis_server.port), repr(waiter.error)

    assert big.result(timeout=60) == list(range(30))
    acks = submitter.acks
    ids = [ack.job_id for ack in acks]
    strict = [ack for ack in acks if ack.received < killed - 1.0 or ack.sent > restarted]
    states = dict(zip(ids, job_states(r, prefix, ids), strict=True))
    lost = [ack.job_id for ack in strict if states[ack.job_id] is None]
    assert lost == [], f"acknowledged jobs lost by the Redis restart: {lost}"
    window = [ack for ack in acks if ack not in strict]
    vanished = [ack for ack in window if states[ack.job_id] is None]
    for ack in vanished:
        assert list(r.scan_iter(match=f"{prefix}:job:{ack.job_id}*")) == []
    present = [jid for jid in ids if states[jid] is not None]
    wait_until(
        lambda: set(job_states(r, prefix, present)) == {"succeeded"}, 60, "every job to succeed"
    )
    for ack in acks:
        if ack.job_id in present:
            assert any(run.finished for run in read_runs(ack.runs_dir)), ack
    # at least once, and never two runs of one task at the same time
    assert overlapping_runs(read_runs(big_dir)) == []
    assert all(overlapping_runs(read_runs(ack.runs_dir)) == [] for ack in acks)
    assert all(is_clear_broker_error(exc, redis_server.port) for _, exc in submitter.errors), [
        f"{type(exc).__name__}: {exc}" for _, exc in submitter.errors
    ]
    assert reconnected < 10
    assert [p.output() for p in procs if p.popen.poll() is not None] == []


def test_redis_sigstopped_for_10s_stalls_calls_but_crashes_and_duplicates_nothing(
    env: dict[str, str],
    master: str,
    worker: Callable[..., Proc],
    redis_server: RedisServer,
    procs: list[Proc],
    tmp_path: Path,
) -> None:
    for _ in range(2):
        worker(*FAULT_TASKS, "--concurrency", "2")
    client = api_client(env)
    # a task that runs across the whole stop: its lease must survive it (submitted first, so
    # it takes one slot before the other job's tasks take the other three)
    gate = tmp_path / "gate"
    long_dir = tmp_path / "long"
    long = client.submit({"task": MARK, "inputs": inputs(long_dir, 1, gate=str(gate))})
    # three tasks running when Redis stops, which finish during the stop (stop_gate below)
    runs_dir, stop_gate = tmp_path / "runs", tmp_path / "stop-gate"
    job = client.submit({"task": MARK, "inputs": inputs(runs_dir, 40, gate=str(stop_gate))})
    wait_until(
        lambda: len(read_runs(runs_dir)) == 3 and read_runs(long_dir), 60, "both jobs to run"
    )
    waiter = Call("wait", lambda: api_client(env).job(job.id).wait(timeout=120))
    small_dir = tmp_path / "small"
    submit = Call("submit", lambda: client.submit({"task": MARK, "inputs": inputs(small_dir, 1)}))
    calls = [
        waiter,
        submit,
        Call("status", lambda: api_client(env).job(job.id).status()),
        Call("health", lambda: api_client(env).health()),
    ]
    redis_server.pause()
    stopped = time.monotonic()
    stop_gate.touch()
    threads = [threading.Thread(target=call) for call in calls]
    for thread in threads:
        thread.start()
    # ten seconds of SIGSTOP, every SJE process watched for a crash all along
    wait_until(
        lambda: any(p.popen.poll() is not None for p in procs) or time.monotonic() - stopped >= 10,
        30,
        "ten seconds of stop",
        every=0.1,
    )
    assert [p.output() for p in procs if p.popen.poll() is not None] == []
    redis_server.resume()
    resumed = time.monotonic()
    for thread in threads:
        thread.join(60)

    # each call made during the stop failed with a clear error or succeeded after the resume
    for call in calls:
        if call.error is None:
            assert call.ended >= resumed, call.name
        else:
            assert is_clear_broker_error(call.error, redis_server.port), (
                f"{call.name} during the stop: {type(call.error).__name__}: {call.error}"
            )
    assert job.result(timeout=60) == list(range(40))
    gate.touch()
    assert long.result(timeout=60) == [0]
    by_index = runs_by_index(read_runs(runs_dir))
    assert {i: len(same) for i, same in by_index.items()} == {i: 1 for i in range(40)}
    assert len(read_runs(long_dir)) == 1, "the task running across the stop kept its lease"
    if submit.error is None:
        assert submit.value.result(timeout=60) == [0]
        assert len(read_runs(small_dir)) == 1
    assert [p.output() for p in procs if p.popen.poll() is not None] == []
