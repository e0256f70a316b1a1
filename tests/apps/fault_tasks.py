"""Task functions for the delivery fault tests (imported by real worker processes).

Every execution leaves one marker file in ``item["dir"]`` named ``<index>-<pid>-<start_ns>``:
a ``start <monotonic_ns> <wall_ns>`` line written when the run begins and an ``end ...`` line
appended when it returns. A run killed midway has no ``end`` line. ``tests.support.read_runs``
parses them.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import sje
from tests.support import GATE_TIMEOUT_S, wait_until


def _begin(item: dict[str, Any]) -> tuple[Path, bool]:
    """Write this run's marker (atomically); returns it and whether it is the index's first."""
    folder = Path(item["dir"])
    index = int(item["index"])
    first = not any(folder.glob(f"{index}-*"))
    mono, wall = time.monotonic_ns(), time.time_ns()
    name = f"{index}-{os.getpid()}-{mono}"
    staging = folder / ".staging"
    staging.mkdir(parents=True, exist_ok=True)
    (staging / name).write_text(f"start {mono} {wall}\n")
    os.replace(staging / name, folder / name)
    return folder / name, first


def _end(marker: Path) -> None:
    fd = os.open(marker, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, f"end {time.monotonic_ns()} {time.time_ns()}\n".encode())
    finally:
        os.close(fd)


@sje.task
def mark(item: dict[str, Any]) -> int:
    """Between its start and end markers: waits for the file ``gate`` to exist, and on the
    index's first run also for ``first_gate`` (each when given, for at most ten minutes; a gate
    the test never opens holds the run until it is killed). Returns the index."""
    marker, first = _begin(item)
    for key in ("gate", "first_gate") if first else ("gate",):
        if key in item:
            wait_until(Path(item[key]).exists, GATE_TIMEOUT_S, f"the gate {item[key]}")
    _end(marker)
    return int(item["index"])


@sje.task
def crash(item: dict[str, Any]) -> None:
    """Kills its own child process on every run: ``os._exit(code)`` or SIGKILL."""
    _begin(item)
    if item["how"] == "exit":
        os._exit(int(item.get("code", 3)))
    os.kill(os.getpid(), signal.SIGKILL)
