"""Faults with real processes: killed and stopped workers, master restarts, retries, timeouts."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import redis

import sje
from tests.support import Proc, event_kind, events_of, start_master, wait_until

WAIT = "tests.apps.sample_tasks.started_then_wait"


def _waiters(tmp_path: Path, n: int) -> list[dict[str, object]]:
    """Inputs for ``started_then_wait``: each task runs until the test calls ``_release``."""
    started, release = tmp_path / "started", tmp_path / "release"
    return [{"value": i, "started": str(started), "release": str(release)} for i in range(n)]


def _release(tmp_path: Path) -> None:
    (tmp_path / "release").touch()


def _started(tmp_path: Path) -> int:
    folder = tmp_path / "started"
    return len(list(folder.iterdir())) if folder.exists() else 0


def test_sigkilled_worker_tasks_are_redelivered_after_the_lease_and_job_completes(
    master: str, worker: Callable[..., Proc], r: redis.Redis, prefix: str, tmp_path: Path
) -> None:
    victim = worker("--concurrency", "2", "--name", "victim")
    children = wait_until(lambda: psutil.Process(victim.pid).children(), 10, "worker children")
    handle = sje.Client(master).submit(
        {
            "task": WAIT,
            "inputs": _waiters(tmp_path, 6),
        }
    )
    wait_until(lambda: _started(tmp_path) >= 1, 30, "a task to start on the victim")
    victim.signal(signal.SIGKILL)
    victim.wait(10)
    # the kernel kills the children with their worker
    wait_until(
        lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children),
        10,
        "the victim's children to die",
    )
    _release(tmp_path)
    worker("--concurrency", "2", "--name", "rescuer")
    assert handle.result(timeout=60) == list(range(6))
    kinds = [event_kind(e) for e in events_of(r, prefix, handle.id)]
    assert "task.queued:redelivered" in kinds


def test_sigterm_hands_back_unstarted_work_at_once_and_finishes_in_flight(
    master: str, worker: Callable[..., Proc], r: redis.Redis, prefix: str, tmp_path: Path
) -> None:
    first = worker("--concurrency", "1", "--name", "first")
    handle = sje.Client(master).submit(
        {
            "task": WAIT,
            "inputs": _waiters(tmp_path, 4),
        }
    )
    wait_until(lambda: _started(tmp_path) >= 1, 30, "the first task to start")
    first.signal(signal.SIGTERM)
    wait_until(lambda: first.find("stopping: waiting tasks handed back"), 30, "the stop to begin")
    _release(tmp_path)  # the running task ends within the grace period
    assert first.wait(30) == 0
    second = worker("--concurrency", "2", "--name", "second")
    assert handle.result(timeout=60) == list(range(4))
    events = events_of(r, prefix, handle.id)
    by_first = [
        e for e in events if e["type"] == "task.succeeded" and e["worker"].startswith("first-")
    ]
    assert len(by_first) == 1, "the in-flight task finishes within the grace period"
    assert not [e for e in events if event_kind(e) == "task.queued:redelivered"], (
        "no lease had to expire"
    )
    assert second.popen.poll() is None


def test_sigterm_after_grace_hands_back_running_tasks_immediately(
    master: str,
    env: dict[str, str],
    worker: Callable[..., Proc],
    r: redis.Redis,
    prefix: str,
    tmp_path: Path,
) -> None:
    env["SJE_SHUTDOWN_GRACE"] = "0"
    first = worker("--concurrency", "2", "--name", "first")
    handle = sje.Client(master).submit({"task": WAIT, "inputs": _waiters(tmp_path, 2)})
    wait_until(lambda: _started(tmp_path) >= 2, 30, "both tasks to start")
    first.signal(signal.SIGTERM)
    assert first.wait(30) == 0
    released = [
        e for e in events_of(r, prefix, handle.id) if event_kind(e) == "task.queued:released"
    ]
    assert len(released) == 2
    assert r.zcard(f"{prefix}:q:default") == 2, "handed-back tasks are queued again at once"
    handle.cancel()


def test_busy_worker_does_not_hoard_tasks_an_idle_worker_can_run(
    master: str, worker: Callable[..., Proc], tmp_path: Path
) -> None:
    worker("--concurrency", "1", "--name", "busy")
    items = _waiters(tmp_path, 4)
    for item in items[1:]:
        del item["release"]  # only the first task waits (and is never released)
    handle = sje.Client(master).submit({"task": WAIT, "inputs": items})
    wait_until(lambda: _started(tmp_path) >= 1, 30, "the long task to start")
    worker("--concurrency", "1", "--name", "idle")
    # only a worker that fetched no more than its free slot leaves the short tasks to the other
    wait_until(lambda: handle.status()["tasks"]["succeeded"] == 3, 30, "the short tasks")
    assert handle.status()["tasks"]["running"] == 1
    handle.cancel()


def test_prefetched_tasks_stuck_behind_a_long_task_are_handed_back(
    master: str, worker: Callable[..., Proc], tmp_path: Path
) -> None:
    busy = worker("--concurrency", "1", "--name", "busy")
    with sje.Client(master) as client:
        # short tasks first: the worker learns they are short and starts to prefetch
        warm = client.submit({"task": "tests.apps.sample_tasks.square", "inputs": list(range(300))})
        assert warm.result(timeout=60) == [x * x for x in range(300)]
        # more than its child can queue behind the long task (up to 32): the rest is prefetch
        items = _waiters(tmp_path, 48)
        for item in items[1:]:
            del item["release"]  # only the first task waits (and is never released)
        handle = client.submit({"task": WAIT, "inputs": items})
        wait_until(lambda: _started(tmp_path) >= 1, 30, "the long task to start")
        wait_until(
            lambda: busy.find("handing back"), 30, "the busy worker to hand back its prefetch"
        )
        worker("--concurrency", "1", "--name", "idle")
        # 47: also those queued in the busy worker's child behind the long task (recalled)
        wait_until(lambda: handle.status()["tasks"]["succeeded"] == 47, 30, "the short tasks")
        assert handle.status()["tasks"]["running"] == 1
        handle.cancel()


def test_master_killed_and_restarted_mid_job_still_completes(
    env: dict[str, str], worker: Callable[..., Proc], procs: list[Proc], tmp_path: Path
) -> None:
    old, url = start_master(env)
    procs.append(old)
    env["SJE_MASTER"] = url
    worker("--concurrency", "2")
    handle = sje.Client(url).submit(
        {
            "task": WAIT,
            "inputs": _waiters(tmp_path, 8),
        }
    )
    wait_until(lambda: _started(tmp_path) >= 1, 30, "the job to start")
    old.signal(signal.SIGKILL)
    old.wait(10)
    _release(tmp_path)
    new, new_url = start_master(env)
    procs.append(new)
    assert sje.Client(new_url).job(handle.id).result(timeout=60) == list(range(8))


def test_two_masters_share_the_work_of_one_store(
    env: dict[str, str], worker: Callable[..., Proc], procs: list[Proc]
) -> None:
    a, url_a = start_master(env)
    b, url_b = start_master(env)
    procs.extend([a, b])
    worker("--concurrency", "1")
    handle = sje.Client(url_a).submit({"task": "tests.apps.sample_tasks.square", "inputs": [5]})
    assert sje.Client(url_b).job(handle.id).result(timeout=60) == [25]


def test_long_task_keeps_its_lease_and_runs_exactly_once(
    master: str,
    env: dict[str, str],
    worker: Callable[..., Proc],
    r: redis.Redis,
    prefix: str,
    tmp_path: Path,
) -> None:
    env["SJE_LEASE_TIMEOUT"] = "1"
    env["SJE_HEARTBEAT_INTERVAL"] = "0.2"
    worker("--concurrency", "1")
    log, release = tmp_path / "runs.log", tmp_path / "release"
    handle = sje.Client(master).submit(
        {
            "task": "tests.apps.sample_tasks.record",
            "inputs": [{"value": 1, "log": str(log), "release": str(release)}],
        }
    )
    wait_until(lambda: handle.status()["tasks"]["running"] == 1, 30, "the task to start")
    running_since = time.monotonic()
    # let it run past three and a half lease timeouts, renewed by heartbeats all along
    wait_until(lambda: time.monotonic() - running_since >= 3.5, 10, "3.5 lease timeouts")
    assert handle.status()["tasks"]["running"] == 1
    release.touch()
    assert handle.result(timeout=60) == [1]
    assert len(log.read_text().splitlines()) == 1
    assert "task.queued:redelivered" not in [event_kind(e) for e in events_of(r, prefix, handle.id)]


def test_raising_task_is_retried_per_policy_then_job_fails_with_traceback(
    master: str, worker: Callable[..., Proc], r: redis.Redis, prefix: str
) -> None:
    worker("--concurrency", "1")
    handle = sje.Client(master).submit(
        {"task": "tests.apps.sample_tasks.boom", "inputs": ["x"], "retries": 2, "backoff": 0.05}
    )
    with pytest.raises(sje.JobFailed) as failure:
        handle.result(timeout=60)
    assert "attempt 3" in failure.value.message
    assert "ValueError: boom on 'x'" in failure.value.message
    status = handle.status()
    assert status["state"] == "failed"
    error = status["task_errors"]["0"]
    assert error["attempt"] == 3
    assert "raise ValueError" in error["traceback"]
    kinds = [event_kind(e) for e in events_of(r, prefix, handle.id)]
    assert kinds.count("task.retrying") == 2
    assert kinds.count("task.started") == 3


def test_flaky_task_succeeds_within_its_retries(
    master: str, worker: Callable[..., Proc], tmp_path: Path
) -> None:
    worker("--concurrency", "1")
    item = {"marker": str(tmp_path / "calls"), "fail_times": 2}
    handle = sje.Client(master).submit(
        {"task": "tests.apps.sample_tasks.flaky", "inputs": [item], "retries": 3, "backoff": 0.05}
    )
    assert handle.result(timeout=60) == ["ok after 3"]


def test_hanging_task_is_killed_at_its_timeout_and_the_worker_keeps_serving(
    master: str, worker: Callable[..., Proc]
) -> None:
    w = worker("--concurrency", "1")
    client = sje.Client(master)
    hung = client.submit({"task": "tests.apps.sample_tasks.hang", "inputs": [1], "timeout": 1})
    with pytest.raises(sje.JobFailed, match=r"TaskTimeout: task timed out after 1\.0s"):
        hung.result(timeout=60)
    after = client.submit({"task": "tests.apps.sample_tasks.square", "inputs": [9]})
    assert after.result(timeout=60) == [81]
    assert w.popen.poll() is None


def test_hanging_async_task_is_cancelled_at_its_timeout(
    master: str, worker: Callable[..., Proc]
) -> None:
    worker("--concurrency", "1")
    client = sje.Client(master)
    hung = client.submit(
        {"task": "tests.apps.sample_tasks.async_hang", "inputs": [1], "timeout": 1}
    )
    with pytest.raises(sje.JobFailed, match=r"TaskTimeout: task timed out after 1\.0s"):
        hung.result(timeout=60)
    after = client.submit({"task": "tests.apps.sample_tasks.async_square", "inputs": [5]})
    assert after.result(timeout=60) == [25]


def test_crashing_child_fails_only_its_task_and_is_replaced(
    master: str, worker: Callable[..., Proc]
) -> None:
    w = worker("--concurrency", "1")
    client = sje.Client(master)
    crashed = client.submit({"task": "tests.apps.sample_tasks.die", "inputs": [1]})
    with pytest.raises(
        sje.JobFailed, match=r"ChildCrashed: the child process .* died \(signal 9\)"
    ):
        crashed.result(timeout=60)
    assert client.submit({"task": "tests.apps.sample_tasks.square", "inputs": [4]}).result(
        timeout=60
    ) == [16]
    assert w.popen.poll() is None


def test_a_task_queued_in_a_child_that_crashes_is_handed_back_not_failed(
    master: str, worker: Callable[..., Proc], r: redis.Redis, prefix: str, tmp_path: Path
) -> None:
    worker("--concurrency", "1")
    with sje.Client(master) as client:
        # short tasks first: the worker learns they are short and queues one behind another
        warm = client.submit({"task": "tests.apps.sample_tasks.square", "inputs": list(range(300))})
        assert warm.result(timeout=60) == [x * x for x in range(300)]
        gate = {"started": str(tmp_path / "started"), "release": str(tmp_path / "release")}
        crash = client.submit(
            {"task": "tests.apps.sample_tasks.die", "inputs": [gate], "retries": 0}
        )
        wait_until((tmp_path / "started" / "die").exists, 30, "the crashing task to start")
        log = tmp_path / "record.log"
        items = [{"value": i, "log": str(log)} for i in range(3)]
        after = client.submit({"task": "tests.apps.sample_tasks.record", "inputs": items})
        wait_until(lambda: r.zcard(f"{prefix}:q:default") == 0, 30, "the tasks to be fetched")
        _release(tmp_path)
        with pytest.raises(sje.JobFailed, match="ChildCrashed"):
            crash.result(timeout=60)
        assert after.result(timeout=60) == [0, 1, 2]
        assert sorted(line.split()[0] for line in log.read_text().splitlines()) == ["0", "1", "2"]
        kinds = [event_kind(e) for e in events_of(r, prefix, after.id)]
        assert "task.queued:released" in kinds, "the task queued in the child was handed back"
        assert not [k for k in kinds if k.startswith(("task.retrying", "task.failed"))], kinds


def test_cancel_drops_queued_tasks_and_stops_running_ones(
    master: str, worker: Callable[..., Proc], r: redis.Redis, prefix: str, tmp_path: Path
) -> None:
    w = worker("--concurrency", "1")
    client = sje.Client(master)
    handle = client.submit(
        {
            "task": WAIT,
            "inputs": _waiters(tmp_path, 5),
        }
    )
    wait_until(lambda: _started(tmp_path) == 1, 30, "the first task to start")
    view = handle.cancel()
    assert view["cancelled"] is True and view["state"] == "cancelled"
    assert view["tasks"]["cancelled"] == 5
    assert r.zcard(f"{prefix}:q:default") == 0
    # the running task's child is killed at the next heartbeat: the worker is free again
    after = client.submit({"task": "tests.apps.sample_tasks.square", "inputs": [3]})
    assert after.result(timeout=30) == [9]
    with pytest.raises(sje.JobFailed, match="cancelled"):
        handle.result(timeout=10)
    assert handle.cancel()["cancelled"] is False
    assert w.popen.poll() is None


def test_job_timeout_ends_the_job_as_timed_out(master: str, worker: Callable[..., Proc]) -> None:
    worker("--concurrency", "1")
    handle = sje.Client(master).submit(
        {"task": "tests.apps.sample_tasks.hang", "inputs": [1, 2], "job-timeout": "1s"}
    )
    with pytest.raises(sje.JobTimeout) as timeout:
        handle.result(timeout=60)
    assert timeout.value.message == (
        f"Job timeout: job {handle.id} ran longer than its job-timeout of 1.0s"
    )
    assert handle.status()["state"] == "timed_out"


def test_waiting_with_a_timeout_gives_up_without_touching_the_job(
    master: str, worker: Callable[..., Proc]
) -> None:
    worker("--concurrency", "1")
    handle = sje.Client(master).submit({"task": "tests.apps.sample_tasks.hang", "inputs": [1]})
    with pytest.raises(sje.JobTimeout, match=r"did not finish within 1\.5s of waiting"):
        handle.wait(timeout=1.5)
    assert handle.status()["state"] in ("pending", "running")
    handle.cancel()


def test_unregistered_task_name_fails_on_the_worker_with_a_clear_reason(
    master: str, worker: Callable[..., Proc]
) -> None:
    worker("--concurrency", "1")
    handle = sje.Client(master).submit(
        {"task": "os.system", "args": ["echo pwned"], "allow-unknown-task": True}
    )
    with pytest.raises(sje.JobFailed, match=r"UnknownTask: task 'os\.system' is not registered"):
        handle.result(timeout=60)
    assert handle.status()["tasks"]["dead"] == 1


def test_result_that_is_not_json_fails_the_task_with_a_clear_reason(
    master: str, worker: Callable[..., Proc]
) -> None:
    worker("--concurrency", "1")
    handle = sje.Client(master).submit({"task": "tests.apps.sample_tasks.not_json", "args": [1]})
    with pytest.raises(sje.JobFailed, match="returned a object, which is not JSON"):
        handle.result(timeout=60)
