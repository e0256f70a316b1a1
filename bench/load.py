"""Open-loop load test of SJE: a steady stream of single-task jobs at a fraction of saturation.

    .venv/bin/python bench/load.py [--duration 600] [--fraction 0.5] [--workers 2]
                                   [--result-ttl 30]

It starts its own ``redis-server`` (AOF on, ``appendfsync everysec``, data in a temporary
directory), an SJE master and ``--workers`` workers (``--concurrency 1`` each) as real
processes on 127.0.0.1, then:

1. **saturation**: submits ``--saturation-jobs`` single-task jobs from ``--senders`` threads as
   fast as it can, ``--saturation-rounds`` times; the median completion rate (first submit to
   last completion, seen on an execution counter) is the saturation rate;
2. **open loop**: sends jobs at ``--fraction`` x that rate for ``--duration`` seconds, each at its
   own intended time whatever happened to the jobs before it, and reads every job's timestamps
   from Redis a few seconds after its submit was acknowledged;
3. **memory**: samples the RSS of the master and of each worker (with their children) every
   ``--sample-interval`` seconds;
4. **drain**: waits for every job to finish, then for ``--result-ttl`` plus a margin, and
   compares Redis (job keys, all keys under the prefix, ``used_memory``) with its state right
   after start-up.

It prints a table and one PASS/FAIL line per criterion, writes ``bench/results/load-latest.json``
(``--json``) and exits with 0 when every criterion passed, 1 when one failed, 2 when the run
could not be measured and 130 when interrupted. Every wait has a deadline; only the processes
started here are ended, by PID. See bench/README.md ("Load test").
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import math
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: bench.*

from bench.common import (
    BenchError,
    Deadline,
    Service,
    sigterm_as_interrupt,
    sje_env,
)
from rich.console import Console
from rich.table import Table

import sje

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
HOST = "127.0.0.1"
TASK = "bench.tasks.count"
MB = 1024 * 1024
COUNTER = "loadtest:executions"  # outside the SJE prefix: never counted as SJE's keys
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
#: the pass criteria's limits
MAX_P99_QUEUE_WAIT_S = 1.0
MAX_MEMORY_GROWTH_PCT = 20.0

console = Console(width=None if sys.stdout.isatty() else 120)


@dataclass(frozen=True)
class Options:
    duration: float
    fraction: float
    workers: int
    result_ttl: float
    saturation_jobs: int
    saturation_rounds: int
    rate: float | None
    senders: int
    collect_delay: float
    sample_interval: float
    ttl_margin: float
    json_path: Path
    log_dir: Path


def parse_args(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(description="Open-loop load test of SJE (see bench/README.md).")
    p.add_argument("--duration", type=float, default=600.0, help="open-loop seconds (600)")
    p.add_argument("--fraction", type=float, default=0.5, help="of saturation to offer (0.5)")
    p.add_argument("--workers", type=int, default=2, help="worker processes, 1 task each (2)")
    p.add_argument("--result-ttl", type=float, default=30.0, help="master's result-ttl, s (30)")
    p.add_argument("--saturation-jobs", type=int, default=3000, help="jobs per round (3000)")
    p.add_argument("--saturation-rounds", type=int, default=3, help="median of N rounds (3)")
    p.add_argument("--rate", type=float, help="offer this many jobs/s; skips saturation")
    p.add_argument("--senders", type=int, default=8, help="sender threads (8)")
    p.add_argument("--collect-delay", type=float, help="read a job after N s (min(5, ttl/4))")
    p.add_argument("--sample-interval", type=float, help="memory every N s (min(10, dur/5))")
    p.add_argument("--ttl-margin", type=float, default=15.0, help="after result-ttl, s (15)")
    p.add_argument("--json", type=Path, default=RESULTS / "load-latest.json", help="result file")
    p.add_argument("--log-dir", type=Path, default=RESULTS / "load-logs", help="process logs")
    a = p.parse_args(argv)
    if a.duration <= 0 or not 0 < a.fraction <= 2 or a.workers < 1 or a.senders < 1:
        p.error("need --duration > 0, 0 < --fraction <= 2, --workers >= 1, --senders >= 1")
    if a.result_ttl < 1 or a.saturation_jobs < 10 or a.saturation_rounds < 1:
        p.error("need --result-ttl >= 1, --saturation-jobs >= 10, --saturation-rounds >= 1")
    if a.rate is not None and a.rate <= 0:
        p.error("--rate must be above 0")
    collect = a.collect_delay if a.collect_delay is not None else min(5.0, a.result_ttl / 4)
    if not 0 < collect < a.result_ttl:
        p.error("--collect-delay must be above 0 and below --result-ttl")
    sample = a.sample_interval if a.sample_interval is not None else min(10.0, a.duration / 5)
    return Options(
        duration=a.duration,
        fraction=a.fraction,
        workers=a.workers,
        result_ttl=a.result_ttl,
        saturation_jobs=a.saturation_jobs,
        saturation_rounds=a.saturation_rounds,
        rate=a.rate,
        senders=a.senders,
        collect_delay=collect,
        sample_interval=max(sample, 0.5),
        ttl_margin=a.ttl_margin,
        json_path=a.json.resolve(),
        log_dir=a.log_dir.resolve(),
    )


# -- clocks ---------------------------------------------------------------------------------


class Clock:
    """Local time in seconds since the epoch, read through the monotonic clock: a wall-clock
    step during the run (NTP) cannot move it."""

    def __init__(self) -> None:
        self._base = time.time() - time.monotonic()

    def now(self) -> float:
        return self._base + time.monotonic()


@dataclass(frozen=True)
class ClockOffset:
    """Redis's clock minus the local one, from the ``TIME`` call with the shortest round trip;
    ``error_s`` is half that round trip (the true offset is within ± of it)."""

    offset_s: float
    error_s: float

    @classmethod
    def measure(cls, r: redis.Redis, clock: Clock, samples: int = 25) -> ClockOffset:
        best: tuple[float, float] | None = None
        for _ in range(samples):
            before = clock.now()
            seconds, micros = r.time()
            after = clock.now()
            offset = seconds + micros / 1e6 - (before + after) / 2
            if best is None or after - before < best[1]:
                best = (offset, after - before)
        assert best is not None
        return cls(best[0], best[1] / 2)

    def local(self, redis_ms: int) -> float:
        """A Redis timestamp (ms, as SJE stores them) on the local clock, in seconds."""
        return redis_ms / 1000 - self.offset_s


# -- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class RedisProcess:
    """A private ``redis-server`` on a free port of 127.0.0.1, AOF on, data in ``directory``."""

    def __init__(self, directory: Path, log_dir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchError("redis-server is not installed: apt-get install redis-server")
        self.port = free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        args = [binary, "--port", str(self.port), "--bind", HOST, "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(directory)]
        args += ["--logfile", str(log_dir / "redis.log")]
        self.popen = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.client = redis.Redis.from_url(self.url, socket_timeout=10, socket_connect_timeout=5)
        end = time.monotonic() + 20
        while True:
            with contextlib.suppress(redis.RedisError):
                if self.client.ping():
                    return
            if self.popen.poll() is not None or time.monotonic() > end:
                self.stop()
                raise BenchError(f"redis-server on port {self.port} did not start; see redis.log")
            time.sleep(0.05)

    def stop(self) -> None:
        self.client.close()
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


@dataclass
class Cluster:
    """Everything started here: Redis, a master, workers; ``stop()`` ends them by PID."""

    redis: RedisProcess
    prefix: str
    token: str
    master: Service | None = None
    url: str = ""
    workers: list[Service] = field(default_factory=list)

    def services(self) -> dict[str, Service]:
        named = {w.name: w for w in self.workers}
        return {"master": self.master, **named} if self.master else named

    def client(self) -> sje.Client:
        return sje.Client(self.url, token=self.token)

    def stop(self) -> None:
        for service in [*self.workers, *([self.master] if self.master else [])]:
            with contextlib.suppress(Exception):
                service.stop()
        self.redis.stop()


def start_cluster(opts: Options, data_dir: Path) -> Cluster:
    opts.log_dir.mkdir(parents=True, exist_ok=True)
    for old in opts.log_dir.glob("*.log"):
        old.unlink()
    cluster = Cluster(RedisProcess(data_dir, opts.log_dir), "load", secrets.token_urlsafe(24))
    try:
        env = sje_env(
            SJE_BROKER_URL=cluster.redis.url,
            SJE_KEY_PREFIX=cluster.prefix,
            SJE_TOKEN=cluster.token,
            SJE_SECRET=secrets.token_hex(24),
            SJE_RESULT_TTL=f"{opts.result_ttl:g}s",
        )
        master_args = ["-m", "sje", "master", "--port", "0", "--bind-address", HOST]
        cluster.master = Service("master", master_args, env, opts.log_dir)
        worker_args = ["-m", "sje", "worker", "--tasks", "bench.tasks", "--concurrency", "1"]
        for i in range(1, opts.workers + 1):
            name = f"worker-{i}"
            cluster.workers.append(Service(name, [*worker_args, "--name", name], env, opts.log_dir))
        cluster.url = cluster.master.wait_for("listening on", 60).rsplit(" ", 1)[-1]
        for w in cluster.workers:
            w.wait_for("ready:", 60)
    except BaseException:
        cluster.stop()
        raise
    return cluster


# -- Redis state ----------------------------------------------------------------------------


def count_job_keys(r: redis.Redis, prefix: str) -> int:
    """``P:job:*`` and ``P:idem:*`` keys: what a job leaves until its TTL."""
    patterns = (f"{prefix}:job:*", f"{prefix}:idem:*")
    return sum(1 for pattern in patterns for _ in r.scan_iter(match=pattern, count=1000))


def redis_state(r: redis.Redis, prefix: str) -> dict[str, Any]:
    """Job keys (``P:job:*``, ``P:idem:*``), all keys under the prefix (named when few),
    ``used_memory``, and the two structures that grow with the number of jobs without being
    job keys."""
    keys = sorted(k.decode() for k in r.scan_iter(match=f"{prefix}:*", count=1000))
    return {
        "job_keys": sum(1 for k in keys if k.startswith((f"{prefix}:job:", f"{prefix}:idem:"))),
        "prefix_keys": len(keys),
        "prefix_key_names": keys if len(keys) <= 50 else None,
        "used_memory": int(r.info("memory")["used_memory"]),
        "jobs_index": int(r.zcard(f"{prefix}:jobs")),
        "jobs_index_bytes": int(r.memory_usage(f"{prefix}:jobs", samples=0) or 0),
        "events_stream": int(r.xlen(f"{prefix}:events")),
        "events_stream_bytes": int(r.memory_usage(f"{prefix}:events", samples=0) or 0),
    }


def counter_value(r: redis.Redis, key: str) -> int:
    return int(r.get(key) or 0)


# -- saturation -----------------------------------------------------------------------------


def job_def(cluster: Cluster, counter: str) -> dict[str, Any]:
    return {"task": TASK, "args": [cluster.redis.url, counter]}


def warm_up(cluster: Cluster, n: int) -> None:
    """A few jobs one after the other: the task runs, the children are up and imported."""
    key = f"{COUNTER}:warmup"
    with contextlib.closing(cluster.client()) as client:
        for _ in range(n):
            client.submit(job_def(cluster, key)).result(timeout=60)
    if counter_value(cluster.redis.client, key) != n:
        raise BenchError("warm-up: the execution counter does not match the jobs run")
    cluster.redis.client.delete(key)


def saturation_round(cluster: Cluster, opts: Options, number: int) -> float:
    """Submit ``saturation_jobs`` jobs as fast as ``senders`` threads can; jobs/s from the
    first submit to the last execution counted."""
    key, total = f"{COUNTER}:saturation-{number}", opts.saturation_jobs
    r = cluster.redis.client
    r.delete(key)
    job = job_def(cluster, key)
    taken = iter(range(total))
    lock = threading.Lock()
    errors: list[str] = []

    def send() -> None:
        with contextlib.closing(cluster.client()) as client:
            while True:
                with lock:
                    i = next(taken, None)
                if i is None or errors:
                    return
                try:
                    client.submit(job)
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=send, daemon=True) for _ in range(opts.senders)]
    deadline = Deadline(max(30.0, total / 25))
    start = time.perf_counter()
    for t in threads:
        t.start()
    while (done := counter_value(r, key)) < total and not errors:
        if deadline.left() <= 0:
            raise BenchError(f"saturation round {number}: {done}/{total} executed in time")
        time.sleep(0.005)
    end = time.perf_counter()
    for t in threads:
        t.join(deadline.cap(30))
    if errors:
        raise BenchError(f"saturation round {number}: submit failed: {errors[0]}")
    r.delete(key)
    return total / (end - start)


def measure_saturation(cluster: Cluster, opts: Options) -> list[float]:
    rates = []
    for number in range(1, opts.saturation_rounds + 1):
        rate = saturation_round(cluster, opts, number)
        console.print(f"  saturation round {number}: {rate:,.1f} jobs/s", highlight=False)
        rates.append(rate)
    return rates


# -- open loop ------------------------------------------------------------------------------


@dataclass(slots=True)
class JobRecord:
    """One job of the open loop; local times in seconds (``Clock``), Redis ones in ms."""

    index: int
    intended: float
    sent: float
    acked: float | None = None
    job_id: str | None = None
    error: str | None = None
    state: str | None = None  # "missing": no record in Redis when read
    created_ms: int | None = None
    started_ms: int | None = None
    finished_ms: int | None = None


class Collector:
    """Reads each job's record from Redis ``delay`` seconds after its submit was acknowledged
    (long before its TTL), with pipelined ``HMGET``s; a job not finished yet is read again a
    second later."""

    FIELDS = ("state", "created_at", "started_at", "finished_at")

    def __init__(self, r: redis.Redis, prefix: str, delay: float, clock: Clock) -> None:
        self.r, self.prefix, self.delay, self.clock = r, prefix, delay, clock
        self.retry_s = min(1.0, delay)
        self._due: list[tuple[float, int, JobRecord]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="collector", daemon=True)
        self.reads = 0

    def add(self, rec: JobRecord) -> None:
        assert rec.acked is not None
        with self._lock:
            heapq.heappush(self._due, (rec.acked + self.delay, rec.index, rec))

    def pending(self) -> int:
        with self._lock:
            return len(self._due)

    def _take_due(self, limit: int = 500) -> list[JobRecord]:
        now = self.clock.now()
        with self._lock:
            out: list[JobRecord] = []
            while self._due and self._due[0][0] <= now and len(out) < limit:
                out.append(heapq.heappop(self._due)[2])
            return out

    def _read(self, batch: list[JobRecord]) -> None:
        pipe = self.r.pipeline(transaction=False)
        for rec in batch:
            pipe.hmget(f"{self.prefix}:job:{rec.job_id}", self.FIELDS)
        self.reads += len(batch)
        for rec, values in zip(batch, pipe.execute(), strict=True):
            state, created, started, finished = (v.decode() if v else None for v in values)
            if state is None:
                rec.state = "missing"
            elif state in TERMINAL:
                rec.state = state
                rec.created_ms = int(created) if created else None
                rec.started_ms = int(started) if started else None
                rec.finished_ms = int(finished) if finished else None
            else:
                with self._lock:
                    heapq.heappush(self._due, (self.clock.now() + self.retry_s, rec.index, rec))

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = self._take_due()
            if batch:
                try:
                    self._read(batch)
                except redis.RedisError:  # read them again shortly
                    for rec in batch:
                        self.add(rec)
                    self._stop.wait(0.5)
            else:
                self._stop.wait(0.1)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def wait_empty(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while self.pending():
            if time.monotonic() > end:
                return False
            time.sleep(0.1)
        return True


class OpenLoop:
    """``total`` jobs, job ``i`` intended for ``t0 + i / rate``, whatever happened to the ones
    before it. A free sender takes the next index and sends it at its intended time, or at once
    when that time has passed (every latency is counted from the intended time, so a sender
    that falls behind shows as latency instead of hiding it)."""

    def __init__(self, cluster: Cluster, opts: Options, rate: float, clock: Clock) -> None:
        self.cluster, self.opts, self.rate, self.clock = cluster, opts, rate, clock
        self.total = max(1, round(rate * opts.duration))
        self.records: list[JobRecord | None] = [None] * self.total
        self.collector = Collector(cluster.redis.client, cluster.prefix, opts.collect_delay, clock)
        self.job = job_def(cluster, f"{COUNTER}:open-loop")
        self.t0 = 0.0
        self._next = iter(range(self.total))
        self._lock = threading.Lock()
        self.stop = threading.Event()

    def _send_one(self, client: sje.Client, i: int) -> None:
        rec = JobRecord(i, self.t0 + i / self.rate, self.clock.now())
        try:
            rec.job_id = client.submit(self.job).id
            rec.acked = self.clock.now()
        except Exception as exc:
            rec.error = f"{type(exc).__name__}: {exc}"
        self.records[i] = rec
        if rec.job_id is not None:
            self.collector.add(rec)

    def _sender(self) -> None:
        with contextlib.closing(self.cluster.client()) as client:
            while not self.stop.is_set():
                with self._lock:
                    i = next(self._next, None)
                if i is None:
                    return
                wait = self.t0 + i / self.rate - self.clock.now()
                if wait > 0 and self.stop.wait(wait):
                    return
                self._send_one(client, i)

    def run(self) -> None:
        """Send every job; past ``duration`` x 1.5 + 30 s the senders stop (unsent jobs count
        as errors)."""
        threads = [
            threading.Thread(target=self._sender, name=f"sender-{n}", daemon=True)
            for n in range(self.opts.senders)
        ]
        self.t0 = self.clock.now() + 0.5
        self.collector.start()
        for t in threads:
            t.start()
        deadline = Deadline(self.opts.duration * 1.5 + 30)
        for t in threads:
            t.join(max(0.0, deadline.left()))
        if any(t.is_alive() for t in threads):
            self.stop.set()
            console.print("[red]senders could not keep up: stopped at the deadline[/red]")
            for t in threads:
                t.join(35)  # a submit in flight ends within the client's 30 s timeout

    def sent(self) -> list[JobRecord]:
        return [rec for rec in self.records if rec is not None]


# -- memory ---------------------------------------------------------------------------------


class MemorySampler:
    """RSS (and PSS) of each service with all its children, every ``interval`` seconds."""

    def __init__(self, services: dict[str, Service], interval: float, clock: Clock) -> None:
        self.services, self.interval, self.clock = services, interval, clock
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory", daemon=True)

    def sample(self) -> None:
        row: dict[str, Any] = {"t": self.clock.now(), "rss_mb": {}, "pss_mb": {}}
        for name, service in self.services.items():
            mem = service.memory_mb()
            if mem is not None:
                row["rss_mb"][name], row["pss_mb"][name] = mem
        self.samples.append(row)

    def _run(self) -> None:
        self.sample()
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling; the last sample is taken now."""
        self._stop.set()
        self._thread.join(30)
        self.sample()

    def growth(self, warm_from: float) -> dict[str, dict[str, float | None]]:
        """Per process: RSS at the first sample from ``warm_from`` on, at the end, growth %."""
        out: dict[str, dict[str, float | None]] = {}
        warm_rows = [s for s in self.samples if s["t"] >= warm_from] or self.samples[-1:]
        for name in self.services:
            warm = warm_rows[0]["rss_mb"].get(name) if warm_rows else None
            end = self.samples[-1]["rss_mb"].get(name) if self.samples else None
            pct = (end - warm) / warm * 100 if warm and end is not None else None
            out[name] = {"warm_mb": warm, "end_mb": end, "growth_pct": pct}
        return out


