"""A client following a job's event stream (``wait()``, ``result()``, ``sje watch``) when the
server side fails under it: it gets a clear error at once, naming what failed.

Redis dies: the master's stream ends with a ``stream.error`` event (its headers are sent, so no
error status can), and the client raises that ``BrokerError``. The master dies: the stream is
cut, and the client says so, not that no master answers."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sje
from sje.client import READ_TIMEOUT_S
from tests.support import Proc, RedisServer, api_client, start_master, wait_until

WAIT = "tests.apps.sample_tasks.started_then_wait"


class Follower:
    """Follows a job's events in a thread until they end; keeps the events and the error."""

    def __init__(self, env: dict[str, str], url: str, job_id: str) -> None:
        self.events: list[dict[str, Any]] = []
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._run, args=(env, url, job_id))
        self.thread.start()

    def _run(self, env: dict[str, str], url: str, job_id: str) -> None:
        try:
            with api_client(env, url) as client:
                for event in client.events(job_id, timeout=60):
                    self.events.append(event)  # one by one: the test watches them arrive
        except Exception as exc:  # judged by the test
            self.error = exc


def _follow_a_running_job(env: dict[str, str], url: str, tmp_path: Path) -> Follower:
    """A single-task job whose task has started and waits, followed until its stream is open."""
    started = tmp_path / "started"
    item = {"value": 1, "started": str(started), "release": str(tmp_path / "go")}
    handle = api_client(env, url).submit({"task": WAIT, "args": [item]})
    wait_until(lambda: (started / "1").exists(), 30, "the task to start")
    follower = Follower(env, url, handle.id)
    wait_until(lambda: follower.events, 30, "the stream's first event: it is open")
    return follower


def test_a_stream_open_when_redis_dies_ends_with_the_redis_error(
    redis_server: RedisServer,
    master: str,
    env: dict[str, str],
    worker: Callable[..., Proc],
    tmp_path: Path,
) -> None:
    worker("--concurrency", "1")
    follower = _follow_a_running_job(env, master, tmp_path)
    redis_server.kill()
    # the master's stream.error ends it at once; were the master itself held up by the dead
    # Redis, the client's read timeout would reconnect and get the same error as a reply
    follower.thread.join(READ_TIMEOUT_S + 15)
    assert not follower.thread.is_alive(), "the client was left waiting on a failed stream"
    assert isinstance(follower.error, sje.BrokerError), repr(follower.error)
    assert f"Redis at 127.0.0.1:{redis_server.port}" in follower.error.message


def test_a_stream_cut_by_the_master_dying_says_so(
    env: dict[str, str],
    worker: Callable[..., Proc],
    procs: list[Proc],
    tmp_path: Path,
) -> None:
    proc, url = start_master(env)
    procs.append(proc)
    env["SJE_MASTER"] = url
    worker("--concurrency", "1")
    follower = _follow_a_running_job(env, url, tmp_path)
    proc.signal(signal.SIGKILL)
    follower.thread.join(30)
    assert not follower.thread.is_alive(), "the client was left waiting on a cut stream"
    assert isinstance(follower.error, sje.MasterError), repr(follower.error)
    assert "cut the job's event stream" in follower.error.message
