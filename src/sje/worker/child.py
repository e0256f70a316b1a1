"""The child process that runs tasks. Never imported by the worker's own loop at run time.

Frames on the pipe are ``header JSON + b"\\n" + body``. Parent to child: ``run`` (body: the
task's JSON input), ``cancel``. Child to parent: ``ready`` / ``error`` at start, ``done``
(body: the JSON result when ``ok``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import os
import signal
import sys
import threading
import traceback
from multiprocessing.connection import Connection
from typing import Any

import orjson

from sje.errors import SJEError
from sje.tasks import Task, load_catalog

_PR_SET_PDEATHSIG = 1


def frame(header: dict[str, Any], body: bytes = b"") -> bytes:
    return orjson.dumps(header) + b"\n" + body


def unframe(data: bytes) -> tuple[dict[str, Any], bytes]:
    head, _, body = data.partition(b"\n")
    return orjson.loads(head), body


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when the worker process dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def error_info(exc: BaseException) -> dict[str, Any]:
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }


class BadPayload(Exception):
    """The payload is not the JSON its kind promises; the task is dead-lettered, not retried."""


def call_args(kind: str, payload: bytes) -> tuple[list[Any], dict[str, Any]]:
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise BadPayload(f"payload is not valid JSON ({exc}): {payload[:80]!r}") from None
    if kind == "call":
        if not (
            isinstance(value, dict)
            and isinstance(value.get("args"), list)
            and isinstance(value.get("kwargs"), dict)
            and len(value) == 2
        ):
            raise BadPayload('a call payload must be {"args": [...], "kwargs": {...}}')
        return value["args"], value["kwargs"]
    if kind == "chunk" and not isinstance(value, list):
        raise BadPayload("a chunk payload must be a JSON list")
    return [value], {}


def encode_result(task: Task[Any], value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        raise TypeError(
            f"task '{task.name}' returned a {type(value).__name__}, which is not JSON; "
            "return str, int, float, bool, None, list or dict"
        ) from None


class ChildRunner:
    """Executes ``run`` frames against the catalog and answers with ``done`` frames.

    The main thread reads frames and runs sync tasks itself (so task code may call
    ``asyncio.run``); async tasks go to an event loop on a second thread, started on first use.
    """

    def __init__(self, conn: Connection, catalog: dict[str, Task[Any]]) -> None:
        self.conn = conn
        self.catalog = catalog
        self._send_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: dict[str, concurrent.futures.Future[None]] = {}

    def send(self, header: dict[str, Any], body: bytes = b"") -> None:
        with self._send_lock:
            self.conn.send_bytes(frame(header, body))

    def serve(self) -> None:
        while True:
            try:
                header, body = unframe(self.conn.recv_bytes())
            except (EOFError, OSError):
                return
            if header["type"] == "run":
                task = self.catalog[header["task"]]
                if task.is_async:
                    coro = self.run_async(task, header, body)
                    fut = asyncio.run_coroutine_threadsafe(coro, self._event_loop())
                    self._running[header["id"]] = fut
                else:
                    self.run_sync(task, header, body)
            elif header["type"] == "cancel" and header["id"] in self._running:
                self._running.pop(header["id"]).cancel()

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            threading.Thread(target=self._loop.run_forever, name="sje-async", daemon=True).start()
        return self._loop

    def run_sync(self, task: Task[Any], header: dict[str, Any], body: bytes) -> None:
        try:
            args, kwargs = call_args(header["kind"], body)
            if header["kind"] == "chunk":
                value: Any = [task.fn(item) for item in args[0]]
            else:
                value = task.fn(*args, **kwargs)
            self.send({"type": "done", "id": header["id"], "ok": True}, encode_result(task, value))
        except Exception as exc:
            self.send({"type": "done", "id": header["id"], "ok": False, "error": error_info(exc)})

    async def run_async(self, task: Task[Any], header: dict[str, Any], body: bytes) -> None:
        timeout = header.get("timeout")
        try:
            args, kwargs = call_args(header["kind"], body)
            if header["kind"] == "chunk":
                coro: Any = asyncio.gather(*(task.fn(item) for item in args[0]))
            else:
                coro = task.fn(*args, **kwargs)
            value = await asyncio.wait_for(coro, timeout)
            self.send({"type": "done", "id": header["id"], "ok": True}, encode_result(task, value))
        except asyncio.TimeoutError:
            message = f"task timed out after {timeout}s"
            err = {"type": "TaskTimeout", "message": message, "traceback": ""}
            self.send({"type": "done", "id": header["id"], "ok": False, "error": err})
        except Exception as exc:
            self.send({"type": "done", "id": header["id"], "ok": False, "error": error_info(exc)})
        finally:
            with contextlib.suppress(KeyError):
                del self._running[header["id"]]


def child_main(conn: Connection, modules: list[str]) -> None:
    """Serve tasks on ``conn``: own process group, dies with its worker."""
    _die_with_parent()
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        catalog = load_catalog(modules)
    except SJEError as exc:
        conn.send_bytes(frame({"type": "error", "message": exc.message}))
        return
    conn.send_bytes(frame({"type": "ready", "pid": os.getpid()}))
    ChildRunner(conn, catalog).serve()


def main(argv: list[str]) -> None:
    """``python -m sje.worker.child FD SYS_PATH_JSON MODULE...``, started by the worker's pool."""
    sys.path[:] = orjson.loads(argv[2])
    child_main(Connection(int(argv[1])), argv[3:])


if __name__ == "__main__":
    main(sys.argv)
