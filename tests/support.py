"""Test helpers: services on demand, deadlines instead of sleeps, real SJE processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import redis

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def wait_until(
    condition: Callable[[], T], timeout: float = 30.0, what: str = "condition", every: float = 0.05
) -> T:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_reachable(url: str) -> bool:
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        return True
    except redis.RedisError:
        return False


def ensure_redis_server() -> tuple[str, subprocess.Popen[bytes] | None]:
    """A reachable Redis URL: the usual local one, or a private server started here."""
    url = os.environ.get("SJE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if redis_reachable(url):
        return url, None
    binary = shutil.which("redis-server")
    if binary is None:
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "redis-server"], check=False, capture_output=True
        )
        binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "Redis is not reachable at 127.0.0.1:6379 and redis-server could not be installed; "
            "run `apt-get install redis-server` or set SJE_TEST_REDIS_URL."
        )
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    wait_until(lambda: redis_reachable(url), 20, f"the Redis server started on port {port}")
    return url, proc


def sje_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SJE_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_sje(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the real ``sje`` command line and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "sje", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Proc:
    """A long-running ``sje`` process (master or worker) whose output is collected."""

    def __init__(self, args: list[str], env: dict[str, str], ready_marker: str) -> None:
        self.args = args
        self.lines: list[str] = []
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "sje", *args],
            env=env,
            cwd=ROOT,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_until(
            lambda: self.find(ready_marker) or self.popen.poll() is not None,
            60,
            f"'{ready_marker}' from sje {' '.join(args)}",
        )
        if self.popen.poll() is not None:
            self._reader.join(5)
            raise AssertionError(f"sje {' '.join(args)} exited early:\n" + self.output())

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    def find(self, text: str) -> str | None:
        return next((line for line in list(self.lines) if text in line), None)

    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout: float = 60) -> int:
        return self.popen.wait(timeout)

    def stop(self, timeout: float = 30) -> None:
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(10)
        self._reader.join(5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


def start_master(env: dict[str, str], *extra: str) -> tuple[Proc, str]:
    proc = Proc(["master", "--port", "0", *extra], env, "listening on")
    line = proc.find("listening on")
    assert line is not None
    return proc, line.rsplit(" ", 1)[-1]


def start_worker(env: dict[str, str], *extra: str, tasks: str = "tests.apps.sample_tasks") -> Proc:
    return Proc(["worker", "--tasks", tasks, *extra], env, "ready:")


def events_of(r: redis.Redis, prefix: str, job_id: str) -> list[dict[str, Any]]:
    """Every event recorded for a job, oldest first, decoded."""
    raw: Any = r.xrange(f"{prefix}:job:{job_id}:ev")  # redis-py types replies as bytes | str
    return [{k.decode(): v.decode() for k, v in fields.items()} for _id, fields in raw]
