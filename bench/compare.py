"""SJE against its peers, side by side: Celery, RQ, Dramatiq, Huey, arq and Taskiq.

    .venv/bin/python bench/compare.py                 # everything, 3 repetitions (< 30 min)
    .venv/bin/python bench/compare.py --quick         # small sizes, 1 repetition
    .venv/bin/python bench/compare.py --smoke         # a few hundred tasks, SJE + RQ, seconds
    .venv/bin/python bench/compare.py --systems sje,celery --scenarios drain,rtt --reps 5

Each peer runs from its own virtual environment (bench/.venvs/<name>, created on first use from
bench/peers/requirements-<name>.txt; SJE from the main .venv). One private ``redis-server`` (a
free port, no persistence, a temporary directory) serves every system of the run, one system
at a time, flushed in between. For each system a driver (bench/peers/driver.py, run with that
system's Python) starts the system's own worker CLI with 2 worker processes and measures the
same scenarios; this script prints a table (median and min-max of the repetitions; "SJE vs best
peer" > 1 means SJE wins), the settings used, and writes bench/results/compare.json and a chart,
bench/results/compare.png (matplotlib, in its own venv bench/.venvs/plot). Every process is
ended by PID. See bench/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: bench.*

from bench.common import (
    BENCH,
    RESULTS,
    ROOT,
    RedisServer,
    end_pids,
    sigterm_as_interrupt,
)
from bench.peers import work
from rich.console import Console
from rich.table import Table

VENVS = BENCH / ".venvs"
PEERS_DIR = BENCH / "peers"
SYSTEMS = ("sje", "celery", "rq", "dramatiq", "huey", "arq", "taskiq")
PEERS = SYSTEMS[1:]
NAMES = {
    "sje": "SJE",
    "celery": "Celery",
    "rq": "RQ",
    "dramatiq": "Dramatiq",
    "huey": "Huey",
    "arq": "arq",
    "taskiq": "Taskiq",
}
SCENARIOS = ("enqueue", "drain", "rtt", "cpu", "io", "recovery")
CPU_TASK_S = 0.020

console = Console(width=None if sys.stdout.isatty() else 200)
#: the order systems run in: the quicker first, so what they leave of the total budget goes to
#: the slower ones (the table keeps SYSTEMS' order)
RUN_ORDER = ("sje", "huey", "arq", "taskiq", "celery", "dramatiq", "rq")


@dataclass(frozen=True)
class Sizes:
    reps: int
    enqueue_one_n: int
    enqueue_one_n_sje: int
    drain_n: int
    rt_n: int
    rt_budget_s: float
    warmup: int
    cpu_n: int
    io_n: int
    io_min_ideal_s: float
    rec_n: int
    rec_kill_at: int
    rec_stall_s: float
    rec_cap_s: float
    phase_timeout_s: float
    system_budget_s: float  # at most, per system
    total_budget_s: float  # for all the measurements (installs not counted)


FULL = Sizes(
    reps=3,
    enqueue_one_n=5_000,
    enqueue_one_n_sje=1_000,
    drain_n=20_000,
    rt_n=1_000,
    rt_budget_s=15,
    warmup=10,
    cpu_n=200,
    io_n=1_000,
    io_min_ideal_s=5,
    rec_n=6_000,
    rec_kill_at=2_000,
    rec_stall_s=20,
    rec_cap_s=120,
    phase_timeout_s=150,
    system_budget_s=360,
    total_budget_s=1_680,
)
QUICK = Sizes(
    reps=1,
    enqueue_one_n=1_000,
    enqueue_one_n_sje=300,
    drain_n=3_000,
    rt_n=200,
    rt_budget_s=8,
    warmup=5,
    cpu_n=60,
    io_n=400,
    io_min_ideal_s=2,
    rec_n=3_000,
    rec_kill_at=1_000,
    rec_stall_s=20,
    rec_cap_s=60,
    phase_timeout_s=60,
    system_budget_s=150,
    total_budget_s=900,
)
SMOKE = Sizes(
    reps=1,
    enqueue_one_n=200,
    enqueue_one_n_sje=50,
    drain_n=300,
    rt_n=50,
    rt_budget_s=5,
    warmup=3,
    cpu_n=20,
    io_n=200,
    io_min_ideal_s=1,
    rec_n=1_000,
    rec_kill_at=100,
    rec_stall_s=10,
    rec_cap_s=30,
    phase_timeout_s=30,
    system_budget_s=75,
    total_budget_s=180,
)


# -- metrics ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    better: str  # "higher" or "lower"
    fmt: str
    ratio: bool = True


def metrics(s: Sizes) -> list[Metric]:
    return [
        Metric("enqueue_one_rate", "enqueue one by one (tasks/s) ¹", "higher", "{:,.0f}"),
        Metric(
            "enqueue_batch_rate", f"enqueue {s.drain_n:,}, batch API (tasks/s)", "higher", "{:,.0f}"
        ),
        Metric("drain_rate", f"drain {s.drain_n:,} no-ops (tasks/s)", "higher", "{:,.0f}"),
        Metric("rt_p50_ms", "round trip p50 (ms) ²", "lower", "{:.2f}"),
        Metric("rt_p99_ms", "round trip p99 (ms) ²", "lower", "{:.2f}"),
        Metric(
            "cpu_efficiency", f"CPU-bound {s.cpu_n} x 20 ms: efficiency (%) ³", "higher", "{:.1f}"
        ),
        Metric("io_rate", "I/O-bound x 100 ms: throughput (tasks/s) ⁴", "higher", "{:,.0f}"),
        Metric("io_pct_ideal", "I/O-bound: % of the ideal ⁴", "higher", "{:.0f}"),
        Metric("worker_rss_peak_mb", "workers' peak RSS in the drain (MB)", "lower", "{:.0f}"),
        Metric("worker_pss_peak_mb", "workers' peak PSS in the drain (MB)", "lower", "{:.0f}"),
        Metric("rec_time_s", "recovery: kill → last task done (s) ⁵", "lower", "{:.2f}"),
        Metric("rec_dups", "recovery: tasks run twice ⁵", "lower", "{:.0f}", ratio=False),
        Metric(
            "rec_held", "recovery: tasks the killed worker held ⁵", "lower", "{:.0f}", ratio=False
        ),
        Metric("rec_lost", "recovery: tasks lost ⁵", "lower", "{:.0f}", ratio=False),
    ]


def summarize(reps: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    values = [r[key] for r in reps if isinstance(r.get(key), (int, float))]
    if not values:
        return None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "values": values,
    }


def ratio(metric: Metric, results: dict[str, dict[str, Any]]) -> tuple[float, str] | None:
    """SJE against the best peer, as "times better" (above 1: SJE is better)."""
    if not metric.ratio:
        return None
    ours = (results.get("sje", {}).get("summary", {}).get(metric.key) or {}).get("median")
    peers = {}
    for p in PEERS:
        s = (results.get(p, {}).get("summary", {}).get(metric.key) or {}).get("median")
        lost = any(r.get("rec_lost") for r in results.get(p, {}).get("reps") or [])
        if s and not (metric.key == "rec_time_s" and lost):  # losing tasks is not faster
            peers[p] = s
    if not ours or not peers:
        return None
    if metric.better == "higher":
        best = max(peers, key=lambda p: peers[p])
        return ours / peers[best], best
    best = min(peers, key=lambda p: peers[p])
    return peers[best] / ours, best


def cell(metric: Metric, res: dict[str, Any]) -> str:
    if res.get("status") == "failed":
        return f"[red]failed: {short(res.get('reason', '?'), 40)}[/red]"
    if res.get("status") == "not run":
        return "not run"
    s = (res.get("summary") or {}).get(metric.key)
    reps = res.get("reps") or []
    if metric.key == "rec_time_s":
        incomplete = sum(1 for r in reps if "rec_n" in r and r.get("rec_time_s") is None)
        if incomplete:
            runs = sum(1 for r in reps if "rec_n" in r)
            head = f"{metric.fmt.format(s['median'])}\n" if s else ""
            return f"{head}[red]lost tasks in {incomplete}/{runs} run(s)[/red]"
    if s is None:
        return na_reason(metric, res)
    text = metric.fmt.format(s["median"])
    if s["n"] > 1 and s["min"] != s["max"]:
        text += f"\n[dim]{metric.fmt.format(s['min'])}-{metric.fmt.format(s['max'])}[/dim]"
    return text


def na_reason(metric: Metric, res: dict[str, Any]) -> str:
    scenario = {
        "enqueue": "enqueue_one",
        "drain": "drain|worker|enqueue_batch",
        "rtt": "rt_",
        "cpu": "cpu_",
        "io": "io_",
        "recovery": "rec_",
    }
    if metric.key == "enqueue_batch_rate" and res.get("batch_api") is None:
        return "n/a (no API)"
    for err in res.get("errors", []):
        if any(metric.key.startswith(p) for p in scenario.get(err["scenario"], "?").split("|")):
            return f"[red]error: {short(err['error'], 40)}[/red]"
    if res.get("skipped"):
        return "[yellow]skipped (budget)[/yellow]"
    return "n/a"


def short(text: str, n: int) -> str:
    line = text.strip().splitlines()[0] if text.strip() else text
    return line if len(line) <= n else line[: n - 1] + "…"


def build_table(sizes: Sizes, results: dict[str, dict[str, Any]], systems: list[str]) -> Table:
    table = Table(
        title=f"SJE vs peers: 2 worker processes each, median of {sizes.reps} run(s) "
        "(min-max below)",
        title_justify="left",
    )
    table.add_column("metric")
    for name in systems:
        table.add_column(NAMES[name], justify="right")
    if "sje" in systems and len(systems) > 1:
        table.add_column("SJE vs best peer", justify="right")
    for m in metrics(sizes):
        cells = [cell(m, results.get(name, {"status": "not run"})) for name in systems]
        if "sje" in systems and len(systems) > 1:
            r = ratio(m, results)
            if r is None:
                cells.append("—")
            else:
                colour = "green" if r[0] >= 1 else "red"
                cells.append(f"[{colour}]{r[0]:.2f}x[/{colour}] ({NAMES[r[1]]})")
        table.add_row(m.label, *cells)
    return table


def notes(sizes: Sizes, plan: dict[str, Any], results: dict[str, dict[str, Any]]) -> list[str]:
    io_lines = []
    for name, res in results.items():
        r = (res.get("reps") or [{}])[0]
        if "io_n" in r:
            io_lines.append(
                f"{NAMES[name]} {r['io_concurrency']} at once → {r['io_ceiling']:,.0f}/s"
                + (f" ({r['io_n']} tasks)" if r["io_n"] != sizes.io_n else "")
            )
    rt = {NAMES[n]: (r.get("reps") or [{}])[0].get("rt_n") for n, r in results.items()}
    return [
        "SJE vs best peer: SJE ÷ best peer for rates, best peer ÷ SJE for times and memory; "
        "above 1x SJE wins, below 1x the named peer does.",
        f"¹ N = {sizes.enqueue_one_n:,} single-task enqueues, no worker running; SJE "
        f"{sizes.enqueue_one_n_sje:,} (each one an HTTP call that stores a job).",
        f"² Sequential single-task jobs, submit → result seen by the client, 2 worker processes "
        f"up, after {sizes.warmup} unmeasured: up to {sizes.rt_n:,} or {sizes.rt_budget_s:.0f} s "
        f"(first run: {', '.join(f'{k} {v}' for k, v in rt.items() if v)}).",
        f"³ Σ task CPU time (thread_time, measured in each task) ÷ (wall x 2 cores); wall = first "
        f"task start → last task end, recorded in the tasks; one task ≈ "
        f"{plan['cpu_ms']:.1f} ms of CPU here ({plan['cpu_loops']:,} loops, calibrated once).",
        "⁴ wall = first task start → last task end (in the tasks); ideal = min(N, tasks at "
        "once) ÷ 0.1 s: " + "; ".join(io_lines) + ".",
        f"⁵ {sizes.rec_n:,} no-ops queued, SIGKILL one worker process once {sizes.rec_kill_at:,} "
        f"completed; 'lost' = never completed (the wait ends {sizes.rec_stall_s:.0f} s after the "
        f"last progress, at most {sizes.rec_cap_s:.0f} s after the kill); 'run twice' is exact "
        "(a set of completed inputs); 'held' = tasks taken and not acknowledged by the killed "
        "process, read from the broker at the kill (SJE: its leases; n/a where a system does not "
        "tell), the bound on 'run twice'.",
    ]


# -- virtual environments ---------------------------------------------------------------------


class InstallError(Exception):
    pass


def ensure_venv(name: str) -> Path:
    """bench/.venvs/NAME with requirements-NAME.txt installed; reused while its marker is newer
    than the requirements file. Returns its Python."""
    req = PEERS_DIR / f"requirements-{name}.txt"
    vdir = VENVS / name
    python = vdir / "bin" / "python"
    marker = vdir / ".installed"
    if python.exists() and marker.exists() and marker.stat().st_mtime > req.stat().st_mtime:
        return python
    console.print(f"Installing {name} into {vdir.relative_to(ROOT)} (pip, {req.name})…")
    if not python.exists():
        run_or_raise([sys.executable, "-m", "venv", str(vdir)], f"venv for {name}", 120)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    run_or_raise([*pip, "-r", str(req)], f"pip install for {name}", 900)
    marker.write_text(f"installed from {req.name} at {time.ctime()}\n")
    return python


def run_or_raise(cmd: list[str], what: str, timeout: float) -> None:
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise InstallError(f"{what} timed out after {timeout:.0f}s") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise InstallError(f"{what} failed: {' / '.join(tail)}")


# -- running one system -------------------------------------------------------------------------


def calibrate() -> tuple[int, float]:
    """Loops of ``work.spin`` for ~20 ms of CPU on this machine (thread CPU time, median of 5),
    corrected until within 3 %."""

    def measure(loops: int) -> float:
        took = []
        for _ in range(5):
            c0 = time.thread_time()
            work.spin(loops)
            took.append(time.thread_time() - c0)
        return statistics.median(took)

    loops = max(1000, int(50_000 * CPU_TASK_S / measure(50_000)))
    took = measure(loops)
    for _ in range(3):
        if abs(took - CPU_TASK_S) < 0.03 * CPU_TASK_S:
            break
        loops = max(1000, int(loops * CPU_TASK_S / took))
        took = measure(loops)
    return loops, took * 1000


def run_driver(
    name: str, python: Path, plan: dict[str, Any], budget: float, log_dir: Path
) -> dict[str, Any]:
    """Run the system's driver with its own Python; relay its progress lines; end it (and what
    it started) by PID if it runs over ``budget`` (+ a grace period)."""
    plan_path = log_dir / f"{name}-plan.json"
    out_path = log_dir / f"{name}-result.json"
    pid_file = log_dir / f"{name}-pids.json"
    out_path.unlink(missing_ok=True)
    pid_file.unlink(missing_ok=True)
    plan = {**plan, "budget_s": budget, "pid_file": str(pid_file), "log_dir": str(log_dir)}
    plan_path.write_text(json.dumps(plan, indent=2))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SJE_", "BENCH_"))}
    env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    cmd = [str(python), "-m", "bench.peers.driver", "--system", name]
    cmd += ["--plan", str(plan_path), "--out", str(out_path)]
    with (log_dir / f"{name}-driver.log").open("w") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        relay = threading.Thread(target=relay_lines, args=(proc, log), daemon=True)
        relay.start()
        try:
            proc.wait(budget + 90)
        except subprocess.TimeoutExpired:
            console.print(f"[red]{NAMES[name]}: over its budget, stopping it[/red]")
            stop_driver(proc)
        except KeyboardInterrupt:
            stop_driver(proc)
            raise
        finally:
            relay.join(10)
            end_leftovers(pid_file)
    if not out_path.exists():
        raise RuntimeError(f"the driver exited ({proc.returncode}) without a result; see logs")
    result: dict[str, Any] = json.loads(out_path.read_text())
    result["driver_exit"] = proc.returncode
    return result


def relay_lines(proc: subprocess.Popen[str], log: Any) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        log.write(line)
        log.flush()
        if line.startswith(" ") and not line.startswith("    "):
            console.print(line.rstrip(), highlight=False, markup=False)


def stop_driver(proc: subprocess.Popen[str]) -> None:
    """SIGTERM: the driver stops its processes and writes what it measured; SIGKILL after 60 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def end_leftovers(pid_file: Path) -> None:
    """Processes the driver recorded that still run (it was killed before its cleanup)."""
    with contextlib.suppress(FileNotFoundError, ValueError):
        pids = {int(k): float(v) for k, v in json.loads(pid_file.read_text()).items()}
        end_pids(pids)


