"""Fixtures for the dashboard tests: a real master, two real workers and a real monitor per test
(each test has its own key prefix), and Debian's Chromium driven by Playwright.

Playwright's own browser download is not used: ``scripts/bootstrap.sh`` installs ``chromium``
with apt-get. Tests wait with Playwright's ``expect`` (deadlines), never with sleeps.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    ViewportSize,
    expect,
    sync_playwright,
)

import sje
from tests.support import Proc, api_client, start_master, start_monitor, start_worker

CHROMIUM = os.environ.get("SJE_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
]
VIEWPORT: ViewportSize = {"width": 1366, "height": 768}
WORKERS = ("alpha", "beta")
#: slots per worker (tests that hold tasks count on two workers with two slots each)
CONCURRENCY = 2
TASK_MODULES = ("tests.apps.sample_tasks", "tests.apps.monitor_tasks")

expect.set_options(timeout=15_000)


@dataclass
class Stack:
    """One deployment for one test: its env (prefix, token), the master and monitor URLs, the
    workers by name, a client with the token and the test's folder for gates."""

    env: dict[str, str]
    master: str
    monitor: str
    monitor_proc: Proc
    workers: dict[str, Proc]
    client: sje.Client
    folder: Path

    @property
    def token(self) -> str:
        return self.env["SJE_TOKEN"]


def start_stack(env: dict[str, str], procs: list[Proc], folder: Path) -> Stack:
    """Master, the two workers and the monitor, as real processes started side by side (each
    is appended to ``procs``, so the caller stops them)."""
    modules = [arg for module in TASK_MODULES[1:] for arg in ("--tasks", module)]

    def worker(name: str) -> Proc:
        args = [*modules, "--concurrency", str(CONCURRENCY), "--name", name]
        return start_worker(env, *args, tasks=TASK_MODULES[0])

    with ThreadPoolExecutor(len(WORKERS) + 2) as pool:
        master = pool.submit(start_master, env)
        monitor = pool.submit(start_monitor, env)
        workers = {name: pool.submit(worker, name) for name in WORKERS}
        futures: list[Future[Any]] = [master, monitor, *workers.values()]
        wait(futures)
    for future in futures:  # stop what did start, even when another failed
        if future.exception() is None:
            result = future.result()
            procs.append(result[0] if isinstance(result, tuple) else result)
    master_url = master.result()[1]
    monitor_proc, monitor_url = monitor.result()
    env["SJE_MASTER"] = master_url
    running = {name: future.result() for name, future in workers.items()}
    return Stack(env, master_url, monitor_url, monitor_proc, running, api_client(env), folder)


@pytest.fixture
def stack(env: dict[str, str], procs: list[Proc], tmp_path: Path) -> Iterator[Stack]:
    deployment = start_stack(env, procs, tmp_path)
    yield deployment
    (tmp_path / "release").touch()  # held tasks end, so workers stop at once
    deployment.client.close()
    for proc in procs:  # pytest shows this only when the test failed
        print(f"--- sje {' '.join(proc.args)} (exit {proc.popen.poll()})\n{proc.output()[-3000:]}")


@pytest.fixture(scope="module")  # the sync API holds an event loop: never beyond this module
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"No Chromium at {CHROMIUM}: run scripts/bootstrap.sh (apt-get install chromium), "
            "or set SJE_TEST_CHROMIUM to a Chromium binary."
        )
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class PageProblems:
    """What went wrong inside the page: uncaught exceptions and Content-Security-Policy
    violations fail the test; dialogs are recorded (and dismissed unless a test accepts)."""

    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


@pytest.fixture
def context(browser: Browser, stack: Stack) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport=VIEWPORT, base_url=stack.monitor)
    yield ctx
    ctx.close()


@pytest.fixture
def problems() -> PageProblems:
    return PageProblems()


def watch(page: Page, problems: PageProblems) -> None:
    page.on("pageerror", lambda exc: problems.errors.append(f"uncaught: {exc}"))

    def on_console(message: Any) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            problems.errors.append(f"CSP: {message.text}")

    page.on("console", on_console)


def signed_in(context: BrowserContext, stack: Stack, problems: PageProblems) -> Page:
    """A new page signed in with the link the monitor prints (``/?token=…``)."""
    tab = context.new_page()
    watch(tab, problems)
    tab.goto(f"{stack.monitor}/?token={stack.token}")
    expect(tab.get_by_test_id("nav-overview")).to_be_visible()
    assert "token=" not in tab.url, "the token does not stay in the address bar"
    return tab


@pytest.fixture
def page(context: BrowserContext, stack: Stack, problems: PageProblems) -> Iterator[Page]:
    yield signed_in(context, stack, problems)
    assert not problems.errors, problems.errors


def gated(stack: Stack, n: int) -> list[dict[str, object]]:
    """Inputs for ``started_then_wait``: each task runs until ``release(stack)``."""
    started, gate = stack.folder / "started", stack.folder / "release"
    return [{"value": i, "started": str(started), "release": str(gate)} for i in range(n)]


def started(stack: Stack) -> int:
    folder = stack.folder / "started"
    return len(list(folder.iterdir())) if folder.exists() else 0


def release(stack: Stack) -> None:
    (stack.folder / "release").touch()