# -- analysis -------------------------------------------------------------------------------


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """Count, mean and nearest-rank percentiles, in milliseconds (``values`` in seconds)."""
    ordered = sorted(values)
    n = len(ordered)

    def pct(q: float) -> float | None:
        return ordered[max(0, math.ceil(q / 100 * n) - 1)] * 1000 if n else None

    return {
        "n": n,
        "mean_ms": statistics.fmean(ordered) * 1000 if n else None,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "p999_ms": pct(99.9),
        "max_ms": ordered[-1] * 1000 if n else None,
    }


def latencies(records: Sequence[JobRecord], offset: ClockOffset) -> dict[str, Any]:
    """Sender lag, ack latency, queue wait and end to end of every job that has the data."""
    lag, ack, wait, e2e = [], [], [], []
    for r in records:
        lag.append(r.sent - r.intended)
        if r.acked is not None:
            ack.append(r.acked - r.intended)
        if r.created_ms is not None and r.started_ms is not None:
            wait.append((r.started_ms - r.created_ms) / 1000)
        if r.finished_ms is not None:
            e2e.append(offset.local(r.finished_ms) - r.intended)
    return {
        "sender_lag": summary(lag),
        "ack": summary(ack),
        "queue_wait": summary(wait),
        "end_to_end": summary(e2e),
    }


