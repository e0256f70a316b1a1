"""``sje up``: a master, workers and a monitor on this machine as child processes, for trying
SJE out.

With ``--example`` it runs the example job end to end (primes below two million, split into
40 tasks with a reduce step), checks the answer, and stops everything it started.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from rich.console import Console

from sje.broker.registry import open_broker
from sje.client import Client, JobHandle
from sje.config import MasterSettings, load_settings, redact_url
from sje.errors import MasterError, WorkerError

EXAMPLE_LIMIT = 2_000_000
EXAMPLE_TASKS = 40
PRIMES_BELOW_LIMIT = 148_933  # pi(2,000,000)
_READY_TIMEOUT_S = 60.0


def _await_line(proc: subprocess.Popen[str], marker: str, log: Path, what: str) -> str:
    """Wait for a line containing ``marker`` on the process's stdout (the ready signal)."""
    found: list[str] = []

    def read(stream: IO[str]) -> None:
        for line in stream:
            if marker in line:
                found.append(line.strip())
                return

    assert proc.stdout is not None  # started with stdout=PIPE
    reader = threading.Thread(target=read, args=(proc.stdout,), daemon=True)
    reader.start()
    reader.join(_READY_TIMEOUT_S)
    if not found:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise (WorkerError if what == "worker" else MasterError)(
            f"The {what} did not start: {' | '.join(tail) or 'no output'} (log: {log})"
        )
    return found[0]


def _warnings(log: Path) -> list[str]:
    """The messages a process logged as warnings so far (e.g. about Redis durability)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return [line.split(": ", 1)[-1] for line in text.splitlines() if " WARNING " in line]


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


ProgressFn = Callable[[JobHandle, "float | None"], "dict[str, Any]"]


def _example(client: Client, out: Console, show_progress: ProgressFn) -> int:
    step = EXAMPLE_LIMIT // EXAMPLE_TASKS
    ranges = [[i, i + step] for i in range(0, EXAMPLE_LIMIT, step)]
    job = {
        "name": "primes-example",
        "task": "sje.examples.count_primes",
        "inputs": ranges,
        "reduce": "sje.examples.total",
    }
    started = time.monotonic()
    handle = client.submit(job)
    out.print(
        f"Submitted job {handle.id}: count primes below {EXAMPLE_LIMIT:,} in {len(ranges)} tasks"
    )
    show_progress(handle, 600)
    count = handle.result(timeout=600)
    elapsed = time.monotonic() - started
    ok = count == PRIMES_BELOW_LIMIT
    verdict = "correct" if ok else f"WRONG, expected {PRIMES_BELOW_LIMIT}"
    out.print(f"Result: {count:,} primes below {EXAMPLE_LIMIT:,} ({verdict}) in {elapsed:.2f}s")
    return 0 if ok else 1


def run_up(
    config: Path | None,
    example: bool,
    n_workers: int,
    tasks: list[str],
    out: Console,
    err: Console,
    show_progress: ProgressFn,
) -> int:
    settings = load_settings(MasterSettings, config, {"port": 0})
    url = settings.effective_broker_url

    async def ping() -> None:
        broker = open_broker(url, settings.key_prefix, settings.state_url)
        try:
            await broker.ping()
        finally:
            await broker.close()

    asyncio.run(ping())
    logs = Path(tempfile.mkdtemp(prefix="sje-up-"))
    env = {**os.environ, "SJE_BROKER_URL": url}
    if settings.state_url:
        env["SJE_STATE_URL"] = settings.state_url
    sje = [sys.executable, "-m", "sje"]
    procs: list[subprocess.Popen[str]] = []

    def start(args: list[str], name: str) -> subprocess.Popen[str]:
        log = (logs / f"{name}.log").open("w")
        proc = subprocess.Popen(sje + args, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        procs.append(proc)
        return proc

    try:
        master = start(["master", "--port", str(settings.port)], "master")
        line = _await_line(master, "listening on", logs / "master.log", "master")
        master_url = line.rsplit(" ", 1)[-1]
        for warning in _warnings(logs / "master.log"):
            err.print(f"Warning: {warning}", highlight=False, soft_wrap=True)
        per_worker = max(1, (os.cpu_count() or 1) // max(1, n_workers))
        modules = tasks or ["sje.examples"]
        for i in range(n_workers):
            args = ["worker", "--name", f"up-{i + 1}", "--concurrency", str(per_worker)]
            for module in modules:
                args += ["--tasks", module]
            proc = start(args, f"worker-{i + 1}")
            _await_line(proc, "ready", logs / f"worker-{i + 1}.log", "worker")
        monitor = start(["monitor", "--port", "0"], "monitor")
        _await_line(monitor, "listening on", logs / "monitor.log", "monitor")
        dashboard = _await_line(monitor, "Dashboard:", logs / "monitor.log", "monitor")
        out.print(
            f"Master {master_url}, {n_workers} worker(s), broker {redact_url(url)}; logs in {logs}"
        )
        out.print(dashboard, highlight=False, soft_wrap=True)
        client = Client(master_url, settings.token)
        if example:
            return _example(client, out, show_progress)
        out.print(f"Running. Set SJE_MASTER={master_url} to submit; Ctrl-C stops everything.")
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        err.print("A process exited; stopping the others.")
        return 1
    finally:
        _stop(procs)
