"""SJE on each of its backends, side by side: drain throughput and round-trip latency.

    .venv/bin/python bench/backends.py [--quick] [--backends redis,sqlite,amqp+redis,amqp+sqlite]

For every backend it starts a real master and workers (the local Redis on 127.0.0.1:6379 under
a key prefix of its own, a SQLite file in a temporary directory, the local RabbitMQ on
127.0.0.1:5672 under a prefix of its own), then measures:

- **drain**: one job of N no-op tasks (``bench.tasks.echo``) submitted, then 2 worker processes
  (``--concurrency 1`` each) started; tasks/s from the job's start to its end on the store's
  clock (``finished_at - started_at``), and the wall time from submit to result;
- **round trip**: M sequential single-task jobs with 1 worker process, submit → result
  observed by the client; p50 and p99.

Everything it starts is ended by PID; its Redis keys, SQLite file and RabbitMQ queues are
deleted. A table is printed, and the numbers written to ``bench/results/backends.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, BenchError, Service, sje_env  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/0"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
TASK = "bench.tasks.echo"
BACKENDS = ("redis", "sqlite", "amqp+redis", "amqp+sqlite")
console = Console(width=None if sys.stdout.isatty() else 120)


@dataclass(frozen=True)
class Sizes:
    drain: int
    round_trips: int
    warmup: int


FULL = Sizes(drain=20_000, round_trips=500, warmup=10)
QUICK = Sizes(drain=1_000, round_trips=50, warmup=3)


def backend_env(name: str, prefix: str, folder: Path) -> dict[str, str]:
    sqlite = f"sqlite:///{folder}/sje.db"
    urls = {
        "redis": {"SJE_BROKER_URL": REDIS_URL},
        "sqlite": {"SJE_BROKER_URL": sqlite},
        "amqp+redis": {"SJE_BROKER_URL": AMQP_URL, "SJE_STATE_URL": REDIS_URL},
        "amqp+sqlite": {"SJE_BROKER_URL": AMQP_URL, "SJE_STATE_URL": sqlite},
    }[name]
    return sje_env(
        **urls,
        SJE_KEY_PREFIX=prefix,
        SJE_TOKEN=f"bench-{prefix}",
        SJE_SECRET=f"bench-secret-{prefix}",
        SJE_STATE_DIR=str(folder),
    )


class Run:
    """One backend's processes: started here, ended by PID."""

    def __init__(self, name: str, env: dict[str, str], logs: Path) -> None:
        self.name, self.env, self.logs = name, env, logs
        self.services: list[Service] = []

    def start(self, label: str, args: list[str], marker: str) -> tuple[Service, str]:
        """The started service and its output line holding ``marker``."""
        service = Service(f"{self.name}-{label}".replace("+", "-"), args, self.env, self.logs)
        self.services.append(service)
        return service, service.wait_for(marker, 60)

    def master(self) -> str:
        _, line = self.start("master", ["-m", "sje", "master", "--port", "0"], "listening on")
        return line.rsplit(" ", 1)[-1]

    def worker(self, label: str) -> Service:
        args = ["-m", "sje", "worker", "--tasks", "bench.tasks", "--concurrency", "1"]
        return self.start(label, [*args, "--name", label], "ready:")[0]

    def stop(self) -> None:
        while self.services:
            with contextlib.suppress(Exception):
                self.services.pop().stop()


