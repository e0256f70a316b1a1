"""Tasks that print and log, for the task log tests (imported by real worker processes)."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import sje

log = logging.getLogger(__name__)


@sje.task
def chatty(name: str) -> str:
    """Writes one line each through print, sys.stderr, logging, a subprocess, a raw write to
    descriptor 1 and C's printf, in that order."""
    print(f"{name}: print")
    sys.stderr.write(f"{name}: stderr\n")
    log.info("%s: logging", name)
    subprocess.run(["echo", f"{name}: subprocess"], check=True)
    os.write(1, f"{name}: fd 1\n".encode())
    ctypes.CDLL(None).printf(f"{name}: printf\n".encode())
    return name


@sje.task
def fails_twice(item: dict[str, Any]) -> str:
    """Prints which call this is (counted in the file ``item["marker"]``); raises on the first
    two calls."""
    marker = Path(item["marker"])
    calls = int(marker.read_text()) + 1 if marker.exists() else 1
    marker.write_text(str(calls))
    print(f"call {calls} starting")
    if calls <= 2:
        raise RuntimeError(f"failure #{calls}")
    print(f"call {calls} done")
    return f"ok after {calls}"


@sje.task
def loud(size: int) -> int:
    """Prints BEGIN, ``size`` bytes of filler in lines of 100, then END."""
    print("BEGIN")
    line = "x" * 99 + "\n"
    sys.stdout.write(line * (size // 100))
    print("END")
    return size


@sje.task
def silent(x: int) -> int:
    return x


#: per group and step: how many calls reached it, and the event set when all of them have
_arrived: dict[str, tuple[int, asyncio.Event]] = {}


@sje.task
async def interleaved(item: dict[str, Any]) -> str:
    """Async: prints and logs three lines, each only once every call of ``item["group"]`` (of
    ``item["size"]``) has reached the same step, so the calls' lines alternate in time."""
    name, group, size = item["name"], item["group"], item["size"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    for step in range(3):
        print(f"{name} step {step}")
        log.info("%s logged %d", name, step)
        key = f"{group}:{step}"
        count, everyone = _arrived.get(key) or (0, asyncio.Event())
        _arrived[key] = (count + 1, everyone)
        if count + 1 == size:
            everyone.set()
        try:
            await asyncio.wait_for(everyone.wait(), max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            got = _arrived[key][0]
            raise TimeoutError(f"only {got} of {size} calls reached step {step}") from None
    return str(name)


@sje.task
def print_then_hang(item: dict[str, Any]) -> None:
    """Prints a line, says so by creating ``item["printed"]``, then blocks until killed."""
    print("printed before the kill")
    Path(item["printed"]).touch()
    threading.Event().wait()


@sje.task
def print_then_die(_: Any) -> None:
    """Prints a line, then SIGKILLs its own child process."""
    print("printed before the crash")
    os.kill(os.getpid(), signal.SIGKILL)
