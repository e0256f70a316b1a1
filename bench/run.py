"""Benchmark SJE against RQ, Celery and Dramatiq on this machine and its local Redis.

    .venv/bin/python bench/run.py [--quick] [--systems sje,rq,celery,dramatiq]

For every system it starts real worker processes (and SJE's master), measures the enqueue rate,
the drain throughput of 2 worker processes, the round-trip latency of sequential single-task
jobs with 1 worker process and the workers' memory, then prints a table (rows: metrics;
columns: systems and "SJE vs best peer") and writes ``bench/results/latest.json``.

SJE uses Redis DB 0 under a key prefix of its own (``bench-<random>``), deleted at the end; the
peers and the completion counters use DB 15, which is flushed (that DB only). Only processes
started here are ended, by PID (SIGTERM, then SIGKILL). Everything talks to 127.0.0.1 only.
See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import redis
from common import (  # shared with compare.py and the drivers under peers/
    BenchError,
    CompletionWatch,
    Deadline,
    MemorySampler,
    Service,
    sigterm_as_interrupt,
    timed,
)
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
SJE_DB = 0
PEER_DB = 15
SJE_TASK = "bench.tasks.noop"
PEERS = ("rq", "celery", "dramatiq")
SYSTEMS = ("sje", *PEERS)
NAMES = {"sje": "SJE", "rq": "RQ", "celery": "Celery", "dramatiq": "Dramatiq"}
MB = 1024 * 1024

console = Console(width=None if sys.stdout.isatty() else 120)


def redis_url(db: int) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


@dataclass(frozen=True)
class Sizes:
    enqueue: int
    enqueue_big: int
    drain: int
    sje_round_trips: int
    peer_round_trips: int
    warmup: int
    rq_forking_sample: int
    system_budget_s: float
    total_budget_s: float


FULL = Sizes(20_000, 100_000, 20_000, 1_000, 200, 10, 1_000, 180.0, 600.0)
QUICK = Sizes(2_000, 10_000, 2_000, 100, 100, 5, 200, 60.0, 240.0)


# -- processes ------------------------------------------------------------------------------


@dataclass
class Ctx:
    sizes: Sizes
    run_id: str
    log_dir: Path
    tasks: ModuleType
    sje_redis: redis.Redis
    peer_redis: redis.Redis
    deadline: Deadline
    services: list[Service] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"bench-{self.run_id}"

    def env(self, counter: str, **extra: str) -> dict[str, str]:
        skip = ("SJE_", "BENCH_", "CELERY_", "RQ_", "DRAMATIQ_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        env["BENCH_REDIS_URL"] = redis_url(PEER_DB)
        env["BENCH_COUNTER_KEY"] = counter
        env["SJE_TASK_ENV"] = "BENCH_REDIS_URL,BENCH_COUNTER_KEY"  # SJE children get no others
        env["SJE_TOKEN"] = f"bench-token-{self.run_id}"
        env.update(extra)
        return env

    def start(self, name: str, args: list[str], env: dict[str, str]) -> Service:
        service = Service(name, args, env, self.log_dir)
        self.services.append(service)
        return service

    def stop_all(self) -> None:
        while self.services:
            with contextlib.suppress(Exception):
                self.services.pop().stop()


# -- measuring helpers ---------------------------------------------------------------------


def round_trips(ctx: Ctx, n: int, one: Callable[[int], Any]) -> dict[str, Any]:
    """``ctx.sizes.warmup`` unmeasured calls (the first also waits for the worker), then ``n``
    measured sequential round trips; each must return its input."""
    for i in range(ctx.sizes.warmup):
        if one(i) != i:
            raise BenchError(f"round trip {i} returned a wrong value")
    times = []
    for i in range(n):
        value, dt = timed(lambda i=i: one(i))
        if value != i:
            raise BenchError(f"round trip {i} returned {value!r}")
        times.append(dt * 1000)
        ctx.deadline.check("round trips")
    cuts = statistics.quantiles(times, n=100, method="inclusive")
    return {
        "latency_n": n,
        "latency_p50_ms": cuts[49],
        "latency_p99_ms": cuts[98],
        "latency_mean_ms": statistics.fmean(times),
    }


def drain_metrics(watch: CompletionWatch, ctx: Ctx, key: str) -> dict[str, Any]:
    count = int(ctx.peer_redis.get(key) or 0)
    if count != watch.total:
        raise BenchError(f"counter shows {count} completions for {watch.total} tasks")
    assert watch.first is not None and watch.last is not None
    return {
        "drain_n": watch.total,
        "drain_rate": watch.rate(),
        "drain_s": watch.last - watch.first,
        "drain_count": count,
    }


# -- SJE ----------------------------------------------------------------------------------


def start_sje_workers(
    ctx: Ctx, env: dict[str, str], names: list[str], procs: int = 1
) -> list[Service]:
    args = ["-m", "sje", "worker", "--tasks", "bench.tasks", "--concurrency", str(procs)]
    workers = [ctx.start(name, [*args, "--name", name], env) for name in names]
    for w in workers:
        w.wait_for("ready:", ctx.deadline.cap(60))
    return workers


def bench_sje(ctx: Ctx, res: dict[str, Any]) -> None:
    import sje

    counter = "bench:done:sje"
    env = ctx.env(counter, SJE_BROKER_URL=redis_url(SJE_DB), SJE_KEY_PREFIX=ctx.prefix)
    master = ctx.start(
        "sje-master", ["-m", "sje", "master", "--port", "0", "--bind-address", REDIS_HOST], env
    )
    url = master.wait_for("listening on", ctx.deadline.cap(60)).rsplit(" ", 1)[-1]
    workers = start_sje_workers(ctx, env, ["sje-drain-1", "sje-drain-2"])
    client = sje.Client(url, token=env["SJE_TOKEN"])
    try:
        sje_enqueue(ctx, client, res)
        sje_drain(ctx, client, workers, counter, res)
        for w in workers:
            w.stop()
        # like Dramatiq's default 8 threads: 16 tasks at once (here 16 child processes)
        workers = start_sje_workers(ctx, env, ["sje-drain-c8-1", "sje-drain-c8-2"], 8)
        res["variants"] = {"2 workers x --concurrency 8": {}}
        sje_drain(ctx, client, workers, counter, res["variants"]["2 workers x --concurrency 8"])
        for w in workers:
            w.stop()
        start_sje_workers(ctx, env, ["sje-latency"])

        def one(i: int) -> Any:
            return client.submit({"task": SJE_TASK, "args": [i]}).result(timeout=30)

        res.update(round_trips(ctx, ctx.sizes.sje_round_trips, one))
    finally:
        client.close()


def sje_enqueue(ctx: Ctx, client: Any, res: dict[str, Any]) -> None:
    """Submit-call wall time of one job, into a queue no worker serves (then cancelled)."""

    def submit(n: int) -> float:
        inputs = list(range(n))
        job = {"task": SJE_TASK, "inputs": inputs, "queue": "bench-enqueue"}
        handle, dt = timed(lambda: client.submit(job))
        handle.cancel()
        return dt

    submit(10)  # warm the master and the connection
    n, big = ctx.sizes.enqueue, ctx.sizes.enqueue_big
    res["enqueue_s"] = submit(n)
    res["enqueue_rate"] = n / res["enqueue_s"]
    ctx.deadline.check("enqueue")
    res["enqueue_big_s"] = submit(big)
    res["enqueue_big_rate"] = big / res["enqueue_big_s"]


def sje_drain(
    ctx: Ctx, client: Any, workers: list[Service], counter: str, res: dict[str, Any]
) -> None:
    n = ctx.sizes.drain
    inputs = list(range(n))
    ctx.peer_redis.delete(counter)
    with CompletionWatch(ctx.peer_redis, counter, n) as watch, MemorySampler(workers) as mem:
        t0 = time.perf_counter()
        handle = client.submit({"task": SJE_TASK, "inputs": inputs})
        t_submitted = time.perf_counter()
        values = handle.result(timeout=ctx.deadline.cap(180))
        t_end = time.perf_counter()
        watch.wait(ctx.deadline.cap(10))
        res.update(mem.final())
    if values != inputs:
        raise BenchError("the drain job's results are not its inputs in order")
    status = handle.status()
    res.update(drain_metrics(watch, ctx, counter))
    res["drain_submit_s"] = t_submitted - t0
    res["drain_wall_s"] = t_end - t0
    res["drain_server_s"] = status["finished_at"] - status["started_at"]


# -- RQ -----------------------------------------------------------------------------------


RQ_FAST_WORKER = "rq.SimpleWorker"  # runs jobs in the worker process: RQ's fastest mode
RQ_FORKING_WORKER = "rq.Worker"  # RQ's default: forks a work horse for every job


def rq_drain(
    ctx: Ctx, n: int, worker_class: str, counter: str, res: dict[str, Any]
) -> CompletionWatch:
    """Enqueue ``n`` no-ops in one pipeline (timed), then drain them with 2 burst workers."""
    from rq import Queue

    queue = Queue("bench", connection=ctx.peer_redis)
    noop = ctx.tasks.rq_noop
    ctx.peer_redis.delete(counter)

    def enqueue() -> None:
        queue.enqueue_many([Queue.prepare_data(noop, (i,)) for i in range(n)])

    _, res["enqueue_s"] = timed(enqueue)
    res["enqueue_rate"] = n / res["enqueue_s"]
    args = ["-m", "rq.cli", "worker", "--url", redis_url(PEER_DB), "--logging_level", "WARNING"]
    args += ["--worker-class", worker_class, "--burst", "bench"]
    env = ctx.env(counter)
    name = worker_class.rsplit(".", 1)[-1].lower()
    with CompletionWatch(ctx.peer_redis, counter, n) as watch:
        workers = [ctx.start(f"rq-drain-{name}-{i}", args, env) for i in (1, 2)]
        with MemorySampler(workers, interval=0.5) as mem:  # burst workers exit when done
            watch.wait(ctx.deadline.cap(240), workers)
            res.update(mem.final())
    return watch


def bench_rq(ctx: Ctx, res: dict[str, Any]) -> None:
    from rq import Queue

    counter = "bench:done:rq"
    watch = rq_drain(ctx, ctx.sizes.drain, RQ_FAST_WORKER, counter, res)
    res.update(drain_metrics(watch, ctx, counter))
    res["drain_wall_s"] = res["enqueue_s"] + res["drain_s"]
    res["worker_class"] = RQ_FAST_WORKER
    # RQ's default worker, on a smaller sample (it forks per job: too slow for the full size)
    forking: dict[str, Any] = {"drain_n": ctx.sizes.rq_forking_sample}
    watch = rq_drain(ctx, ctx.sizes.rq_forking_sample, RQ_FORKING_WORKER, counter, forking)
    forking.update(drain_metrics(watch, ctx, counter))
    res["variants"] = {"default rq.Worker (forks per job)": forking}

    queue = Queue("bench", connection=ctx.peer_redis)
    args = ["-m", "rq.cli", "worker", "--url", redis_url(PEER_DB), "--logging_level", "WARNING"]
    ctx.start("rq-latency", [*args, "--worker-class", RQ_FAST_WORKER, "bench"], ctx.env(counter))

    def one(i: int) -> Any:
        job = queue.enqueue(ctx.tasks.rq_noop, i)
        result = job.latest_result(timeout=30)
        if result is None:
            raise BenchError(f"RQ job {job.id}: no result within 30s")
        return result.return_value

    res.update(round_trips(ctx, ctx.sizes.peer_round_trips, one))


# -- Celery -------------------------------------------------------------------------------


def bench_celery(ctx: Ctx, res: dict[str, Any]) -> None:
    counter = "bench:done:celery"
    env = ctx.env(counter)
    noop, noop_result = ctx.tasks.celery_noop, ctx.tasks.celery_noop_result
    n = ctx.sizes.drain
    with ctx.tasks.celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=3)

    def enqueue() -> None:
        for i in range(n):
            noop.delay(i)

    _, res["enqueue_s"] = timed(enqueue)
    res["enqueue_rate"] = n / res["enqueue_s"]

    def worker(name: str, concurrency: int) -> Service:
        args = ["-m", "celery", "-A", "bench.tasks:celery_app", "worker", "--pool", "prefork"]
        args += ["--concurrency", str(concurrency), "--loglevel", "WARNING", "-n", f"{name}@%h"]
        args += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        return ctx.start(name, args, env)

    with CompletionWatch(ctx.peer_redis, counter, n) as watch:
        workers = [worker("celery-drain", 2)]
        with MemorySampler(workers) as mem:
            watch.wait(ctx.deadline.cap(240), workers)
            res.update(mem.final())
    res.update(drain_metrics(watch, ctx, counter))
    res["drain_wall_s"] = res["enqueue_s"] + res["drain_s"]
    workers[0].stop()
    worker("celery-latency", 1)
    res.update(
        round_trips(ctx, ctx.sizes.peer_round_trips, lambda i: noop_result.delay(i).get(timeout=30))
    )


# -- Dramatiq -----------------------------------------------------------------------------


def dramatiq_worker(ctx: Ctx, name: str, processes: int, threads: int, counter: str) -> Service:
    args = ["-m", "dramatiq", "bench.tasks:dramatiq_broker", "--processes", str(processes)]
    args += ["--threads", str(threads), "--worker-shutdown-timeout", "10000"]
    return ctx.start(name, args, ctx.env(counter))


def dramatiq_drain(
    ctx: Ctx, n: int, threads: int, counter: str, res: dict[str, Any]
) -> CompletionWatch:
    """``actor.send`` ``n`` no-ops (timed), then drain them with 2 worker processes."""
    noop = ctx.tasks.dramatiq_noop
    ctx.peer_redis.delete(counter)

    def enqueue() -> None:
        for i in range(n):
            noop.send(i)

    _, res["enqueue_s"] = timed(enqueue)
    res["enqueue_rate"] = n / res["enqueue_s"]
    with CompletionWatch(ctx.peer_redis, counter, n) as watch:
        workers = [dramatiq_worker(ctx, f"dramatiq-drain-t{threads}", 2, threads, counter)]
        with MemorySampler(workers) as mem:
            watch.wait(ctx.deadline.cap(240), workers)
            res.update(mem.final())
    workers[0].stop()
    return watch


def bench_dramatiq(ctx: Ctx, res: dict[str, Any]) -> None:
    counter = "bench:done:dramatiq"
    watch = dramatiq_drain(ctx, ctx.sizes.drain, 1, counter, res)
    res.update(drain_metrics(watch, ctx, counter))
    res["drain_wall_s"] = res["enqueue_s"] + res["drain_s"]
    # Dramatiq's default is 8 threads per process: 16 tasks at once instead of 2
    threaded: dict[str, Any] = {}
    watch = dramatiq_drain(ctx, ctx.sizes.drain, 8, counter, threaded)
    threaded.update(drain_metrics(watch, ctx, counter))
    res["variants"] = {"--threads 8 (its default)": threaded}
    dramatiq_worker(ctx, "dramatiq-latency", 1, 1, counter)
    noop_result = ctx.tasks.dramatiq_noop_result

    def one(i: int) -> Any:
        return noop_result.send(i).get_result(block=True, timeout=30_000)

    res.update(round_trips(ctx, ctx.sizes.peer_round_trips, one))


BENCHES: dict[str, Callable[[Ctx, dict[str, Any]], None]] = {
    "sje": bench_sje,
    "rq": bench_rq,
    "celery": bench_celery,
    "dramatiq": bench_dramatiq,
}


# -- report -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool
    fmt: str
    compare: bool = True


def metrics(s: Sizes) -> list[Metric]:
    return [
        Metric("enqueue_rate", f"enqueue {s.enqueue:,} (inputs/s)", True, "{:,.0f}"),
        Metric("enqueue_big_s", f"submit one {s.enqueue_big:,}-input job (s)", False, "{:.2f}"),
        Metric("drain_rate", f"drain {s.drain:,} on 2 procs (tasks/s)", True, "{:,.0f}"),
        Metric("drain_wall_s", f"{s.drain:,}: submit → all done (s) ¹", False, "{:.2f}", False),
        Metric("latency_p50_ms", "round trip p50 (ms) ²", False, "{:.2f}"),
        Metric("latency_p99_ms", "round trip p99 (ms) ²", False, "{:.2f}"),
        Metric("worker_rss_mb", "worker RSS after drain (MB) ³", False, "{:.1f}"),
        Metric("worker_pss_mb", "worker PSS after drain (MB) ³", False, "{:.1f}"),
    ]


def ratio(metric: Metric, results: dict[str, dict[str, Any]]) -> tuple[float, str] | None:
    """SJE against the best peer, as "times better" (above 1: SJE is better)."""
    ours = results.get("sje", {}).get(metric.key)
    peers = {p: results[p].get(metric.key) for p in PEERS if p in results}
    peers = {p: v for p, v in peers.items() if v}
    if not metric.compare or not ours or not peers:
        return None
    pick = max if metric.higher_is_better else min
    best = pick(peers, key=lambda p: peers[p])
    value = ours / peers[best] if metric.higher_is_better else peers[best] / ours
    return value, best


def cell(metric: Metric, res: dict[str, Any] | None) -> str:
    if not res or "elapsed_s" not in res:
        return "not run"
    value = res.get(metric.key)
    if value is not None:
        return metric.fmt.format(value)
    return "error" if "error" in res else "n/a"


def build_table(sizes: Sizes, results: dict[str, dict[str, Any]], systems: list[str]) -> Table:
    table = Table(title="SJE vs peers (same Redis, same machine)", title_justify="left")
    table.add_column("metric")
    for name in systems:
        table.add_column(NAMES[name], justify="right")
    table.add_column("SJE vs best peer", justify="right")
    for m in metrics(sizes):
        cells = []
        for name in systems:
            cells.append(cell(m, results.get(name)))
        r = ratio(m, results)
        if r is None:
            cells.append("—")
        else:
            colour = "green" if r[0] >= 1 else "red"
            cells.append(f"[{colour}]{r[0]:.2f}x ({NAMES[r[1]]})[/{colour}]")
        table.add_row(m.label, *cells)
    return table


def variant_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for name, res in results.items():
        for label, v in (res.get("variants") or {}).items():
            if v.get("drain_rate"):
                what = f"{NAMES[name]} {label}"
                out.append(f"  {what}: drain {v['drain_n']:,} at {v['drain_rate']:,.0f} tasks/s")
    return ["Other modes (drain only):", *out] if out else []


def notes(sizes: Sizes) -> list[str]:
    return [
        "SJE vs best peer: above 1x SJE is better (faster, or less memory); below 1x the best "
        "peer (named) is better.",
        "Peers' workers at log level WARNING; RQ with rq.SimpleWorker (its default rq.Worker: "
        "below).",
        "¹ SJE: one submit call until all results are fetched. Peers: enqueue time + drain time, "
        "measured apart (their workers start after the enqueue), so no ratio.",
        f"² Sequential single-task jobs, 1 worker process: SJE {sizes.sje_round_trips:,}, "
        f"peers {sizes.peer_round_trips:,} round trips, after {sizes.warmup} unmeasured ones.",
        "³ The drain's 2 worker processes with all their children, sampled right after the "
        "drain (RQ's burst workers: last sample before they exit). PSS counts shared pages once.",
    ]


def versions() -> dict[str, str]:
    out = {}
    for dist in ("sparkjobexecutor", "rq", "celery", "kombu", "dramatiq", "redis"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    return out


def machine(r: redis.Redis) -> dict[str, Any]:
    info = r.info("server")
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis": info.get("redis_version"),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "versions": versions(),
    }


# -- main ---------------------------------------------------------------------------------


def ensure_peers() -> None:
    """Install the peers with pip when one is not importable (benchmark-only dependencies)."""
    missing = [m for m in PEERS if importlib.util.find_spec(m) is None]
    if not missing:
        return
    console.print(f"Installing benchmark peers with pip ({', '.join(missing)} missing)…")
    requirements = str(BENCH / "requirements.txt")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", requirements], check=True)
    importlib.invalidate_caches()


def delete_prefix(r: redis.Redis, prefix: str) -> int:
    deleted = 0
    batch: list[bytes] = []
    for key in r.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += r.unlink(*batch)
            batch = []
    if batch:
        deleted += r.unlink(*batch)
    return deleted


def run_system(ctx: Ctx, name: str, total: Deadline, res: dict[str, Any]) -> None:
    """Measure one system into ``res`` (kept as far as it got when interrupted)."""
    ctx.deadline = Deadline(min(ctx.sizes.system_budget_s, max(total.left(), 0)))
    if name != "sje":
        ctx.peer_redis.flushdb()
    console.print(f"[bold]{NAMES[name]}[/bold]: running…")
    t0 = time.monotonic()
    try:
        BENCHES[name](ctx, res)
    except KeyboardInterrupt:
        res["error"] = "interrupted"
        raise
    except Exception as exc:  # one system failing must not stop the others
        res["error"] = f"{type(exc).__name__}: {exc}"
        console.print(f"[red]{NAMES[name]} failed:[/red] {res['error']}", highlight=False)
    finally:
        ctx.stop_all()
        res["elapsed_s"] = time.monotonic() - t0
    console.print(f"  done in {res['elapsed_s']:.1f}s")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark SJE against RQ, Celery, Dramatiq.")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke check")
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated subset of {','.join(SYSTEMS)} (default: all)",
    )
    args = parser.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown system(s): {', '.join(sorted(unknown))}")
    return args


def make_ctx(sizes: Sizes) -> Ctx:
    sys.path.insert(0, str(ROOT))
    os.environ["BENCH_REDIS_URL"] = redis_url(PEER_DB)  # read by bench.tasks on import
    run_id = secrets.token_hex(4)
    log_dir = RESULTS / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("*.log"):
        old.unlink()
    return Ctx(
        sizes=sizes,
        run_id=run_id,
        log_dir=log_dir,
        tasks=importlib.import_module("bench.tasks"),
        sje_redis=redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=SJE_DB),
        peer_redis=redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=PEER_DB),
        deadline=Deadline(sizes.system_budget_s),
    )


def cleanup(ctx: Ctx) -> None:
    ctx.stop_all()
    with contextlib.suppress(redis.RedisError):
        ctx.peer_redis.flushdb()
    with contextlib.suppress(redis.RedisError):
        delete_prefix(ctx.sje_redis, ctx.prefix)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    ensure_peers()
    ctx = make_ctx(sizes)
    info = machine(ctx.sje_redis)
    console.print(
        f"Machine: {info['cpus']} CPUs, Python {info['python']}, Redis {info['redis']}, "
        f"load {info['load_avg_at_start']}; SJE key prefix {ctx.prefix}, peers in DB {PEER_DB}",
        highlight=False,
    )
    total = Deadline(sizes.total_budget_s)
    results: dict[str, dict[str, Any]] = {}
    started = time.time()
    interrupted = False
    try:
        with sigterm_as_interrupt():
            for name in args.systems:
                results[name] = {}
                run_system(ctx, name, total, results[name])
    except KeyboardInterrupt:
        interrupted = True
        console.print("[red]Interrupted: stopping what was started and cleaning up.[/red]")
    finally:
        cleanup(ctx)
    table = build_table(sizes, results, args.systems)
    console.print(table)
    for line in [*notes(sizes), *variant_lines(results)]:
        console.print(line, highlight=False, markup=False)
    ratios = {m.key: ratio(m, results) for m in metrics(sizes)}
    report = {
        "started_at": started,
        "duration_s": time.time() - started,
        "quick": args.quick,
        "interrupted": interrupted,
        "machine": info,
        "sizes": asdict(sizes),
        "results": results,
        "sje_vs_best_peer": {
            k: {"ratio": v[0], "peer": v[1]} if v else None for k, v in ratios.items()
        },
        "logs": str(ctx.log_dir),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "latest.json"
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    console.print(f"Wrote {out.relative_to(ROOT)} in {report['duration_s']:.0f}s", highlight=False)
    failed = interrupted or any("error" in r for r in results.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
