"""What a system plugs into the compare driver: an ``Adapter`` over a ``Harness``.

The harness owns the processes (``Service``, ended by PID), the private Redis and the time
budget; an adapter knows how its system enqueues, waits for a result and starts its workers.
Only the standard library, ``redis`` and ``psutil`` here: this runs in every peer's venv.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib.metadata
import json
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import psutil
import redis
from bench.common import ROOT, Deadline, Service
from bench.peers import work

#: worker modes: "std" (2 processes, one task at a time each, no results), "rt" (the same, with
#: the result backend on), "io" (the I/O-bound scenario's concurrency), "rec" (the recovery run)
MODES = ("std", "rt", "io", "rec")


class NotSupported(Exception):
    """The system has no such API (the table shows "n/a")."""


@dataclass
class Plan:
    """Sizes and options, written by compare.py as JSON."""

    redis_url: str
    log_dir: str
    pid_file: str
    reps: int
    scenarios: list[str]
    budget_s: float
    enqueue_one_n: int
    enqueue_one_n_sje: int
    drain_n: int
    rt_n: int
    rt_budget_s: float
    warmup: int
    cpu_n: int
    cpu_loops: int
    io_n: int
    io_min_ideal_s: float
    rec_n: int
    rec_kill_at: int
    rec_stall_s: float
    rec_cap_s: float
    phase_timeout_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str) -> Plan:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


class Harness:
    """Processes started for one system, its Redis client, its budget."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.r = redis.Redis.from_url(plan.redis_url, socket_timeout=60)
        self.log_dir = Path(plan.log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.deadline = Deadline(plan.budget_s)
        self.persistent: list[Service] = []
        self.services: list[Service] = []
        self._names: dict[str, int] = {}
        self._pids: dict[int, float] = {}
        self._lock = threading.Lock()
        self.stop_grace = 15.0

    def env(self, **extra: str) -> dict[str, str]:
        skip = ("SJE_", "BENCH_", "CELERY_", "RQ_", "DRAMATIQ_", "HUEY_", "ARQ_", "TASKIQ_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
        env.pop("PYTHONPATH", None)
        env["PYTHONPATH"] = str(ROOT)
        env["PYTHONUNBUFFERED"] = "1"
        env["BENCH_REDIS_URL"] = self.plan.redis_url
        env.update(extra)
        return env

    def start(
        self,
        name: str,
        args: list[str],
        env: dict[str, str] | None = None,
        persistent: bool = False,
        executable: str | None = None,
    ) -> Service:
        """``python ARGS`` (this venv's Python) as a Service named ``name-<k>``; an argument
        containing ``{name}`` gets that name."""
        k = self._names[name] = self._names.get(name, 0) + 1
        full = f"{name}-{k}"
        args = [a.replace("{name}", full) for a in args]
        service = Service(full, args, env or self.env(), self.log_dir, executable or sys.executable)
        (self.persistent if persistent else self.services).append(service)
        self.note_pids(service)
        return service

    def note_pids(self, service: Service) -> None:
        """Record the service's processes in the PID file: if this driver dies without
        cleaning up, compare.py ends them (by PID, checking their create time)."""
        service.processes()
        with self._lock:
            self._pids.update(service.seen())
            tmp = Path(self.plan.pid_file + ".tmp")
            tmp.write_text(json.dumps({str(k): v for k, v in self._pids.items()}))
            tmp.replace(self.plan.pid_file)

    def stop_workers(self) -> None:
        """SIGTERM (each system's warm shutdown), SIGKILL after ``stop_grace``."""
        while self.services:
            service = self.services.pop()
            with contextlib.suppress(Exception):
                self.note_pids(service)
                service.stop(grace=self.stop_grace, leftover_grace=min(self.stop_grace, 5.0))

    def stop_all(self) -> None:
        self.stop_workers()
        while self.persistent:
            with contextlib.suppress(Exception):
                self.persistent.pop().stop()

    def clear_keys(self) -> None:
        self.r.delete(*work.KEYS)


class Adapter:
    """One system. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str] = "?"
    #: distributions whose versions are reported
    dists: ClassVar[tuple[str, ...]] = ()
    #: tasks at once per worker mode (the I/O scenario's ceiling is io / 0.1 s)
    concurrency: ClassVar[dict[str, int]] = {"std": 2, "rt": 2, "io": 2, "rec": 2}
    #: how the batch enqueue is done, or None when the system has no batch API
    batch_api: ClassVar[str | None] = None
    #: seconds after a worker's death within which the system re-delivers what it held (its
    #: lease, heartbeat or visibility timeout), or None when it never does: the recovery
    #: scenario watches that long after the kill, so a late re-run is counted as a duplicate
    redelivery_s: ClassVar[float | None] = None

    def __init__(self, h: Harness) -> None:
        self.h = h

    # -- life cycle
    def setup(self) -> None:
        """Start what lives for the whole run (SJE: its master)."""

    def teardown(self) -> None:
        """Close clients (processes are the harness's)."""

    def settings(self) -> dict[str, str]:
        """Human-readable settings, one line per aspect (printed under the table)."""
        return {}

    def versions(self) -> dict[str, str]:
        out = {"python": sys.version.split()[0]}
        for dist in self.dists:
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                out[dist] = importlib.metadata.version(dist)
        return out

    # -- workers
    def workers(self, mode: str) -> list[Service]:
        """Start the worker processes of ``mode``; return when they are started (not
        necessarily consuming yet)."""
        raise NotImplementedError

    def victim(self, workers: list[Service]) -> psutil.Process:
        """The process that the recovery scenario kills with SIGKILL."""
        raise NotImplementedError

    def held_by(self, victim: str) -> int | None:
        """Tasks the killed victim (its command line) had taken and not acknowledged, read
        just after the kill (None where the system does not tell)."""
        return None

    # -- enqueue and results; kind is one of noop, cpu, io, warm
    def enqueue_one(self, kind: str, arg: Any) -> None:
        raise NotImplementedError

    def enqueue_batch(self, kind: str, args: list[Any]) -> None:
        raise NotSupported("no batch enqueue API")

    def enqueue_many(self, kind: str, args: list[Any]) -> None:
        """Untimed bulk enqueue: the batch API where there is one, else one by one."""
        if self.batch_api is not None:
            self.enqueue_batch(kind, args)
        else:
            for arg in args:
                self.enqueue_one(kind, arg)

    def round_trip(self, i: int) -> Any:
        """Submit one no-op and wait for its result (needs ``rt`` workers)."""
        raise NotImplementedError

    #: key patterns that purge() keeps (what the system's clients declared once and cache)
    keep: ClassVar[tuple[str, ...]] = ()

    def purge(self) -> None:
        """Drop everything queued (no worker is running): every key but ``keep``'s."""
        batch: list[bytes] = []
        for key in self.h.r.scan_iter(count=1000):
            name = key.decode(errors="replace")
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in self.keep):
                continue
            batch.append(key)
            if len(batch) >= 1000:
                self.h.r.unlink(*batch)
                batch = []
        if batch:
            self.h.r.unlink(*batch)


def busiest_child(parent: Service) -> psutil.Process:
    """The child of ``parent`` that used the most CPU: a pool process that runs tasks (not a
    scheduler or log watcher)."""
    best: tuple[float, psutil.Process] | None = None
    for child in psutil.Process(parent.pid).children():
        with contextlib.suppress(psutil.Error):
            t = child.cpu_times()
            used = t.user + t.system
            if best is None or used > best[0]:
                best = (used, child)
    if best is None:
        raise RuntimeError(f"{parent.name} has no child process to kill")
    return best[1]
