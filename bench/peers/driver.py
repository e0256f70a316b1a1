"""Measure one system: ``python -m bench.peers.driver --system NAME --plan P.json --out R.json``.

compare.py runs this with the system's own Python (SJE: the main venv, a peer: its venv under
bench/.venvs), so each system is driven through its own client library. It writes the result
JSON after every scenario (a run cut short still reports what it measured), prints one progress
line per measurement, and ends every process it started by PID (SIGTERM: it cleans up, then
exits). Scenarios, in this order, per repetition:

- ``enqueue``: N single-task enqueues one by one, no worker running (then purged);
- ``drain``: N no-ops enqueued with the batch API (timed: the batch rate), then 2 worker
  processes started; first → last completion on the counter; peak RSS/PSS of the workers;
- ``rtt``: sequential single-task round trips (submit → result seen by the client);
- ``cpu``: ~20 ms pure-Python tasks; efficiency = Σ task thread CPU / (wall x 2 cores), wall =
  first task start → last task end, as recorded inside the tasks;
- ``io``: tasks awaiting (or sleeping) 100 ms; throughput and % of the concurrency's ceiling;
- ``recovery``: SIGKILL one worker process mid-drain; time to the last completion, duplicates
  and losses, exact (a set of completed inputs).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import BenchError, MemorySampler, Service, sigterm_as_interrupt
from bench.peers import work
from bench.peers.base import Adapter, Harness, NotSupported, Plan

SCENARIOS = ("enqueue", "drain", "rtt", "cpu", "io", "recovery")


def say(msg: str) -> None:
    print(msg, flush=True)


class Watch:
    """Polls ``bench:done`` and ``|bench:seen|`` every 5 ms in a thread: when the first task
    completed, when the count last moved, when every distinct task had completed."""

    def __init__(self, h: Harness, total: int) -> None:
        self.r, self.total = h.r, total
        self.done = self.seen = 0
        self.first: float | None = None
        self.last_change = time.perf_counter()
        self.complete_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pipe = self.r.pipeline(transaction=False)
            pipe.get(work.DONE)
            pipe.scard(work.SEEN)
            raw_done, seen = pipe.execute()
            done = int(raw_done or 0)
            now = time.perf_counter()
            if done and self.first is None:
                self.first = now
            if done != self.done or seen != self.seen:
                self.last_change = now
            self.done, self.seen = done, int(seen)
            if self.seen >= self.total and self.complete_at is None:
                self.complete_at = now
            time.sleep(0.005)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def wait(
        self,
        until: Callable[[], bool],
        timeout: float,
        workers: list[Service] | None = None,
        what: str = "tasks",
    ) -> None:
        end = time.monotonic() + timeout
        while not until():
            if workers is not None and not any(w.alive() for w in workers):
                time.sleep(0.5)
                if not until():
                    tails = "\n".join(w.tail(8) for w in workers)
                    raise BenchError(f"workers exited at {self.seen}/{self.total} {what}:\n{tails}")
            if time.monotonic() > end:
                raise BenchError(f"{what}: {self.seen}/{self.total} done after {timeout:.0f}s")
            time.sleep(0.01)

    def wait_complete(self, timeout: float, workers: list[Service] | None = None) -> None:
        self.wait(lambda: self.complete_at is not None, timeout, workers)


def counts(h: Harness) -> tuple[int, int]:
    pipe = h.r.pipeline(transaction=False)
    pipe.get(work.DONE)
    pipe.scard(work.SEEN)
    raw_done, seen = pipe.execute()
    return int(raw_done or 0), int(seen)


def check_exact(h: Harness, n: int, what: str) -> None:
    done, seen = counts(h)
    if done != n or seen != n:
        raise BenchError(
            f"{what}: {done} completions of {seen} distinct tasks for {n} tasks (must be {n})"
        )


def warm_up(h: Harness, a: Adapter, procs: int = 2) -> None:
    """Until ``procs`` distinct processes have run a warm-up task (every worker process is
    consuming) and every warm-up task sent has run (none is left to run into the measurement)."""
    end = time.monotonic() + h.deadline.cap(h.plan.phase_timeout_s)
    h.r.delete(work.PIDS, work.WARM)
    sent = 0

    def ran() -> int:
        return int(h.r.get(work.WARM) or 0)

    while h.r.scard(work.PIDS) < procs or ran() < sent:
        if time.monotonic() > end:
            raise BenchError(
                f"warm-up: {h.r.scard(work.PIDS)} of {procs} processes ran a task, "
                f"{ran()} of {sent} tasks ran"
            )
        if ran() >= sent:  # all ran, but not everywhere yet: another round
            a.enqueue_many("warm", list(range(sent, sent + 2 * procs)))
            sent += 2 * procs
        time.sleep(0.01)
    h.clear_keys()


# -- scenarios --------------------------------------------------------------------------------


def scenario_enqueue(h: Harness, a: Adapter, rec: dict[str, Any]) -> None:
    n = h.plan.enqueue_one_n_sje if a.name == "sje" else h.plan.enqueue_one_n
    a.purge()
    h.clear_keys()
    t0 = time.perf_counter()
    for i in range(n):
        a.enqueue_one("noop", i)
        if i % 500 == 0:
            h.deadline.check("enqueue")
    dt = time.perf_counter() - t0
    rec.update(enqueue_one_n=n, enqueue_one_rate=n / dt)
    say(f"  enqueue one by one: {n:,} in {dt:.2f}s = {n / dt:,.0f}/s")
    a.purge()


def scenario_drain(h: Harness, a: Adapter, rec: dict[str, Any]) -> None:
    n = h.plan.drain_n
    a.purge()
    h.clear_keys()
    args = list(range(n))
    if a.batch_api is not None:
        t0 = time.perf_counter()
        a.enqueue_batch("noop", args)
        dt = time.perf_counter() - t0
        rec.update(enqueue_batch_n=n, enqueue_batch_rate=n / dt)
        say(f"  enqueue batch: {n:,} in {dt:.2f}s = {n / dt:,.0f}/s [{a.batch_api}]")
    else:
        a.enqueue_many("noop", args)
        say(f"  enqueue batch: n/a ({n:,} enqueued one by one, untimed)")
    with Watch(h, n) as watch:
        workers = a.workers("std")
        with MemorySampler(workers, interval=1.0) as mem:
            watch.wait_complete(h.deadline.cap(h.plan.phase_timeout_s), workers)
            mem.sample()
    assert watch.first is not None and watch.complete_at is not None
    h.stop_workers()
    check_exact(h, n, "drain")
    done, seen = counts(h)
    dt = watch.complete_at - watch.first
    rec.update(
        drain_n=n,
        drain_completions=done,
        drain_distinct=seen,
        drain_s=dt,
        drain_rate=n / dt,
        worker_rss_peak_mb=mem.peak_rss,
        worker_pss_peak_mb=mem.peak_pss,
    )
    say(
        f"  drain: {n:,} in {dt:.2f}s = {n / dt:,.0f}/s; workers' peak RSS {mem.peak_rss:.0f} MB,"
        f" PSS {mem.peak_pss:.0f} MB"
    )


def scenario_rtt(h: Harness, a: Adapter, rec: dict[str, Any]) -> None:
    a.purge()
    h.clear_keys()
    a.workers("rt")
    for i in range(h.plan.warmup):
        if a.round_trip(-1 - i) != -1 - i:
            raise BenchError(f"round trip {-1 - i} returned a wrong value")
    times: list[float] = []
    end = time.monotonic() + h.deadline.cap(h.plan.rt_budget_s)
    for i in range(h.plan.rt_n):
        t0 = time.perf_counter()
        value = a.round_trip(i)
        times.append((time.perf_counter() - t0) * 1000)
        if value != i:
            raise BenchError(f"round trip {i} returned {value!r}")
        if time.monotonic() > end:
            break
    cuts = statistics.quantiles(times, n=100, method="inclusive")
    rec.update(rt_n=len(times), rt_p50_ms=cuts[49], rt_p99_ms=cuts[98])
    rec["rt_mean_ms"] = statistics.fmean(times)
    say(f"  round trip: {len(times):,} sequential, p50 {cuts[49]:.2f} ms, p99 {cuts[98]:.2f} ms")
    h.stop_workers()


def spans(h: Harness) -> list[tuple[float, float, float]]:
    out = []
    for raw in h.r.lrange(work.SPANS, 0, -1):
        start, end, cpu = (float(x) for x in raw.split())
        out.append((start, end, cpu))
    return out


def run_batch(h: Harness, a: Adapter, kind: str, args: list[Any]) -> list[tuple[float, ...]]:
    """Enqueue ``args`` (batch API where there is one) to running, warm workers; wait for all."""
    n = len(args)
    with Watch(h, n) as watch:
        a.enqueue_many(kind, args)
        watch.wait_complete(h.deadline.cap(h.plan.phase_timeout_s), h.services)
    check_exact(h, n, kind)
    got = spans(h)
    if len(got) != n:
        raise BenchError(f"{kind}: {len(got)} spans recorded for {n} tasks")
    return [tuple(s) for s in got]


def scenario_cpu(h: Harness, a: Adapter, rec: dict[str, Any]) -> None:
    a.purge()
    a.workers("std")
    warm_up(h, a)
    n, loops = h.plan.cpu_n, h.plan.cpu_loops
    got = run_batch(h, a, "cpu", [[i, loops] for i in range(n)])
    wall = max(s[1] for s in got) - min(s[0] for s in got)
    cpu = sum(s[2] for s in got)
    eff = cpu / (wall * 2)
    rec.update(
        cpu_n=n,
        cpu_wall_s=wall,
        cpu_task_cpu_s=cpu,
        cpu_task_ms=cpu / n * 1000,
        cpu_efficiency=eff * 100,
        cpu_rate=n / wall,
    )
    say(
        f"  CPU-bound: {n} tasks of {cpu / n * 1000:.1f} ms CPU in {wall:.2f}s: "
        f"efficiency {eff:.1%} of 2 cores"
    )
    h.stop_workers()


def scenario_io(h: Harness, a: Adapter, rec: dict[str, Any]) -> None:
    a.purge()
    conc = a.concurrency["io"]
    ceiling_per_s = conc / work.IO_SECONDS
    # a low ceiling would make 1,000 tasks take minutes: then fewer tasks (at least 5x conc)
    n = min(h.plan.io_n, max(int(ceiling_per_s * h.plan.io_min_ideal_s), 5 * conc))
    a.workers("io")
    warm_up(h, a)
    got = run_batch(h, a, "io", list(range(n)))
    wall = max(s[1] for s in got) - min(s[0] for s in got)
    ideal = min(n, conc) / work.IO_SECONDS  # tasks/s with every slot busy all the time
    rate = n / wall
    rec.update(
        io_n=n,
        io_concurrency=conc,
        io_wall_s=wall,
        io_rate=rate,
        io_ceiling=ideal,
        io_pct_ideal=rate / ideal * 100,
    )
    say(
        f"  I/O-bound: {n:,} x 100 ms at {conc} at once in {wall:.2f}s = {rate:,.0f}/s "
        f"({rate / ideal:.0%} of {ideal:,.0f}/s)"
    )
    h.stop_workers()


def scenario_recovery(h: Harness, a: Adapter, rec: dict[str, Any]) -> None:
    plan = h.plan
    n = plan.rec_n
    a.purge()
    h.clear_keys()
    # workers first: started after the enqueue, the first one ready could drain a small run
    # alone before the other is up, and the kill would find nothing left to recover
    workers = a.workers("rec")
    with Watch(h, n) as watch:
        a.enqueue_many("noop", list(range(n)))
        watch.wait(
            lambda: watch.done >= plan.rec_kill_at,
            h.deadline.cap(plan.phase_timeout_s),
            workers,
            "tasks before the kill",
        )
        victim = a.victim(workers)
        desc = f"pid {victim.pid} ({' '.join(victim.cmdline()[1:5])})"
        name = " ".join(victim.cmdline())
        victim.send_signal(signal.SIGKILL)
        t_kill = time.perf_counter()
        at_kill = watch.done
        held = a.held_by(name)
        if at_kill >= n:
            raise BenchError(
                f"recovery: all {n:,} tasks had completed before the kill, so nothing was left "
                "to recover; raise rec_n (or lower rec_kill_at) for this machine"
            )
        cap_end = time.monotonic() + h.deadline.cap(plan.rec_cap_s)
        while watch.complete_at is None and time.monotonic() < cap_end:
            if time.perf_counter() - max(watch.last_change, t_kill) > plan.rec_stall_s:
                break  # no progress for a while: what is missing is reported lost
            time.sleep(0.02)
        last = watch.complete_at or watch.last_change
        if a.redelivery_s is not None and watch.complete_at is not None:
            # a task that ran but was not acknowledged when its process died runs again once
            # the system re-delivers it: watch until then (+3 s), to count that duplicate
            settle_end = time.monotonic() + a.redelivery_s + 3 - (time.perf_counter() - t_kill)
            while time.monotonic() < min(settle_end, cap_end):
                time.sleep(0.05)
    h.stop_workers()
    done, seen = counts(h)
    rec.update(
        rec_n=n,
        rec_killed_at=at_kill,
        rec_dups=done - seen,
        rec_held=held,
        rec_lost=n - seen,
        rec_victim=desc,
        rec_time_s=(last - t_kill) if seen == n else None,
        rec_last_completion_s=last - t_kill,
    )
    outcome = f"all done {last - t_kill:.2f}s after the kill" if seen == n else "incomplete"
    say(
        f"  recovery: killed {desc} at {at_kill:,}/{n:,}; {outcome}; "
        f"ran twice {done - seen}, lost {n - seen}"
    )


RUNNERS: dict[str, Callable[[Harness, Adapter, dict[str, Any]], None]] = {
    "enqueue": scenario_enqueue,
    "drain": scenario_drain,
    "rtt": scenario_rtt,
    "cpu": scenario_cpu,
    "io": scenario_io,
    "recovery": scenario_recovery,
}


# -- main -------------------------------------------------------------------------------------


def run(system: str, plan: Plan, out: Path) -> int:
    os.environ["BENCH_REDIS_URL"] = plan.redis_url  # read by bench.peers.work on import
    module = importlib.import_module(f"bench.peers.sys_{system}")
    h = Harness(plan)
    adapter: Adapter = module.Adapter(h)
    result: dict[str, Any] = {
        "system": system,
        "settings": adapter.settings(),
        "versions": adapter.versions(),
        "batch_api": adapter.batch_api,
        "concurrency": adapter.concurrency,
        "reps": [],
        "errors": [],
        "skipped": [],
        "interrupted": False,
    }
    started = time.monotonic()

    def save() -> None:
        result["elapsed_s"] = time.monotonic() - started
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        tmp.replace(out)

    save()
    try:
        with sigterm_as_interrupt():
            adapter.setup()
            for rep in range(plan.reps):
                rec: dict[str, Any] = {}
                result["reps"].append(rec)
                say(f" repetition {rep + 1}/{plan.reps}")
                for name in plan.scenarios:
                    run_scenario(h, adapter, name, rep, rec, result)
                    save()
    except KeyboardInterrupt:
        result["interrupted"] = True
        say("  interrupted: stopping what was started")
    except Exception as exc:
        result["errors"].append({"rep": 0, "scenario": "setup", "error": describe(exc)})
        say(f"  setup failed: {describe(exc)}")
    finally:
        h.stop_all()
        adapter.teardown()
        save()
    return 1 if result["interrupted"] or result["errors"] else 0


def describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if isinstance(exc, BenchError) else f"{type(exc).__name__}: {text}"


def run_scenario(
    h: Harness, a: Adapter, name: str, rep: int, rec: dict[str, Any], result: dict[str, Any]
) -> None:
    if h.deadline.left() <= 0:
        result["skipped"].append(f"rep {rep + 1}: {name}")
        say(f"  {name}: skipped (the system's time budget is spent)")
        return
    t0 = time.monotonic()
    try:
        RUNNERS[name](h, a, rec)
    except NotSupported as exc:
        rec[f"{name}_na"] = str(exc)
        say(f"  {name}: n/a ({exc})")
    except BenchError as exc:
        result["errors"].append({"rep": rep + 1, "scenario": name, "error": describe(exc)})
        say(f"  {name}: FAILED: {describe(exc)}")
    except Exception as exc:
        result["errors"].append({"rep": rep + 1, "scenario": name, "error": describe(exc)})
        say(f"  {name}: FAILED: {describe(exc)}")
        traceback.print_exc(file=sys.stdout)
    finally:
        h.stop_workers()
        rec.setdefault("elapsed_s", {})[name] = round(time.monotonic() - t0, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", required=True)
    parser.add_argument("--plan", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    return run(args.system, Plan.load(args.plan), Path(args.out))


if __name__ == "__main__":
    sys.exit(main())