def outcome_counts(loop: OpenLoop) -> dict[str, Any]:
    """How many jobs were planned, sent, acknowledged, failed to send, and how they ended."""
    sent = loop.sent()
    ended: dict[str, int] = {}
    for rec in sent:
        if rec.job_id is not None:
            state = rec.state or "unread"  # "unread": not finished when the drain gave up
            ended[state] = ended.get(state, 0) + 1
    succeeded = ended.pop("succeeded", 0)
    return {
        "planned": loop.total,
        "submitted": len(sent),
        "acknowledged": sum(1 for r in sent if r.job_id is not None),
        "submit_errors": sum(1 for r in sent if r.error is not None),
        "first_submit_errors": sorted({r.error for r in sent if r.error})[:5],
        "unsent": loop.total - len(sent),
        "succeeded": succeeded,
        "not_succeeded": sum(ended.values()),
        "not_succeeded_by_state": ended,
    }


def send_rate(records: Sequence[JobRecord]) -> float | None:
    if len(records) < 2:
        return None
    sent = [r.sent for r in records]
    return (len(sent) - 1) / max(max(sent) - min(sent), 1e-9)


# -- drain and expiry -----------------------------------------------------------------------


def drain(loop: OpenLoop, acked: int, deadline: Deadline) -> dict[str, Any]:
    """Until every acknowledged job has run and every record was read (or the deadline)."""
    r, key = loop.cluster.redis.client, loop.job["args"][1]
    t0 = time.monotonic()
    while counter_value(r, key) < acked and deadline.left() > 0:
        time.sleep(0.1)
    executed_s = time.monotonic() - t0
    read_all = loop.collector.wait_empty(max(0.0, deadline.left()))
    loop.collector.stop()
    return {
        "executed_after_s": executed_s,
        "all_read": read_all,
        "left_unread": loop.collector.pending(),
    }


