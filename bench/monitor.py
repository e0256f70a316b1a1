"""Latency of the monitor's pages over a store of 1,000 jobs holding 100,000 tasks.

    .venv/bin/python bench/monitor.py [--jobs 1000] [--tasks 100000] [--requests 200]

It loads the local Redis (127.0.0.1:6379, DB 0) under a key prefix of its own
(``bench-monitor-<random>``) straight through the broker: one big job holding half the tasks
and ``--jobs`` - 1 small ones sharing the rest; 10 % of the small jobs succeed, 5 % fail, the
rest stay queued; 10 % of the big job's tasks succeed, 100 run and 5 wait for a retry. Then it
starts a real ``sje monitor`` on that prefix and times ``--requests`` sequential requests (after
10 unmeasured ones) of each page over one keep-alive connection, and prints p50 / p99 / max
latency and the answer's size. Nothing runs meanwhile: no master, no workers.

Only the monitor started here is ended, by PID; the prefix's keys are deleted at the end, also
on Ctrl-C. The whole run has a deadline (``--budget``, 300 s). Results go to
``bench/results/monitor-latest.json``. See bench/README.md ("Monitor pages").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
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

from sje.broker.base import NewJob
from sje.broker.redis import RedisBroker
from sje.config import MasterSettings
from sje.master.planner import plan
from sje.models import parse_job

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
REDIS_URL = "redis://127.0.0.1:6379/0"
WORKER = "bench-loader"
LEASE_S = 3600.0
CONCURRENCY = 50  # script calls in flight (the broker's pool holds 100 connections)
WARMUP = 10
BIG_RUNNING = 100
BIG_RETRYING = 5

console = Console(width=None if sys.stdout.isatty() else 120)


@dataclass(frozen=True)
class Options:
    jobs: int
    tasks: int
    requests: int
    budget: float
    json_path: Path


def parse_args(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(description="Latency of the monitor's pages (bench/README.md).")
    p.add_argument("--jobs", type=int, default=1_000, help="jobs in the store (1000)")
    p.add_argument("--tasks", type=int, default=100_000, help="tasks in all (100000)")
    p.add_argument("--requests", type=int, default=200, help="timed requests per page (200)")
    p.add_argument("--budget", type=float, default=300.0, help="deadline of the run, s (300)")
    p.add_argument("--json", type=Path, default=RESULTS / "monitor-latest.json")
    a = p.parse_args(argv)
    if a.jobs < 20 or a.tasks < 4 * a.jobs or a.requests < 10 or a.budget <= 0:
        p.error("need --jobs >= 20, --tasks >= 4 x --jobs, --requests >= 10, --budget > 0")
    return Options(a.jobs, a.tasks, a.requests, a.budget, a.json.resolve())


# -- the store --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """How ``--jobs`` and ``--tasks`` are laid out (see the module docstring)."""

    jobs: int
    tasks: int

    @property
    def small(self) -> int:
        return (self.tasks // 2) // (self.jobs - 1)

    @property
    def big(self) -> int:
        return self.tasks - self.small * (self.jobs - 1)

    @property
    def succeeded(self) -> int:
        return (self.jobs - 1) // 10

    @property
    def failed(self) -> int:
        return (self.jobs - 1) // 20

    @property
    def big_done(self) -> int:
        return self.big // 10


@dataclass
class Loaded:
    big: str
    small: list[str]
    seconds: float


def planned(definition: dict[str, Any]) -> NewJob:
    return plan(parse_job(definition), {}, MasterSettings(), secrets.token_bytes(16))


async def gather_in_batches(calls: list[Any]) -> list[Any]:
    out = []
    for start in range(0, len(calls), CONCURRENCY):
        out += await asyncio.gather(*calls[start : start + CONCURRENCY])
    return out


async def complete(b: RedisBroker, queue: str, n: int, deadline: Deadline) -> None:
    done = 0
    while done < n:
        deadline.check(f"completing tasks on {queue}")
        messages = await b.fetch(WORKER, [queue], min(500, n - done), LEASE_S)
        if not messages:
            raise BenchError(f"queue {queue} ran dry after {done} of {n} tasks")
        await gather_in_batches([b.complete(m.id, WORKER, b"1") for m in messages])
        done += len(messages)


def small_job(shape: Shape, i: int) -> NewJob:
    """Small job ``i``: on queue ``done`` (to succeed), ``bad`` (to fail) or ``default``."""
    if i < shape.succeeded:
        queue = "done"
    elif i < shape.succeeded + shape.failed:
        queue = "bad"
    else:
        queue = "default"
    inputs = list(range(shape.small))
    return planned(
        {"task": "bench.item", "name": f"batch {i:05d}", "inputs": inputs, "queue": queue}
    )


async def load(prefix: str, shape: Shape, deadline: Deadline) -> Loaded:
    t0 = time.monotonic()
    b = RedisBroker(REDIS_URL, prefix)
    try:
        big = planned(
            {
                "task": "bench.scan",
                "name": "big scan",
                "inputs": list(range(shape.big)),
                "queue": "big",
            }
        )
        await b.submit(big)
        small = [small_job(shape, i) for i in range(shape.jobs - 1)]
        deadline.check("planning the jobs")
        await gather_in_batches([b.submit(j) for j in small])
        await complete(b, "done", shape.succeeded * shape.small, deadline)
        for _ in range(shape.failed):
            (message,) = await b.fetch(WORKER, ["bad"], 1, LEASE_S)
            await b.fail(message.id, WORKER, {"type": "ValueError", "message": "bad row"}, None)
        await complete(b, "big", shape.big_done, deadline)
        held = await b.fetch(WORKER, ["big"], BIG_RUNNING + BIG_RETRYING, LEASE_S)
        for m in held[:BIG_RETRYING]:
            await b.fail(m.id, WORKER, {"type": "Timeout", "message": "slow"}, LEASE_S)
    finally:
        await b.close()
    return Loaded(big.id, [j.id for j in small], time.monotonic() - t0)


def delete_prefix(r: redis.Redis, prefix: str) -> int:
    keys = list(r.scan_iter(match=f"{prefix}:*", count=5000))
    for start in range(0, len(keys), 1000):
        r.delete(*keys[start : start + 1000])
    return len(keys)


# -- the requests -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    name: str
    path: Callable[[int], str]  # request number -> path and query


def pages(loaded: Loaded, shape: Shape) -> list[Page]:
    big, small = loaded.big, loaded.small
    deep = shape.big * 4 // 5
    full = max(1, min(5, shape.jobs // 50))  # the first pages, each full
    return [
        Page("jobs page (limit 50)", lambda i: f"/api/v1/jobs?limit=50&offset={50 * (i % full)}"),
        Page("jobs page, state=failed", lambda i: "/api/v1/jobs?state=failed&limit=50"),
        Page("jobs page, state=pending", lambda i: "/api/v1/jobs?state=pending&limit=50"),
        Page("job detail (small job)", lambda i: f"/api/v1/jobs/{small[i % len(small)]}"),
        Page("job detail (big job)", lambda i: f"/api/v1/jobs/{big}"),
        Page("tasks page, offset 0", lambda i: f"/api/v1/jobs/{big}/tasks?limit=100"),
        Page(
            f"tasks page, offset {deep:,}",
            lambda i: f"/api/v1/jobs/{big}/tasks?offset={deep}&limit=100",
        ),
        Page(
            "tasks page, state=succeeded",
            lambda i: f"/api/v1/jobs/{big}/tasks?state=succeeded&limit=100",
        ),
        Page("timeline (200 newest)", lambda i: f"/api/v1/jobs/{big}/timeline"),
        Page("overview", lambda i: "/api/v1/overview"),
        Page("queues", lambda i: "/api/v1/queues"),
        Page("/metrics", lambda i: "/metrics"),
    ]


def measure(http: httpx.Client, page: Page, n: int, deadline: Deadline) -> dict[str, Any]:
    times, sizes = [], []
    for i in range(WARMUP + n):
        deadline.check(page.name)
        t0 = time.perf_counter()
        response = http.get(page.path(i))
        elapsed = time.perf_counter() - t0
        if response.status_code != 200:
            raise BenchError(f"{page.name}: HTTP {response.status_code}: {response.text[:200]}")
        if i >= WARMUP:
            times.append(elapsed * 1000)
            sizes.append(len(response.content))
    cuts = statistics.quantiles(times, n=100, method="inclusive")
    return {
        "page": page.name,
        "example": page.path(0),
        "n": n,
        "p50_ms": cuts[49],
        "p99_ms": cuts[98],
        "max_ms": max(times),
        "mean_ms": statistics.fmean(times),
        "bytes": int(statistics.median(sizes)),
    }


def build_table(res: dict[str, Any]) -> Table:
    shape = res["shape"]
    title = f"SJE monitor: {shape['jobs']:,} jobs, {shape['tasks']:,} tasks"
    table = Table(title=title, title_justify="left")
    table.add_column("page")
    for name in ("p50 ms", "p99 ms", "max ms", "bytes"):
        table.add_column(name, justify="right")
    for row in res["pages"]:
        table.add_row(
            row["page"],
            f"{row['p50_ms']:.1f}",
            f"{row['p99_ms']:.1f}",
            f"{row['max_ms']:.1f}",
            f"{row['bytes']:,}",
        )
    return table


# -- main -------------------------------------------------------------------------------------


def start_monitor(prefix: str, token: str, log_dir: Path) -> tuple[Service, str]:
    env = sje_env(SJE_KEY_PREFIX=prefix, SJE_TOKEN=token, SJE_SECRET=secrets.token_hex(24))
    args = ["-m", "sje", "monitor", "--port", "0", "--broker-url", REDIS_URL]
    service = Service("monitor", args, env, log_dir)
    try:
        line = service.wait_for("SJE monitor listening on", 60)
    except BaseException:
        service.stop()
        raise
    return service, line.rsplit(" ", 1)[-1]


def run(opts: Options, res: dict[str, Any]) -> None:
    deadline = Deadline(opts.budget)
    shape = Shape(opts.jobs, opts.tasks)
    res["shape"] = {
        "jobs": shape.jobs,
        "tasks": shape.tasks,
        "big": shape.big,
        "small": shape.small,
    }
    prefix = f"bench-monitor-{secrets.token_hex(4)}"
    r = redis.Redis.from_url(REDIS_URL, socket_timeout=30)
    log_dir = RESULTS / "monitor-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    monitor: Service | None = None
    try:
        console.print(f"loading {shape.tasks:,} tasks in {shape.jobs:,} jobs under {prefix}…")
        loaded = asyncio.run(load(prefix, shape, deadline))
        res["load_s"] = round(loaded.seconds, 2)
        token = secrets.token_urlsafe(24)
        monitor, url = start_monitor(prefix, token, log_dir)
        headers = {"Authorization": f"Bearer {token}"}
        timeout = httpx.Timeout(30.0, connect=5.0)
        res["pages"] = []
        with httpx.Client(base_url=url, headers=headers, timeout=timeout) as http:
            for page in pages(loaded, shape):
                console.print(f"  {page.name}", highlight=False)
                res["pages"].append(measure(http, page, opts.requests, deadline))
    finally:
        if monitor is not None:
            monitor.stop()
        res["keys_deleted"] = delete_prefix(r, prefix)
        r.close()


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    res: dict[str, Any] = {
        "started_at": time.time(),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        },
    }
    code = 0
    try:
        with sigterm_as_interrupt():
            run(opts, res)
        console.print(build_table(res))
        shape = res["shape"]
        console.print(
            f"{res['options']['requests']} timed requests per page, one at a time; big job "
            f"{shape['big']:,} tasks, small jobs {shape['small']} each; store loaded in "
            f"{res['load_s']:.1f}s; {res['keys_deleted']:,} keys deleted after",
            highlight=False,
        )
    except KeyboardInterrupt:
        res["error"] = "interrupted"
        console.print("[red]Interrupted: stopped what was started, deleted its keys.[/red]")
        code = 130
    except (BenchError, redis.RedisError, httpx.HTTPError, OSError) as exc:
        res["error"] = f"{type(exc).__name__}: {exc}"
        console.print(f"[red]Could not be measured:[/red] {res['error']}", highlight=False)
        code = 2
    res["duration_s"] = round(time.time() - res["started_at"], 2)
    opts.json_path.parent.mkdir(parents=True, exist_ok=True)
    opts.json_path.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    return code


if __name__ == "__main__":
    sys.exit(main())
