"""``sje watch``: a job followed live in the terminal, its retries and failures as lines, the
exit code of its outcome; and its errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson

import sje
from tests.support import Proc, run_sje

TASKS = "tests.apps.monitor_tasks"


def test_watch_narrates_a_retry_and_exits_0_when_the_job_succeeds(
    master: str, env: dict[str, str], worker: Callable[..., Proc], tmp_path: Path
) -> None:
    worker("--tasks", TASKS, "--concurrency", "1")
    items = [
        {"value": i, "marker": str(tmp_path / f"m{i}"), "fail_times": 1 if i == 1 else 0}
        for i in range(3)
    ]
    job = sje.Client(master).submit(
        {"task": f"{TASKS}.fail_first", "inputs": items, "retries": 2, "backoff": 0.05}
    )
    done = run_sje("watch", job.id, env=env)
    assert done.returncode == 0, done.stderr
    assert f"Job {job.id} succeeded" in done.stdout
    assert "task 1 attempt 1 failed on " in done.stderr
    assert "retrying in " in done.stderr
    assert "3/3" in done.stderr  # the bar reached the end


def test_watch_json_prints_every_event_once_then_the_final_record(
    master: str, env: dict[str, str], worker: Callable[..., Proc], tmp_path: Path
) -> None:
    worker("--tasks", TASKS)
    items = [{"value": i, "marker": str(tmp_path / f"m{i}")} for i in range(2)]
    job = sje.Client(master).submit({"task": f"{TASKS}.fail_first", "inputs": items})
    done = run_sje("watch", job.id, "--json", env=env)
    assert done.returncode == 0, done.stderr
    events = [orjson.loads(line) for line in done.stdout.splitlines()]
    stored = [e for e in events if e["type"] != "job.progress"]
    assert stored[0]["type"] == "job.submitted"
    assert [e["id"] for e in stored] == sorted({e["id"] for e in stored}), "in order, once"
    assert sorted(e["task"] for e in stored if e["type"] == "task.succeeded") == ["0", "1"]
    assert events[-1]["type"] == "job.progress" and events[-1]["state"] == "succeeded"


def test_watch_of_a_failing_job_exits_8_with_its_error(
    master: str, env: dict[str, str], worker: Callable[..., Proc]
) -> None:
    worker("--tasks", TASKS)
    job = sje.Client(master).submit({"task": f"{TASKS}.reconcile", "args": ["acct-7"]})
    done = run_sje("watch", job.id, env=env)
    assert done.returncode == 8
    assert "task 0 failed after attempt 1" in done.stderr
    assert "ledger of acct-7 does not balance" in done.stderr


def test_watch_of_an_unknown_job_says_what_to_do_and_draws_nothing(
    master: str, env: dict[str, str]
) -> None:
    done = run_sje("watch", "nope", env=env)
    assert done.returncode == 5
    assert "No job 'nope'" in done.stderr and "`sje jobs`" in done.stderr
    assert "━" not in done.stderr, "no progress bar for a job that does not exist"


def test_monitor_without_redis_or_with_its_port_taken_is_a_clear_error(
    env: dict[str, str], master: str
) -> None:
    down = run_sje("monitor", "--port", "0", "--broker-url", "redis://127.0.0.1:1/0", env=env)
    assert down.returncode == 3
    assert "Cannot reach Redis at 127.0.0.1:1" in down.stderr
    port = master.rsplit(":", 1)[-1]
    taken = run_sje("monitor", "--port", port, env=env)
    assert taken.returncode == 2
    assert f"Cannot listen on 127.0.0.1:{port}" in taken.stderr
