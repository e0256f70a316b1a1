"""Screenshots of the monitor's dashboard, for docs/screenshots/ (1366 by 768 PNGs).

    .venv/bin/python scripts/screenshots.py [--warmup 60] [--out docs/screenshots]

Starts a Redis-backed deployment of real processes (master, two workers, monitor; the same
helpers as tests/browser), gives it a realistic mix of work (finished jobs spread over the
warm-up so the throughput chart has a shape, a job whose tasks are held running, a backlog on a
queue no worker serves, a failed job with a traceback and its dead letter, a lost worker), then
saves one PNG per page: overview, jobs, job (the failed job), job-running, workers, queues,
dead-letters. Uses the local Redis under a key prefix of its own, deleted at the end; ends only
the processes it started. Needs Chromium (scripts/bootstrap.sh installs it).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis
from playwright.sync_api import Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.browser.conftest import (  # noqa: E402  (needs the repository on sys.path)
    CHROMIUM,
    CHROMIUM_ARGS,
    VIEWPORT,
    Stack,
    gated,
    release,
    start_stack,
    started,
)
from tests.support import Proc, ensure_redis_server, sje_env, start_worker, wait_until  # noqa: E402

WAIT = "tests.apps.sample_tasks.started_then_wait"
SQUARE = "tests.apps.sample_tasks.square"
FLAKY = "tests.apps.sample_tasks.flaky"
REPORT = "tests.apps.monitor_tasks.report"
RECONCILE = "tests.apps.monitor_tasks.reconcile"


def warm_up(stack: Stack, seconds: float) -> None:
    """Finished jobs spread over ``seconds``: the chart's bars and the counters."""
    deadline = time.monotonic() + seconds
    batch = 0
    while time.monotonic() < deadline:
        batch += 1
        stack.client.submit(
            {"name": f"thumbnails batch {batch}", "task": SQUARE, "inputs": list(range(25 * batch))}
        ).wait(timeout=120)
        rows = [{"name": f"region-{r}", "rows": 1000 * r} for r in range(1, 4)]
        stack.client.submit({"name": "sales report", "task": REPORT, "inputs": rows}).wait(
            timeout=120
        )
        # a task that fails once, then succeeds on its retry
        marker = stack.folder / f"flaky-{batch}"
        item = {"marker": str(marker), "fail_times": 1}
        job = {"name": "sync crm", "task": FLAKY, "inputs": [item], "retries": 2, "backoff": 0.2}
        stack.client.submit(job).wait(timeout=120)
        time.sleep(3)  # spread the work over the chart's 10-second slots


def failures(stack: Stack) -> str:
    """Two failed jobs (tracebacks, dead letters); returns the id of the first."""
    first = stack.client.submit(
        {"name": "month-end reconcile", "task": RECONCILE, "inputs": ["acct-1042"], "retries": 1}
    )
    second = stack.client.submit(
        {"name": "import invoices", "task": "tests.apps.sample_tasks.boom", "inputs": ["inv-77"]}
    )
    first.wait(timeout=120)
    second.wait(timeout=120)
    return first.id


def work_in_flight(stack: Stack) -> str:
    """A job whose tasks hold every slot, plus a backlog; returns the held job's id."""
    held = stack.client.submit({"name": "nightly export", "task": WAIT, "inputs": gated(stack, 14)})
    wait_until(lambda: started(stack) >= 4, 60, "the held tasks to start")
    for region in ("emea", "apac"):
        stack.client.submit(
            {
                "name": f"rebuild search index {region}",
                "task": SQUARE,
                "inputs": list(range(40)),
                "queue": "reindex",
                "priority": 3,
            }
        )
    return held.id


def lose_a_worker(stack: Stack, procs: list[Proc]) -> None:
    gamma = start_worker(stack.env, "--concurrency", "1", "--name", "gamma")
    procs.append(gamma)
    gamma.signal(signal.SIGKILL)
    gamma.wait(10)


def shoot(page: Page, out: Path, name: str, hash_: str, ready: str, click: str = "") -> None:
    """Open ``hash_``, wait for the CSS selector ``ready`` (and click ``click``), save
    ``<out>/<name>.png``."""
    page.goto(f"/#{hash_}")
    page.locator(ready).first.wait_for(timeout=30_000)
    if click:
        page.locator(click).first.click()
    page.wait_for_timeout(1200)  # let the chart and live numbers settle (a picture, not a test)
    page.screenshot(path=str(out / f"{name}.png"))
    print(f"saved {out / name}.png")


def take(stack: Stack, out: Path, failed_id: str, held_id: str) -> None:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=VIEWPORT, base_url=stack.monitor)
        page = context.new_page()
        page.goto(f"/?token={stack.token}")
        expect(page.get_by_test_id("nav-overview")).to_be_visible()
        lost = '[data-testid=worker-row][data-name=gamma] [data-state="lost"]'
        page.goto("/#/workers")
        page.locator(lost).wait_for(timeout=30_000)  # every page shows the lost worker
        shoot(page, out, "overview", "/", "[data-testid=throughput-chart] canvas")
        shoot(page, out, "jobs", "/jobs", "[data-testid=job-row]")
        shoot(page, out, "job", f"/jobs/{failed_id}", "[data-testid=task-error]")
        shoot(page, out, "job-running", f"/jobs/{held_id}", "[data-testid=task-row]")
        shoot(page, out, "workers", "/workers", lost)
        shoot(page, out, "queues", "/queues", "[data-testid=peek-row]")
        entry = "[data-testid=dlq-entry]"
        shoot(page, out, "dead-letters", "/dead-letters", entry, click=f"{entry} button.disclose")
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds of finished work")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    url, private_redis = ensure_redis_server()
    prefix = f"sje-screens-{uuid.uuid4().hex[:8]}"
    env = sje_env(
        SJE_BROKER_URL=url,
        SJE_KEY_PREFIX=prefix,
        SJE_HEARTBEAT_INTERVAL="0.5",
        SJE_TICK_INTERVAL="0.2",
        SJE_LEASE_TIMEOUT="5",
        SJE_SHUTDOWN_GRACE="5",
        SJE_TOKEN=f"token-{prefix}",
        SJE_SECRET=f"secret-{prefix}-{uuid.uuid4().hex}",
    )
    procs: list[Proc] = []
    with tempfile.TemporaryDirectory(prefix="sje-screens-") as folder:
        try:
            stack = start_stack(env, procs, Path(folder))
            print(f"deployment up (monitor {stack.monitor}); {args.warmup:.0f} s of work first")
            warm_up(stack, args.warmup)
            failed_id = failures(stack)
            held_id = work_in_flight(stack)
            lose_a_worker(stack, procs)
            take(stack, args.out, failed_id, held_id)
            release(stack)
        finally:
            (Path(folder) / "release").touch()
            for proc in reversed(procs):
                proc.stop()
            r = redis.Redis.from_url(url)
            keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
            for i in range(0, len(keys), 500):
                r.delete(*keys[i : i + 500])
            r.close()
            if private_redis is not None:
                private_redis.terminate()
                private_redis.wait(10)


if __name__ == "__main__":
    main()
