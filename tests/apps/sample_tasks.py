"""Task functions used by the end-to-end tests (imported by real worker processes)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path
from typing import Any

import sje
from tests.support import GATE_TIMEOUT_S, wait_until


@sje.task
def square(x: int) -> int:
    return x * x


@sje.task
def add(a: int, b: int, scale: int = 1) -> int:
    return (a + b) * scale


@sje.task(name="tests.total")
def total(values: list[int]) -> int:
    return sum(values)


@sje.task
def boom(x: Any) -> None:
    raise ValueError(f"boom on {x!r}")


@sje.task
def flaky(item: dict[str, Any]) -> str:
    """Fails until it has been called ``fail_times`` times for this marker file."""
    marker = Path(item["marker"])
    calls = int(marker.read_text()) + 1 if marker.exists() else 1
    marker.write_text(str(calls))
    if calls <= item["fail_times"]:
        raise RuntimeError(f"flaky failure #{calls}")
    return f"ok after {calls}"


def _released(item: dict[str, Any]) -> None:
    """Wait for the test to create the file ``item["release"]``, when given."""
    if "release" in item:
        release = Path(item["release"])
        wait_until(release.exists, GATE_TIMEOUT_S, f"the test to create {release}")


@sje.task
def record(item: dict[str, Any]) -> int:
    """Once released (see ``_released``), appends a line to a log file (one per run), then
    returns the item's value."""
    _released(item)
    with open(item["log"], "a") as f:
        f.write(f"{item['value']} {os.getpid()}\n")
    return int(item["value"])


@sje.task
def started_then_wait(item: dict[str, Any]) -> int:
    """Touches ``item['started']/<value>``, then waits to be released (see ``_released``):
    lets tests act while a task runs, and decide when it ends."""
    Path(item["started"]).mkdir(parents=True, exist_ok=True)
    (Path(item["started"]) / str(item["value"])).write_text(str(os.getpid()))
    _released(item)
    return int(item["value"])


@sje.task
def hang(_: Any) -> None:
    """Blocks forever (until its timeout kills it)."""
    threading.Event().wait()


@sje.task
def die(item: Any) -> None:
    """SIGKILLs its own process; given a dict, it first touches ``item['started']/die`` and
    waits to be released (see ``_released``)."""
    if isinstance(item, dict):
        Path(item["started"]).mkdir(parents=True, exist_ok=True)
        (Path(item["started"]) / "die").touch()
        _released(item)
    os.kill(os.getpid(), signal.SIGKILL)


@sje.task
def not_json(_: Any) -> object:
    return object()


_arrived = 0
_gate: asyncio.Event | None = None


@sje.task
async def rendezvous(n: int) -> dict[str, int]:
    """Returns only once ``n`` calls are in flight at once in this process (else times out)."""
    global _arrived, _gate
    if _gate is None:
        _gate = asyncio.Event()
    _arrived += 1
    if _arrived >= n:
        _gate.set()
    await asyncio.wait_for(_gate.wait(), 30)
    return {"pid": os.getpid(), "arrived": _arrived}


@sje.task
async def async_square(x: int) -> int:
    return x * x


@sje.task
async def async_hang(_: Any) -> None:
    await asyncio.Event().wait()
