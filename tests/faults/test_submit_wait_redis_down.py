"""A submit waiting for its job (``POST /jobs?wait=``) while Redis dies: the master's event
reader fails, and the request is answered at once with the stored job's id (no outcome),
not held to the end of its wait nor turned into an error that would hide the stored job."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support import Proc, RedisServer, api_client, wait_until

WAIT = "tests.apps.sample_tasks.started_then_wait"


def test_a_waiting_submit_is_answered_with_its_job_id_when_redis_dies(
    redis_server: RedisServer,
    master: str,
    env: dict[str, str],
    worker: Callable[..., Proc],
    tmp_path: Path,
) -> None:
    worker("--concurrency", "1")
    started = tmp_path / "started"
    job = {
        "task": WAIT,
        "args": [{"value": 1, "started": str(started), "release": str(tmp_path / "go")}],
    }
    replies: list[Any] = []

    def submit() -> None:
        with api_client(env, master) as client:
            replies.append(client.request("POST", "/jobs", params={"wait": "60"}, json=job))

    waiting = threading.Thread(target=submit)
    waiting.start()
    wait_until(lambda: (started / "1").exists(), 30, "the task to start")
    redis_server.kill()
    waiting.join(30)  # well within the request's 60 s wait
    assert not waiting.is_alive(), "the request was held although its event reader failed"
    (reply,) = replies
    assert len(reply["id"]) == 32 and reply["tasks"] == 1
    assert "job" not in reply
