"""Shared fixtures: a real Redis (started when absent), a key prefix per test, SJE processes."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from tests.support import (
    Proc,
    ensure_rabbitmq,
    ensure_redis_server,
    sje_env,
    start_master,
    start_worker,
)


@pytest.fixture(scope="session", autouse=True)
def state_dir() -> Iterator[str]:
    """One state dir (local tokens, the default SQLite file) for this test session, in this
    process and in every sje process it starts: tests never touch the user's own."""
    folder = tempfile.mkdtemp(prefix="sje-tests-state-")
    os.environ["SJE_STATE_DIR"] = folder
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url, proc = ensure_redis_server()
    yield url
    if proc is not None:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """A reachable RabbitMQ (started, and installed, when absent)."""
    return ensure_rabbitmq()


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    name = f"sjetest-{uuid.uuid4().hex[:12]}"
    yield name
    r = redis.Redis.from_url(redis_url)
    keys = list(r.scan_iter(match=f"{name}:*", count=1000))
    for i in range(0, len(keys), 500):
        r.delete(*keys[i : i + 500])
    r.close()


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def env(redis_url: str, prefix: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for sje processes of this test: its Redis, its prefix, its API token and
    signing secret, short timers."""
    return sje_env(
        SJE_BROKER_URL=redis_url,
        SJE_KEY_PREFIX=prefix,
        SJE_LEASE_TIMEOUT="3",
        SJE_HEARTBEAT_INTERVAL="0.5",
        SJE_TICK_INTERVAL="0.2",
        SJE_SHUTDOWN_GRACE="10",
        SJE_TOKEN=f"token-{prefix}",
        SJE_SECRET=f"secret-{prefix}",
    )


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in reversed(started):
        proc.stop()


@pytest.fixture
def master(env: dict[str, str], procs: list[Proc]) -> str:
    """URL of a real master for this test (also exported to ``env`` as SJE_MASTER)."""
    proc, url = start_master(env)
    procs.append(proc)
    env["SJE_MASTER"] = url
    return url


@pytest.fixture
def worker(env: dict[str, str], procs: list[Proc]) -> Callable[..., Proc]:
    """Start a real worker: ``worker("--concurrency", "2", "--name", "a")``."""

    def start(*args: str) -> Proc:
        proc = start_worker(env, *args)
        procs.append(proc)
        return proc

    return start
