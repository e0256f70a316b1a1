"""Hostile task functions for the containment tests (imported by real worker processes).

They hang, leak, fork and hog on purpose, and leave marker files in ``item["dir"]`` so the
tests count what happened without reading logs. Each is bounded (a wall-clock guard, a cap on
forks or bytes) so that a containment failure cannot hang or exhaust the machine.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

import sje
from tests.support import wait_until

_GUARD_S = 120.0  # no hostile process outlives this, contained or not


def _hang() -> None:
    """Block until killed (at most ``_GUARD_S``): waits on an event nothing sets."""
    threading.Event().wait(_GUARD_S)


def _mark(item: dict[str, Any], name: str, data: dict[str, Any]) -> None:
    """Write ``<dir>/<name>`` atomically (rename), so a reader never sees half a file."""
    folder = Path(item["dir"])
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".{name}.{os.getpid()}"
    staging.write_text(json.dumps(data))
    os.replace(staging, folder / name)


def _started(item: dict[str, Any]) -> None:
    _mark(item, f"started-{item['kind']}", {"pid": os.getpid(), "time": time.time()})


def _forked(item: dict[str, Any], name: str | None = None) -> NoReturn:
    """The body of a forked process: leave the process group, write its marker (``name``, or
    ``fork-<pid>``), sleep out the guard and exit without ever returning into the worker's
    child code."""
    try:
        os.setsid()
        _mark(item, name or f"fork-{os.getpid()}", {"pid": os.getpid(), "sid": os.getsid(0)})
        _hang()
    finally:
        os._exit(0)


@sje.task
def block_forever(item: dict[str, Any]) -> None:
    """A task stuck in a blocking C call (a lock wait): the call itself is the hang under
    test; it gives up only after the guard time."""
    _started(item)
    threading.Event().wait(_GUARD_S)


@sje.task
def spin(item: dict[str, Any]) -> None:
    """A pure-Python CPU loop."""
    _started(item)
    end = time.monotonic() + _GUARD_S
    n = 0
    while time.monotonic() < end:
        n += 1


@sje.task
def ignore_sigterm(item: dict[str, Any]) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _started(item)
    _hang()


@sje.task
def setsid_grandchild(item: dict[str, Any]) -> None:
    """Forks a grandchild that leaves the process group with setsid(), then sleeps."""
    _started(item)
    if os.fork() == 0:
        _forked(item, f"grandchild-{item['kind']}")
    _hang()


@sje.task
def fork_and_hang(item: dict[str, Any]) -> None:
    """Forks ``forks`` processes that leave the process group and linger, then hangs. The task
    writes each fork's marker itself, right after the fork: a kill that stops it later still
    finds the marker of every fork made before."""
    for _ in range(item["forks"]):
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()
                _hang()
            finally:
                os._exit(0)
        _mark(item, f"fork-{pid}", {"pid": pid})
    _hang()


@sje.task
def daemonize(item: dict[str, Any]) -> str:
    """The classic double fork: the daemon's parent exits once the daemon has written its
    marker, so the daemon is orphaned; the task itself returns normally."""
    pid = os.fork()
    if pid == 0:
        try:
            if os.fork() == 0:
                _forked(item, "daemon")
            wait_until((Path(item["dir"]) / "daemon").exists, 10, "the daemon's marker")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return "daemonized"


@sje.task
def leak_memory(item: dict[str, Any]) -> str:
    """Allocates (and touches) 16 MB blocks until a limit stops it, or ``cap_mb`` is reached."""
    blocks: list[bytearray] = []
    while len(blocks) * 16 < item["cap_mb"]:
        blocks.append(bytearray(b"\x01") * (16 * 1024 * 1024))
    return f"allocated {item['cap_mb']} MB without hitting a limit"


@sje.task
def burn_cpu(item: dict[str, Any]) -> str:
    """Burns CPU until the guard (``seconds`` of wall clock) ends it."""
    end = time.monotonic() + item["seconds"]
    n = 0
    while time.monotonic() < end:
        n += 1
    return "the CPU limit did not stop me"


@sje.task
def fork_bomb(item: dict[str, Any]) -> dict[str, int]:
    """Forks (each fork leaves the process group) until ``max_forks`` or until the kernel
    refuses ``give_up_after`` times; each fork writes ``fork-<pid>`` and lingers. Returns the
    counts once every fork has written its marker (the worker may kill them all as soon as the
    task returns), leaving the forks behind."""
    forked = refused = 0
    for _ in range(item["max_forks"]):
        try:
            pid = os.fork()
        except OSError:
            refused += 1
            if refused >= item["give_up_after"]:
                break
            continue
        if pid == 0:
            _forked(item)
        forked += 1
    folder = Path(item["dir"])
    wait_until(lambda: len(list(folder.glob("fork-*"))) >= forked, 15, "every fork's marker")
    return {"forked": forked, "refused": refused}


@sje.task
def environment(_: Any) -> dict[str, str]:
    return dict(os.environ)


@sje.task
def connect(item: dict[str, Any]) -> dict[str, Any]:
    """Tries a TCP connection; returns how it went (an OSError is caught and described)."""
    try:
        with socket.create_connection((item["host"], item["port"]), timeout=5):
            return {"connected": True}
    except OSError as exc:
        return {"connected": False, "error": type(exc).__name__, "errno": exc.errno}


@sje.task
def whoami(_: Any) -> dict[str, Any]:
    """Who the task runs as and under which limits."""
    return {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "home": os.environ.get("HOME"),
        "nice": os.nice(0),
        "max_files": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "max_memory": list(resource.getrlimit(resource.RLIMIT_AS)),
        "pgid": os.getpgid(0),
        "pid": os.getpid(),
    }