def measure(name: str, sizes: Sizes, logs: Path) -> dict[str, Any]:
    import sje

    prefix = f"benchb-{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory(prefix="sje-bench-") as tmp:
        run = Run(name, backend_env(name, prefix, Path(tmp)), logs)
        try:
            url = run.master()
            client = sje.Client(url, token=run.env["SJE_TOKEN"])
            out: dict[str, Any] = {}
            inputs = list(range(sizes.drain))
            t0 = time.perf_counter()
            handle = client.submit({"task": TASK, "inputs": inputs, "allow_unknown_task": True})
            out["submit_s"] = time.perf_counter() - t0
            workers = [run.worker(f"drain-{i}") for i in (1, 2)]
            if handle.result(timeout=600) != inputs:
                raise BenchError(f"{name}: the drain job's results are not its inputs")
            out["drain_wall_s"] = time.perf_counter() - t0
            status = handle.status()
            out["drain_s"] = status["finished_at"] - status["started_at"]
            out["drain_rate"] = sizes.drain / out["drain_s"]
            for w in workers:
                w.stop()
            run.worker("latency")
            out.update(round_trips(client, sizes))
            client.close()
            return out
        finally:
            run.stop()
            cleanup(name, prefix)


def round_trips(client: Any, sizes: Sizes) -> dict[str, float]:
    def one(i: int) -> float:
        t = time.perf_counter()
        if client.submit({"task": TASK, "args": [i]}, wait=30).result(timeout=60) != i:
            raise BenchError(f"round trip {i} returned a wrong value")
        return (time.perf_counter() - t) * 1000

    for i in range(sizes.warmup):
        one(i)
    times = [one(i) for i in range(sizes.round_trips)]
    cuts = statistics.quantiles(times, n=100, method="inclusive")
    return {"rt_p50_ms": cuts[49], "rt_p99_ms": cuts[98], "rt_mean_ms": statistics.fmean(times)}


def cleanup(name: str, prefix: str) -> None:
    """Delete the run's Redis keys and RabbitMQ queues (the SQLite file goes with its folder)."""
    if "redis" in name:
        r = redis.Redis.from_url(REDIS_URL)
        keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            r.delete(*keys[i : i + 500])
        r.close()
    if name.startswith("amqp"):
        from sje.broker.amqp_queue import AmqpQueue

        async def drop() -> None:
            queue = AmqpQueue(AMQP_URL, prefix)
            await queue.connect()
            try:
                await queue.delete_topology(["default"])
            finally:
                await queue.close()

        asyncio.run(drop())


def table(results: dict[str, dict[str, Any]], sizes: Sizes) -> Table:
    base = results.get("redis", {})
    out = Table(
        title=f"SJE per backend: drain of {sizes.drain:,} no-op tasks (2 worker "
        f"processes), {sizes.round_trips} sequential round trips (1 worker process)"
    )
    out.add_column("backend")
    for column in (
        "drain tasks/s",
        "vs Redis",
        "drain wall s",
        "submit s",
        "round trip p50 ms",
        "p99 ms",
    ):
        out.add_column(column, justify="right")
    for name, res in results.items():
        if "error" in res:
            out.add_row(name, f"failed: {res['error']}", "", "", "", "", "")
            continue
        vs = f"{res['drain_rate'] / base['drain_rate']:.2f}x" if "drain_rate" in base else "-"
        out.add_row(
            name,
            f"{res['drain_rate']:,.0f}",
            vs,
            f"{res['drain_wall_s']:.2f}",
            f"{res['submit_s']:.2f}",
            f"{res['rt_p50_ms']:.1f}",
            f"{res['rt_p99_ms']:.1f}",
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="SJE's drain and round trip on each backend.")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke check")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset")
    args = parser.parse_args(argv)
    chosen = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(chosen) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backend(s): {', '.join(sorted(unknown))}; use {BACKENDS}")
    sizes = QUICK if args.quick else FULL
    logs = RESULTS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for name in chosen:
        console.print(f"[bold]{name}[/bold]: running…")
        t0 = time.monotonic()
        try:
            results[name] = measure(name, sizes, logs)
        except Exception as exc:  # one backend failing must not stop the others
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        console.print(f"  done in {time.monotonic() - t0:.1f}s")
    console.print(table(results, sizes))
    (RESULTS / "backends.json").write_text(json.dumps(results, indent=2) + "\n", "utf-8")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