def redis_now_ms(r: redis.Redis) -> int:
    seconds, micros = r.time()
    return int(seconds * 1000 + micros // 1000)


def wait_for_expiry(
    r: redis.Redis, prefix: str, records: Sequence[JobRecord], opts: Options, baseline: int
) -> dict[str, Any]:
    """Wait until ``result-ttl`` has passed since the last job finished (on the Redis clock),
    then up to ``ttl_margin`` more for the job keys to be back to ``baseline``."""
    finished = [rec.finished_ms for rec in records if rec.finished_ms is not None]
    last_ms = max(finished) if finished else redis_now_ms(r)
    expire_ms = last_ms + round(opts.result_ttl * 1000)
    wait_s = max(0.0, (expire_ms - redis_now_ms(r)) / 1000)
    console.print(f"Waiting {wait_s:.0f}s for result-ttl to pass…", highlight=False)
    time.sleep(wait_s)
    end = time.monotonic() + opts.ttl_margin
    while (keys := count_job_keys(r, prefix)) > baseline and time.monotonic() < end:
        time.sleep(0.5)
    return {
        "last_finished_ms": last_ms,
        "job_keys_gone_s_after_ttl": (redis_now_ms(r) - expire_ms) / 1000
        if keys <= baseline
        else None,
    }


# -- report ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Criterion:
    name: str
    passed: bool
    detail: str


def memory_criterion(growth: dict[str, dict[str, float | None]]) -> Criterion:
    worst = {name: g["growth_pct"] for name, g in growth.items()}
    known = {name: pct for name, pct in worst.items() if pct is not None}
    passed = bool(known) and len(known) == len(worst)
    passed = passed and all(pct < MAX_MEMORY_GROWTH_PCT for pct in known.values())
    detail = ", ".join(f"{n} {p:+.1f} %" if p is not None else f"{n} n/a" for n, p in worst.items())
    return Criterion(
        f"memory growth of every process < {MAX_MEMORY_GROWTH_PCT:g} %", passed, detail
    )


def criteria(res: dict[str, Any]) -> list[Criterion]:
    counts, lat = res["open_loop"], res["latency"]
    errors = counts["submit_errors"] + counts["unsent"] + counts["not_succeeded"]
    by_state = ", ".join(f"{k} {v}" for k, v in counts["not_succeeded_by_state"].items())
    executions = res["executions"]
    p99 = lat["queue_wait"]["p99_ms"]
    baseline, after = res["redis"]["baseline"]["job_keys"], res["redis"]["after"]["job_keys"]
    return [
        Criterion(
            "zero errors",
            errors == 0,
            f"{counts['submit_errors']} submit errors, {counts['unsent']} unsent, "
            f"{counts['not_succeeded']} not succeeded{f' ({by_state})' if by_state else ''}",
        ),
        Criterion(
            "executions == submissions",
            executions == counts["acknowledged"] == counts["planned"],
            f"{executions:,} executions, {counts['acknowledged']:,} acknowledged submissions "
            f"of {counts['planned']:,}",
        ),
        Criterion(
            f"p99 queue wait < {MAX_P99_QUEUE_WAIT_S:g} s",
            p99 is not None and p99 < MAX_P99_QUEUE_WAIT_S * 1000,
            f"p99 {fmt_ms(p99)} over {lat['queue_wait']['n']:,} jobs",
        ),
        memory_criterion(res["memory"]["growth"]),
        Criterion(
            "job keys back to baseline after result-ttl",
            after <= baseline,
            f"{baseline:,} before any job, {after:,} after",
        ),
    ]


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1000:.2f} s" if value >= 10_000 else f"{value:.1f} ms"


