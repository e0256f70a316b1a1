"""Task logs end to end: what tasks print and log is captured per attempt by real workers,
stored in Redis with the job and shown by the API, the client and ``sje logs``."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest
import redis

import sje
from sje.broker.redis import RedisBroker
from sje.broker.redis_logs import MAX_BYTES
from tests.support import Proc, api_client, auth, run_sje

LOG_TASKS = "tests.apps.log_tasks"


@pytest.fixture
def log_worker(worker: Callable[..., Proc]) -> Callable[..., Proc]:
    """Start a worker that also serves ``tests.apps.log_tasks``."""
    return lambda *args: worker("--tasks", LOG_TASKS, *args)


def _chatty_text(name: str) -> str:
    return "".join(
        f"{name}: {how}\n" if how != "logging" else f"INFO {LOG_TASKS}: {name}: logging\n"
        for how in ("print", "stderr", "logging", "subprocess", "fd 1", "printf")
    )


def test_print_stderr_logging_subprocess_and_c_output_are_captured_in_order(
    master: str, log_worker: Callable[..., Proc], env: dict[str, str], r: redis.Redis, prefix: str
) -> None:
    log_worker("--concurrency", "1")
    client = api_client(env)
    handle = client.submit({"task": f"{LOG_TASKS}.chatty", "inputs": ["a", "b"]})
    assert handle.result(timeout=60) == ["a", "b"]
    assert client.logs(handle.id) == {
        "id": handle.id,
        "logs": [
            {"task": "0", "attempt": 1, "text": _chatty_text("a"), "truncated": False},
            {"task": "1", "attempt": 1, "text": _chatty_text("b"), "truncated": False},
        ],
        "dropped": 0,
    }
    # the log expires with its finished job
    job_ttl = r.pttl(f"{prefix}:job:{handle.id}")
    log_ttl = r.pttl(f"{prefix}:job:{handle.id}:log")
    assert 0 < log_ttl <= job_ttl


def test_every_attempt_of_a_retried_task_keeps_its_own_log(
    master: str, log_worker: Callable[..., Proc], env: dict[str, str], tmp_path: Path
) -> None:
    log_worker("--concurrency", "1")
    client = api_client(env)
    item = {"marker": str(tmp_path / "calls")}
    handle = client.submit(
        {"task": f"{LOG_TASKS}.fails_twice", "inputs": [item], "retries": 2, "backoff": 0.05}
    )
    assert handle.result(timeout=60) == ["ok after 3"]
    logs = client.logs(handle.id, task=0)["logs"]
    assert [(e["task"], e["attempt"], e["text"]) for e in logs] == [
        ("0", 1, "call 1 starting\n"),
        ("0", 2, "call 2 starting\n"),
        ("0", 3, "call 3 starting\ncall 3 done\n"),
    ]


def test_a_log_over_64_kib_keeps_its_first_and_last_32_kib_and_says_truncated(
    master: str, log_worker: Callable[..., Proc], env: dict[str, str]
) -> None:
    log_worker("--concurrency", "1")
    client = api_client(env)
    handle = client.submit({"task": f"{LOG_TASKS}.loud", "inputs": [200_000]})
    assert handle.result(timeout=60) == [200_000]
    (entry,) = client.logs(handle.id)["logs"]
    printed = "BEGIN\n" + ("x" * 99 + "\n") * 2000 + "END\n"
    dropped = len(printed) - 64 * 1024
    assert entry["truncated"] is True
    assert entry["text"] == (
        printed[: 32 * 1024] + "\n" + f"… {dropped} bytes dropped …\n" + printed[-32 * 1024 :]
    )


def test_concurrent_async_tasks_in_one_child_keep_their_output_apart(
    master: str, log_worker: Callable[..., Proc], env: dict[str, str]
) -> None:
    log_worker("--concurrency", "1")  # one child: both calls share its event loop
    client = api_client(env)
    group = uuid.uuid4().hex
    # each step waits for both calls, so their lines alternate in time
    items = [{"name": name, "group": group, "size": 2} for name in ("left", "right")]
    handle = client.submit({"task": f"{LOG_TASKS}.interleaved", "inputs": items})
    assert handle.result(timeout=60) == ["left", "right"]
    texts = {e["task"]: e["text"] for e in client.logs(handle.id)["logs"]}
    assert texts == {
        str(i): "".join(
            f"{name} step {step}\nINFO {LOG_TASKS}: {name} logged {step}\n" for step in range(3)
        )
        for i, name in enumerate(("left", "right"))
    }


def test_a_task_killed_at_its_timeout_keeps_what_it_printed_before_the_kill(
    master: str, log_worker: Callable[..., Proc], env: dict[str, str], tmp_path: Path
) -> None:
    log_worker("--concurrency", "1")
    client = api_client(env)
    item = {"printed": str(tmp_path / "printed")}
    handle = client.submit({"task": f"{LOG_TASKS}.print_then_hang", "inputs": [item], "timeout": 2})
    with pytest.raises(sje.JobFailed, match="TaskTimeout"):
        handle.result(timeout=60)
    assert (tmp_path / "printed").exists()
    assert client.logs(handle.id)["logs"] == [
        {"task": "0", "attempt": 1, "text": "printed before the kill\n", "truncated": False}
    ]


def test_a_task_whose_child_crashes_keeps_what_it_printed_before_the_crash(
    master: str, log_worker: Callable[..., Proc], env: dict[str, str]
) -> None:
    log_worker("--concurrency", "1")
    client = api_client(env)
    handle = client.submit({"task": f"{LOG_TASKS}.print_then_die", "inputs": [1]})
    with pytest.raises(sje.JobFailed, match="ChildCrashed"):
        handle.result(timeout=60)
    assert client.logs(handle.id)["logs"] == [
        {"task": "0", "attempt": 1, "text": "printed before the crash\n", "truncated": False}
    ]
    after = client.submit({"task": f"{LOG_TASKS}.chatty", "inputs": ["next"]})
    assert after.result(timeout=60) == ["next"]
    # the replacement child's capture holds only its own task's output
    assert [e["text"] for e in client.logs(after.id)["logs"]] == [_chatty_text("next")]


def test_silent_tasks_store_no_log(
    master: str, log_worker: Callable[..., Proc], env: dict[str, str], r: redis.Redis, prefix: str
) -> None:
    log_worker("--concurrency", "2")
    client = api_client(env)
    handle = client.submit({"task": f"{LOG_TASKS}.silent", "inputs": list(range(20))})
    assert handle.result(timeout=60) == list(range(20))
    assert r.exists(f"{prefix}:job:{handle.id}:log") == 0
    assert client.logs(handle.id) == {"id": handle.id, "logs": [], "dropped": 0}
    done = run_sje("logs", handle.id, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"Nothing stored: the tasks of job {handle.id} printed nothing and logged nothing at "
        "INFO or above.\n"
    )


def test_sje_logs_prints_a_header_per_attempt_then_the_text_verbatim(
    master: str, log_worker: Callable[..., Proc], env: dict[str, str]
) -> None:
    log_worker("--concurrency", "1")
    client = api_client(env)
    name = "[bold red]not markup[/] :smile:"
    handle = client.submit({"task": f"{LOG_TASKS}.chatty", "inputs": [name, "b"]})
    assert handle.result(timeout=60) == [name, "b"]

    done = run_sje("logs", handle.id, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "── task 0 · attempt 1 ──\n"
        + _chatty_text(name)
        + "── task 1 · attempt 1 ──\n"
        + _chatty_text("b")
    )

    one = run_sje("logs", handle.id, "--task", "1", env=env)
    assert one.returncode == 0, one.stderr
    assert one.stdout == "── task 1 · attempt 1 ──\n" + _chatty_text("b")

    as_json = run_sje("logs", handle.id, "--task", "0", "--json", env=env)
    assert json.loads(as_json.stdout) == {
        "id": handle.id,
        "logs": [{"task": "0", "attempt": 1, "text": _chatty_text(name), "truncated": False}],
        "dropped": 0,
    }


def test_sje_logs_of_an_unknown_job_says_what_to_do_and_exits_5(
    master: str, env: dict[str, str]
) -> None:
    done = run_sje("logs", "0123abcd", env=env)
    assert done.returncode == 5
    assert done.stderr.strip() == (
        "Error: No job '0123abcd': it never existed or its results expired (result-ttl). "
        "List jobs with `sje jobs`."
    )
    assert done.stdout == ""


def test_logs_route_refuses_a_bad_task_with_400_and_an_unknown_job_with_404(
    master: str, log_worker: Callable[..., Proc], env: dict[str, str]
) -> None:
    log_worker("--concurrency", "1")
    handle = api_client(env).submit({"task": f"{LOG_TASKS}.silent", "inputs": [1, 2]})
    handle.result(timeout=60)
    url = f"{master}/api/v1/jobs/{handle.id}/logs"
    for bad in ("abc", "-1", "r1", "1.5", ""):
        reply = httpx.get(url, params={"task": bad}, headers=auth(env))
        assert reply.status_code == 400, bad
        assert reply.json()["error"] == {
            "code": "invalid_request",
            "message": f"Query parameter 'task={bad}': expected a task index (0, 1, ...), or r "
            "for the reduce step.",
        }
    # well-formed, so no error: a task the job does not have has no logs
    assert httpx.get(url, params={"task": "7"}, headers=auth(env)).json()["logs"] == []
    reply = httpx.get(url, params={"limit": "0"}, headers=auth(env))
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "invalid_request"
    assert httpx.get(url, params={"task": "r"}, headers=auth(env)).json()["logs"] == []
    missing = httpx.get(f"{master}/api/v1/jobs/feed/logs", headers=auth(env))
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


def test_job_logs_page_over_tasks_by_index_then_attempt(
    master: str, log_worker: Callable[..., Proc], env: dict[str, str]
) -> None:
    log_worker("--concurrency", "2")
    names = [f"n{i}" for i in range(12)]
    handle = api_client(env).submit({"task": f"{LOG_TASKS}.chatty", "inputs": names})
    assert handle.result(timeout=60) == names
    url = f"{master}/api/v1/jobs/{handle.id}/logs"
    seen, offset = [], 0
    while offset is not None:
        page = httpx.get(url, params={"offset": offset, "limit": 5}, headers=auth(env)).json()
        assert len(page["logs"]) <= 5
        seen += [(e["task"], e["text"]) for e in page["logs"]]
        offset = page["next"]
    assert seen == [(str(i), _chatty_text(name)) for i, name in enumerate(names)]


def test_log_store_keeps_only_existing_jobs_bounds_each_job_and_expires_with_it(
    master: str, env: dict[str, str], redis_url: str, prefix: str, r: redis.Redis
) -> None:
    client = api_client(env)
    job_def = {"task": f"{LOG_TASKS}.silent", "inputs": [1, 2, 3], "allow-unknown-task": True}
    bounded, finished = client.submit(job_def), client.submit(job_def)

    async def scenario() -> list[str]:
        broker = RedisBroker(redis_url, prefix)
        value = orjson.dumps({"text": "hi\n", "truncated": False})
        try:
            statuses = [await broker.logs.store("0123feed", "0", 1, {"text": "x"})]
            for field in ("0:1", "1:1", "2:1", "0:1"):  # a bound of 2 logs; 0:1 is replaced
                args = (bounded.id, field, value, 2, MAX_BYTES)
                statuses.append((await broker.run_script("log", *args)).decode())
            args = (bounded.id, "0:2", value, 10, 5)  # a bound of 5 bytes
            statuses.append((await broker.run_script("log", *args)).decode())
            await broker.cancel(finished.id)  # finished: its keys now carry result-ttl
            statuses.append(await broker.logs.store(finished.id, "1", 2, {"text": "late\n"}))
            await broker.cancel(bounded.id)
            return statuses
        finally:
            await broker.close()

    assert asyncio.run(scenario()) == ["missing", "ok", "ok", "full", "ok", "full", "ok"]
    assert not r.exists(f"{prefix}:job:0123feed:log")
    page = client.logs(bounded.id)
    assert [(e["task"], e["attempt"], e["text"]) for e in page["logs"]] == [
        ("0", 1, "hi\n"),
        ("1", 1, "hi\n"),
    ]
    assert page["dropped"] == 2
    assert [(e["task"], e["attempt"]) for e in client.logs(finished.id)["logs"]] == [("1", 2)]
    for job in (bounded, finished):
        job_ttl = r.pttl(f"{prefix}:job:{job.id}")  # first: both count down from the same TTL
        assert 0 < r.pttl(f"{prefix}:job:{job.id}:log") <= job_ttl
