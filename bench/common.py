"""Pieces shared by the benchmarks (compare.py and the drivers under peers/, load.py, monitor.py,
backends.py).

Only the standard library, ``redis`` and ``psutil``: the compare drivers import this module from
each peer's own virtual environment, where neither SJE nor rich is installed.

- ``Service``: a process started here, its output in a log file, ended by PID (with the
  descendants it was seen with);
- ``sje_env``: the environment of the SJE processes a benchmark starts;
- ``Deadline``, ``BenchError``, ``timed``, ``sigterm_as_interrupt``;
- ``CompletionWatch`` (a completion counter polled every 5 ms) and ``MemorySampler`` (RSS and
  PSS of process trees);
- ``RedisServer``: a private ``redis-server`` on a free port of 127.0.0.1.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
HOST = "127.0.0.1"
MB = 1024 * 1024


class BenchError(Exception):
    """A phase could not be measured (process failed, wrong results, time budget spent)."""


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def cap(self, seconds: float) -> float:
        """``seconds``, or what is left of the budget when that is less."""
        left = self.left()
        if left <= 0:
            raise BenchError("time budget spent")
        return min(seconds, left)

    def check(self, what: str) -> None:
        if self.left() <= 0:
            raise BenchError(f"time budget spent during {what}")


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_STATE_DIR: list[str] = []


def sje_env(**settings: str) -> dict[str, str]:
    """This process's environment without its ``SJE_*`` settings, plus ``settings``, the repo on
    ``PYTHONPATH``, unbuffered output, and a state dir of this run's own (removed at exit), so
    that the masters' local token records never land in the user's ~/.local/state/sje."""
    if not _STATE_DIR:
        _STATE_DIR.append(tempfile.mkdtemp(prefix="sje-bench-state-"))
        atexit.register(shutil.rmtree, _STATE_DIR[0], True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SJE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env["SJE_STATE_DIR"] = _STATE_DIR[0]
    env.update(settings)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# -- processes ------------------------------------------------------------------------------


class Service:
    """A process started here (``executable ARGS``, by default this Python), its output in a log
    file, ended by PID."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        log_dir: Path,
        executable: str | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            [executable or sys.executable, *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._seen: dict[int, float] = {}
        self.processes()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def seen(self) -> dict[int, float]:
        """Every PID of the tree seen so far, with its create time (to end leftovers safely)."""
        return dict(self._seen)

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def wait_for(self, marker: str, timeout: float, count: int = 1) -> str:
        """Wait until ``marker`` appeared ``count`` times in the output; returns its last line."""
        end = time.monotonic() + timeout
        while True:
            hits = [line for line in self.output().splitlines() if marker in line]
            if len(hits) >= count:
                return hits[-1]
            if self.popen.poll() is not None:
                raise BenchError(
                    f"{self.name} exited ({self.popen.returncode}) before '{marker}':\n"
                    + self.tail()
                )
            if time.monotonic() > end:
                raise BenchError(
                    f"{self.name}: no '{marker}' within {timeout:.0f}s:\n" + self.tail()
                )
            time.sleep(0.05)

    def processes(self) -> list[psutil.Process]:
        """The process and its descendants now (remembered, so stop() can end them by PID)."""
        try:
            main = psutil.Process(self.popen.pid)
            procs = [main, *main.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        for p in procs:
            with contextlib.suppress(psutil.Error):
                self._seen.setdefault(p.pid, p.create_time())
        return procs

    def memory_mb(self) -> tuple[float, float] | None:
        """(RSS, PSS) of the process tree in MB, or None when it has ended."""
        rss = pss = 0
        procs = self.processes()
        for p in procs:
            with contextlib.suppress(psutil.Error):
                info = p.memory_full_info()
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
        return (rss / MB, pss / MB) if procs and rss else None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(
        self,
        grace: float = 15.0,
        sig: signal.Signals = signal.SIGTERM,
        leftover_grace: float = 5.0,
    ) -> None:
        self.processes()
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        end_pids(self._seen, skip=self.popen.pid, grace=leftover_grace)
        self._log.close()


def end_pids(pids: dict[int, float], skip: int | None = None, grace: float = 5.0) -> None:
    """End processes given as {pid: create_time} that still run and are the same processes
    (same create time): SIGTERM, then SIGKILL after ``grace``."""
    left = []
    for pid, created in pids.items():
        if pid == skip:
            continue
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            if abs(p.create_time() - created) < 0.01:
                p.terminate()
                left.append(p)
    _, alive = psutil.wait_procs(left, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


class RedisServer:
    """A private ``redis-server`` on a free port of 127.0.0.1: no RDB snapshots, no AOF, its
    files in a temporary directory; ``stop()`` ends it by PID and removes the directory."""

    def __init__(self, log_dir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchError("redis-server is not installed: apt-get install redis-server")
        self.dir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
        self.port = free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        args = [binary, "--port", str(self.port), "--bind", HOST, "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.dir)]
        args += ["--logfile", str(log_dir / "redis.log")]
        self.popen = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.client = redis.Redis.from_url(self.url, socket_timeout=30, socket_connect_timeout=5)
        end = time.monotonic() + 20
        while True:
            with contextlib.suppress(redis.RedisError):
                if self.client.ping():
                    return
            if self.popen.poll() is not None or time.monotonic() > end:
                self.stop()
                raise BenchError(f"redis-server on port {self.port} did not start; see redis.log")
            time.sleep(0.05)

    def version(self) -> str:
        return str(self.client.info("server").get("redis_version"))

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


# -- measuring helpers ---------------------------------------------------------------------


class CompletionWatch:
    """Polls a completion counter every 5 ms: when the first and the last task completed."""

    def __init__(self, r: redis.Redis, key: str, total: int) -> None:
        self.r, self.key, self.total = r, key, total
        self.first: float | None = None
        self.last: float | None = None
        self.count = 0
        self._done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="completion-watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.count = int(self.r.get(self.key) or 0)
            now = time.perf_counter()
            if self.count and self.first is None:
                self.first = now
            if self.count >= self.total:
                self.last = now
                self._done.set()
                return
            time.sleep(0.005)

    def __enter__(self) -> CompletionWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def wait(self, timeout: float, procs: list[Service] | None = None) -> None:
        """Until every task completed; fails early when all ``procs`` have exited."""
        end = time.monotonic() + timeout
        while not self._done.wait(0.2):
            if procs and not any(p.alive() for p in procs):
                self._done.wait(0.5)
                if not self._done.is_set():
                    tails = "\n".join(p.tail(5) for p in procs)
                    raise BenchError(f"workers exited at {self.count}/{self.total} tasks:\n{tails}")
            if time.monotonic() > end:
                raise BenchError(f"drain not done in {timeout:.0f}s ({self.count}/{self.total})")

    def rate(self) -> float:
        assert self.first is not None and self.last is not None
        return self.total / max(self.last - self.first, 1e-6)


class MemorySampler:
    """Memory of the worker processes: ``final()`` samples once after the drain. With an
    ``interval`` it also samples during the drain (for workers that exit when done, and for the
    peak), at a cost: walking the process trees takes CPU from the drain being measured."""

    def __init__(self, services: list[Service], interval: float | None = None) -> None:
        self.services = services
        self.interval = interval
        self.last: tuple[float, float] | None = None
        self.peak_rss = 0.0
        self.peak_pss = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def sample(self) -> tuple[float, float] | None:
        parts = [m for s in self.services if (m := s.memory_mb()) is not None]
        if not parts:
            return None
        self.last = (sum(p[0] for p in parts), sum(p[1] for p in parts))
        self.peak_rss = max(self.peak_rss, self.last[0])
        self.peak_pss = max(self.peak_pss, self.last[1])
        return self.last

    def _run(self) -> None:
        assert self.interval is not None
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> MemorySampler:
        if self.interval is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def final(self) -> dict[str, float | None]:
        """After the drain: a fresh sample while the workers live, else the last one taken."""
        now = self.sample() or self.last
        return {"worker_rss_mb": now[0] if now else None, "worker_pss_mb": now[1] if now else None}