def fmt_mb(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} MB"


def p50_p99(s: dict[str, Any]) -> str:
    return f"{fmt_ms(s['p50_ms'])} / {fmt_ms(s['p99_ms'])}  (max {fmt_ms(s['max_ms'])})"


def load_rows(res: dict[str, Any]) -> list[tuple[str, str]]:
    sat, counts, opts = res["saturation"], res["open_loop"], res["options"]
    rounds = ", ".join(f"{x:,.1f}" for x in sat["rounds"]) or "skipped: --rate"
    achieved = counts["achieved_send_rate"]
    errors = counts["submit_errors"] + counts["unsent"] + counts["not_succeeded"]
    return [
        (
            "saturation (median of rounds)",
            f"{sat['median']:,.1f} jobs/s  ({rounds})" if sat["rounds"] else rounds,
        ),
        (
            "offered rate",
            f"{res['offered_rate']:,.1f} jobs/s  ({opts['fraction']:g} x saturation)"
            if sat["rounds"]
            else f"{res['offered_rate']:,.1f} jobs/s",
        ),
        ("duration", f"{opts['duration']:g} s"),
        (
            "submitted",
            f"{counts['submitted']:,} of {counts['planned']:,}  (sent at {achieved:,.1f} jobs/s)"
            if achieved
            else f"{counts['submitted']:,}",
        ),
        ("acknowledged", f"{counts['acknowledged']:,}"),
        ("errors", f"{errors:,}"),
        (
            "executions (counter) / submissions",
            f"{res['executions']:,} / {counts['acknowledged']:,}",
        ),
    ]


