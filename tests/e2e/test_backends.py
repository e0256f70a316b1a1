"""The same jobs through real master and worker processes on every backend: Redis, the
SQLite file, and RabbitMQ with either state store. A job with a reduce step runs end to end,
and a SIGKILLed worker's tasks come back and the job completes."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support import (
    Proc,
    api_client,
    drop_amqp_queues,
    run_sje,
    sje_env,
    start_master,
    start_worker,
    wait_until,
)

WAIT = "tests.apps.sample_tasks.started_then_wait"
BACKENDS = ["redis", "sqlite", "amqp+redis", "amqp+sqlite"]


@pytest.fixture(params=BACKENDS)
def backend_env(
    request: pytest.FixtureRequest, prefix: str, redis_url: str, tmp_path: Path
) -> Iterator[dict[str, str]]:
    """Environment of the test's processes on one backend, with short timers."""
    sqlite_url = f"sqlite:///{tmp_path}/sje.db"
    urls = {
        "redis": {"SJE_BROKER_URL": redis_url},
        "sqlite": {"SJE_BROKER_URL": sqlite_url},
        "amqp+redis": {"SJE_STATE_URL": redis_url},
        "amqp+sqlite": {"SJE_STATE_URL": sqlite_url},
    }[request.param]
    amqp_url = str(request.getfixturevalue("amqp_url")) if "amqp" in request.param else ""
    if amqp_url:
        urls["SJE_BROKER_URL"] = amqp_url
    yield sje_env(
        **urls,
        SJE_KEY_PREFIX=prefix,
        SJE_LEASE_TIMEOUT="3",
        SJE_HEARTBEAT_INTERVAL="0.5",
        SJE_TICK_INTERVAL="0.2",
        SJE_SHUTDOWN_GRACE="10",
        SJE_TOKEN=f"token-{prefix}",
        SJE_SECRET=f"secret-{prefix}",
    )
    if amqp_url:
        drop_amqp_queues(amqp_url, prefix, ["default"])


def _waiters(tmp_path: Path, n: int) -> list[dict[str, object]]:
    """Inputs for ``started_then_wait``: each task runs until the test creates ``release``."""
    started, release = tmp_path / "started", tmp_path / "release"
    return [{"value": i, "started": str(started), "release": str(release)} for i in range(n)]


def _started(tmp_path: Path) -> set[str]:
    folder = tmp_path / "started"
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def _master_and_worker(env: dict[str, str], procs: list[Proc], concurrency: int) -> str:
    """A master and one worker on the backend (ended with the test); the master's URL."""
    master, url = start_master(env)
    procs.append(master)
    procs.append(start_worker(env, "--concurrency", str(concurrency)))
    return url


def test_a_job_with_a_reduce_step_runs_end_to_end(
    backend_env: dict[str, str], procs: list[Proc]
) -> None:
    url = _master_and_worker(backend_env, procs, 2)
    handle = api_client(backend_env, url).submit(
        {
            "task": "tests.apps.sample_tasks.square",
            "inputs": list(range(30)),
            "reduce": "tests.total",
        }
    )
    assert handle.result(timeout=60) == sum(i * i for i in range(30))
    assert handle.status()["state"] == "succeeded"


def test_a_submit_that_waits_gets_the_outcome_in_its_reply(
    backend_env: dict[str, str], procs: list[Proc]
) -> None:
    url = _master_and_worker(backend_env, procs, 1)
    job = {"task": "tests.apps.sample_tasks.add", "args": [4, 5]}
    with api_client(backend_env, url) as client:
        for _ in range(3):  # the master's event reader stops and starts between requests
            reply = client.request("POST", "/jobs", params={"wait": "30"}, json=job)
            assert reply["job"]["state"] == "succeeded" and reply["job"]["result"] == 9


def test_sigkilled_worker_mid_job_loses_nothing_and_the_job_completes(
    backend_env: dict[str, str], procs: list[Proc], tmp_path: Path
) -> None:
    master, url = start_master(backend_env)
    procs.append(master)
    victim = start_worker(backend_env, "--concurrency", "2", "--name", "victim")
    procs.append(victim)
    children = wait_until(lambda: psutil.Process(victim.pid).children(), 10, "worker children")
    handle = api_client(backend_env, url).submit({"task": WAIT, "inputs": _waiters(tmp_path, 6)})
    wait_until(lambda: len(_started(tmp_path)) == 2, 30, "the victim to run two tasks")
    on_victim = _started(tmp_path)
    victim.signal(signal.SIGKILL)
    victim.wait(10)
    wait_until(
        lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children),
        10,
        "the victim's children to die",
    )
    (tmp_path / "release").touch()
    procs.append(start_worker(backend_env, "--concurrency", "2", "--name", "rescuer"))
    client = api_client(backend_env, url)
    assert handle.result(timeout=60) == list(range(6))
    page = client.request("GET", f"/jobs/{handle.id}/tasks", params={"limit": 10})
    attempts = {str(t["index"]): t["attempts"] for t in page["tasks"]}
    # the two tasks the victim ran came back (lease expiry) and ran again; the rest ran once
    assert {i for i, n in attempts.items() if n == 2} == on_victim, attempts
    assert {n for i, n in attempts.items() if i not in on_victim} == {1}, attempts


def test_amqp_without_a_state_store_says_what_to_set(env: dict[str, str]) -> None:
    done = run_sje("master", "--broker-url", "amqp://guest:guest@127.0.0.1:5672/", env=env)
    assert done.returncode == 2, done.stderr
    assert "needs a state store: set state-url (SJE_STATE_URL)" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_amqp_with_rabbitmq_unreachable_says_how_to_fix_it(env: dict[str, str]) -> None:
    amqp = {**env, "SJE_STATE_URL": env["SJE_BROKER_URL"]}
    done = run_sje("master", "--broker-url", "amqp://guest:guest@127.0.0.1:1/", env=amqp)
    assert done.returncode == 3, done.stderr
    assert "Cannot reach RabbitMQ at 127.0.0.1:1 (connection refused)" in done.stderr
    assert "Start it (rabbitmq-server) or point broker-url at a running one." in done.stderr