def run_system(
    name: str, plan: dict[str, Any], budget: float, log_dir: Path, server: RedisServer
) -> dict[str, Any]:
    console.print(f"[bold]{NAMES[name]}[/bold] (budget {budget:.0f}s)")
    t0 = time.monotonic()
    try:
        python = Path(sys.executable) if name == "sje" else ensure_venv(name)
    except (InstallError, OSError) as exc:
        console.print(f"[red]{NAMES[name]}: {exc}[/red]")
        return {"status": "failed", "reason": f"install: {exc}"}
    server.client.flushall()
    try:
        res = run_driver(name, python, plan, budget, log_dir)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        console.print(f"[red]{NAMES[name]} failed: {exc}[/red]")
        return {"status": "failed", "reason": str(exc), "elapsed_s": time.monotonic() - t0}
    res["elapsed_s"] = time.monotonic() - t0
    setup_errors = [e for e in res["errors"] if e["scenario"] == "setup"]
    if setup_errors or not any(k != "elapsed_s" for r in res["reps"] for k in r):
        reason = setup_errors[0]["error"] if setup_errors else "nothing measured"
        res.update(status="failed", reason=reason)
    else:
        res["status"] = "ok" if not res["errors"] and not res["skipped"] else "partial"
    summaries = {m.key: summarize(res["reps"], m.key) for m in metrics(FULL)}
    res["summary"] = {k: v for k, v in summaries.items() if v is not None}
    console.print(f"  {NAMES[name]} done in {res['elapsed_s']:.0f}s", highlight=False)
    return res