def latency_rows(res: dict[str, Any]) -> list[tuple[str, str]]:
    lat = res["latency"]
    return [
        ("sender lag p50 / p99 (actual - intended send)", p50_p99(lat["sender_lag"])),
        ("ack latency p50 / p99 (from intended send)", p50_p99(lat["ack"])),
        ("queue wait p50 / p99 (started - created)", p50_p99(lat["queue_wait"])),
        ("end to end p50 / p99 (finished - intended send)", p50_p99(lat["end_to_end"])),
    ]


def memory_rows(res: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for name, g in res["memory"]["growth"].items():
        pct = g["growth_pct"]
        growth = "—" if pct is None else f"{pct:+.1f} %"
        rows.append(
            (
                f"RSS {name}: warm / end / growth",
                f"{fmt_mb(g['warm_mb'])} / {fmt_mb(g['end_mb'])} / {growth}",
            )
        )
    return rows


def redis_rows(res: dict[str, Any]) -> list[tuple[str, str]]:
    before, after = res["redis"]["baseline"], res["redis"]["after"]
    gone = res["redis"]["expiry"]["job_keys_gone_s_after_ttl"]
    when = "not gone within the margin" if gone is None else f"gone {gone:.1f} s after the TTL"
    return [
        (
            "Redis job keys: baseline / after",
            f"{before['job_keys']:,} / {after['job_keys']:,}  ({when})",
        ),
        (
            "Redis keys under the prefix: baseline / after",
            f"{before['prefix_keys']:,} / {after['prefix_keys']:,}",
        ),
        (
            "Redis used_memory: baseline / after",
            f"{before['used_memory'] / MB:.2f} MB / {after['used_memory'] / MB:.2f} MB",
        ),
        (
            "after: P:jobs index / P:events stream",
            f"{after['jobs_index']:,} ({after['jobs_index_bytes'] / MB:.2f} MB) / "
            f"{after['events_stream']:,} ({after['events_stream_bytes'] / MB:.2f} MB)",
        ),
    ]


def build_table(res: dict[str, Any]) -> Table:
    table = Table(title="SJE open-loop load test", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    clock = res["clock"]
    rows = [*load_rows(res), *latency_rows(res), *memory_rows(res), *redis_rows(res)]
    rows.append(
        (
            "Redis clock - local clock (start; drift by the end)",
            f"{clock['offset_ms']:+.2f} ms ± {clock['error_ms']:.2f}; {clock['drift_ms']:+.2f} ms",
        )
    )
    for label, value in rows:
        table.add_row(label, value)
    return table


def print_report(res: dict[str, Any], checks: list[Criterion]) -> None:
    console.print(build_table(res))
    for c in checks:
        mark = "[green]PASS[/green]" if c.passed else "[red]FAIL[/red]"
        console.print(f"{mark} {c.name}: {c.detail}", highlight=False)


# -- main -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


@contextlib.contextmanager
def phase(res: dict[str, Any], name: str) -> Iterator[None]:
    console.print(f"[bold]{name}[/bold]…")
    t0 = time.monotonic()
    try:
        yield
    finally:
        res["phases_s"][name] = round(time.monotonic() - t0, 2)


def saturation(cluster: Cluster, opts: Options, res: dict[str, Any]) -> float:
    warm_up(cluster, 2 * opts.workers)
    rates = [] if opts.rate is not None else measure_saturation(cluster, opts)
    median = statistics.median(rates) if rates else None
    res["saturation"] = {"rounds": rates, "median": median, "jobs_per_round": opts.saturation_jobs}
    res["offered_rate"] = opts.rate if median is None else opts.fraction * median
    return float(res["offered_rate"])


def open_loop(cluster: Cluster, opts: Options, clock: Clock, res: dict[str, Any]) -> OpenLoop:
    rate = float(res["offered_rate"])
    loop = OpenLoop(cluster, opts, rate, clock)
    console.print(
        f"  {loop.total:,} jobs at {rate:,.1f} jobs/s for {opts.duration:g}s", highlight=False
    )
    sampler = MemorySampler(cluster.services(), opts.sample_interval, clock)
    sampler.start()
    try:
        loop.run()
    finally:
        sampler.stop()
    res["memory"] = {
        "warm_from_s": 0.2 * opts.duration,
        "growth": sampler.growth(loop.t0 + 0.2 * opts.duration),
        "samples": [{**s, "t": round(s["t"] - loop.t0, 2)} for s in sampler.samples],
    }
    return loop


def drain_and_expire(
    cluster: Cluster, opts: Options, loop: OpenLoop, clock: Clock, res: dict[str, Any]
) -> None:
    r = cluster.redis.client
    counts = outcome_counts(loop)  # acknowledged is final once the senders are done
    budget = Deadline(
        60 + opts.collect_delay + counts["acknowledged"] / max(res["offered_rate"], 1)
    )
    res["drain"] = drain(loop, counts["acknowledged"], budget)
    records = loop.sent()
    res["open_loop"] = outcome_counts(loop) | {"achieved_send_rate": send_rate(records)}
    res["collector_reads"] = loop.collector.reads
    offset = ClockOffset(res["clock"]["offset_ms"] / 1000, res["clock"]["error_ms"] / 1000)
    res["latency"] = latencies(records, offset)
    end_offset = ClockOffset.measure(r, clock)
    res["clock"]["drift_ms"] = (end_offset.offset_s - offset.offset_s) * 1000
    baseline = res["redis"]["baseline"]["job_keys"]
    res["redis"]["expiry"] = wait_for_expiry(r, cluster.prefix, records, opts, baseline)
    res["executions"] = counter_value(r, loop.job["args"][1])
    r.delete(loop.job["args"][1])
    res["redis"]["after"] = redis_state(r, cluster.prefix)


def measure(cluster: Cluster, opts: Options, clock: Clock, res: dict[str, Any]) -> None:
    r = cluster.redis.client
    offset = ClockOffset.measure(r, clock)
    res["clock"] = {"offset_ms": offset.offset_s * 1000, "error_ms": offset.error_s * 1000}
    res["redis"] = {
        "version": r.info("server")["redis_version"],
        "baseline": redis_state(r, cluster.prefix),
    }
    with phase(res, "saturation"):
        saturation(cluster, opts, res)
    with phase(res, "open loop"):
        loop = open_loop(cluster, opts, clock, res)
    with phase(res, "drain and result-ttl"):
        drain_and_expire(cluster, opts, loop, clock, res)


def run(opts: Options, res: dict[str, Any]) -> None:
    clock = Clock()
    with tempfile.TemporaryDirectory(prefix="sje-load-") as data:
        with phase(res, "start-up"):
            cluster = start_cluster(opts, Path(data))
        try:
            measure(cluster, opts, clock, res)
        finally:
            with phase(res, "stop"):
                cluster.stop()


def write_json(path: Path, res: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2, default=str) + "\n", encoding="utf-8")
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    console.print(f"Wrote {shown}", highlight=False)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    res: dict[str, Any] = {
        "started_at": time.time(),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
        "machine": machine(),
        "phases_s": {},
    }
    code = 0
    try:
        with sigterm_as_interrupt():
            run(opts, res)
        checks = criteria(res)
        res["criteria"] = [asdict(c) for c in checks]
        print_report(res, checks)
        code = 0 if all(c.passed for c in checks) else 1
    except KeyboardInterrupt:
        res["error"] = "interrupted"
        console.print("[red]Interrupted: stopped what was started.[/red]")
        code = 130
    except (BenchError, sje.SJEError, redis.RedisError, OSError) as exc:
        res["error"] = f"{type(exc).__name__}: {exc}"
        console.print(
            f"[red]Load test could not be measured:[/red] {res['error']}", highlight=False
        )
        code = 2
    res["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    res["duration_s"] = time.time() - res["started_at"]
    res["exit_code"] = code
    write_json(opts.json_path, res)
    return code


if __name__ == "__main__":
    sys.exit(main())