# -- chart ------------------------------------------------------------------------------------


def chart(json_path: Path, png_path: Path) -> str | None:
    """The PNG, drawn by bench/peers/plot.py in the plot venv; returns an error or None."""
    try:
        python = ensure_venv("plot")
        cmd = [str(python), str(PEERS_DIR / "plot.py"), str(json_path), str(png_path)]
        run_or_raise(cmd, "plot", 120)
    except (InstallError, OSError) as exc:
        return str(exc)
    return None


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="SJE against its peers, side by side.")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes, 1 repetition")
    size.add_argument("--smoke", action="store_true", help="a few hundred tasks, SJE + RQ")
    parser.add_argument("--systems", help=f"comma-separated subset of {','.join(SYSTEMS)}")
    parser.add_argument("--scenarios", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--reps", type=int, help="repetitions (default 3; 1 with --quick/--smoke)")
    parser.add_argument("--json", type=Path, default=RESULTS / "compare.json", help="output")
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG (no plot venv)")
    parser.add_argument(
        "--log-dir",
        type=Path,
        default=RESULTS / "compare-logs",
        help="every process's output, the drivers' plans and results (emptied first)",
    )
    args = parser.parse_args(argv)
    default_systems = "sje,rq" if args.smoke else ",".join(SYSTEMS)
    args.systems = pick(parser, "system", args.systems or default_systems, SYSTEMS)
    args.scenarios = pick(parser, "scenario", args.scenarios or ",".join(SCENARIOS), SCENARIOS)
    if args.reps is not None and args.reps < 1:
        parser.error("--reps must be at least 1")
    return args


def pick(
    parser: argparse.ArgumentParser, what: str, given: str, known: tuple[str, ...]
) -> list[str]:
    names = [s.strip().lower() for s in given.split(",") if s.strip()]
    unknown = sorted(set(names) - set(known))
    if unknown:
        parser.error(f"unknown {what}(s): {', '.join(unknown)}; known: {', '.join(known)}")
    return [k for k in known if k in names]  # canonical order


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = SMOKE if args.smoke else QUICK if args.quick else FULL
    if args.reps:
        sizes = replace(sizes, reps=args.reps)
    log_dir = args.log_dir.resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("*"):
        if old.is_file():
            old.unlink()
    started, t0 = time.time(), time.monotonic()
    loops, cpu_ms = calibrate()
    server = RedisServer(log_dir)
    info = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis": server.version(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    console.print(
        f"Machine: {info['cpus']} CPUs, Python {info['python']}, Redis {info['redis']} (private, "
        f"port {server.port}), load {info['load_avg_at_start']}; CPU task: {loops:,} loops ≈ "
        f"{cpu_ms:.1f} ms",
        highlight=False,
    )
    plan = {
        **{
            k: v for k, v in asdict(sizes).items() if k not in ("system_budget_s", "total_budget_s")
        },
        "scenarios": args.scenarios,
        "redis_url": server.url,
        "cpu_loops": loops,
        "extra": {},
    }
    results: dict[str, dict[str, Any]] = {}
    interrupted = False
    total_end = time.monotonic() + sizes.total_budget_s
    try:
        with sigterm_as_interrupt():
            order = [s for s in RUN_ORDER if s in args.systems]
            for k, name in enumerate(order):
                left = total_end - time.monotonic()
                budget = min(sizes.system_budget_s, max(left / (len(order) - k), 30))
                results[name] = run_system(name, plan, budget, log_dir, server)
    except KeyboardInterrupt:
        interrupted = True
        console.print("[red]Interrupted: stopped what was started.[/red]")
    finally:
        server.stop()
    plan["cpu_ms"] = cpu_ms
    report = build_report(args, sizes, plan, info, results, started, t0, interrupted)
    console.print(build_table(sizes, results, args.systems))
    for line in notes(sizes, plan, results):
        console.print(line, highlight=False, markup=False)
    print_settings(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    console.print(f"Wrote {args.json}", highlight=False)
    if not args.no_chart:
        png = args.json.with_suffix(".png")
        error = chart(args.json, png)
        console.print(f"Chart: {png}" if error is None else f"[yellow]No chart: {error}[/yellow]")
    console.print(f"Done in {time.monotonic() - t0:.0f}s.", highlight=False)
    bad = interrupted or any(r.get("status") != "ok" for r in results.values())
    return 1 if bad else 0


def build_report(
    args: argparse.Namespace,
    sizes: Sizes,
    plan: dict[str, Any],
    info: dict[str, Any],
    results: dict[str, dict[str, Any]],
    started: float,
    t0: float,
    interrupted: bool,
) -> dict[str, Any]:
    info["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    ms = metrics(sizes)
    ratios = {m.key: ratio(m, results) for m in ms}
    return {
        "started_at": started,
        "duration_s": time.monotonic() - t0,
        "mode": "smoke" if args.smoke else "quick" if args.quick else "full",
        "interrupted": interrupted,
        "machine": info,
        "sizes": asdict(sizes),
        "plan": {k: v for k, v in plan.items() if k != "extra"},
        "systems": args.systems,
        "names": NAMES,
        "metrics": [asdict(m) for m in ms],
        "results": results,
        "sje_vs_best_peer": {
            k: {"ratio": v[0], "peer": v[1]} if v else None for k, v in ratios.items()
        },
    }


def print_settings(results: dict[str, dict[str, Any]]) -> None:
    console.print("\n[bold]Settings[/bold]")
    for name in [s for s in SYSTEMS if s in results]:
        res = results[name]
        versions = ", ".join(f"{k} {v}" for k, v in (res.get("versions") or {}).items())
        console.print(f"[bold]{NAMES[name]}[/bold] ({versions or 'not run'})", highlight=False)
        for key, text in (res.get("settings") or {}).items():
            console.print(f"  {key}: {text}", highlight=False, markup=False)
        if res.get("status") == "failed":
            console.print(f"  [red]failed: {res.get('reason')}[/red]", highlight=False)
        for err in res.get("errors", []):
            console.print(
                f"  [red]error in run {err['rep']}, {err['scenario']}:[/red] "
                f"{short(err['error'], 200)}",
                highlight=False,
            )
        if res.get("skipped"):
            console.print(f"  [yellow]skipped (budget): {', '.join(res['skipped'])}[/yellow]")


if __name__ == "__main__":
    sys.exit(main())
