"""The async tasks of a child (``sje.worker.child``): one event loop on a thread of its own,
started with the child's first async task. A module apart, imported then, so that a child that
runs only plain tasks never loads asyncio (~6 MB of its memory, with ssl)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable
from typing import Any

from sje.tasks import Task
from sje.worker.capture import Log, capture_task_output
from sje.worker.task_call import Outcome, call_args, encode_result, error_info

#: sends a task's ``done`` frame: (its ``run`` header, its outcome, what it printed)
DoneHandler = Callable[[dict[str, Any], Outcome, "Log | None"], None]


class AsyncLane:
    """Runs async tasks concurrently on its event loop; each outcome goes to ``done``."""

    def __init__(self, done: DoneHandler) -> None:
        self._done = done
        self._running: dict[str, concurrent.futures.Future[None]] = {}
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="sje-async", daemon=True).start()

    @property
    def running(self) -> int:
        return len(self._running)

    def start(self, task: Task[Any], header: dict[str, Any], body: bytes) -> None:
        task_id = header["id"]
        future = asyncio.run_coroutine_threadsafe(self._run(task, header, body), self._loop)
        self._running[task_id] = future
        # a task may end on the loop's thread before the line above runs: its own removal
        # then found nothing, and this one drops the entry (at once, if it is done already)
        future.add_done_callback(lambda _: self._forget(task_id, future))

    def _forget(self, task_id: str, future: concurrent.futures.Future[None]) -> None:
        if self._running.get(task_id) is future:
            self._running.pop(task_id, None)  # a cancel may have taken it meanwhile

    def cancel(self, task_id: str) -> None:
        future = self._running.pop(task_id, None)
        if future is not None:
            future.cancel()

    async def _run(self, task: Task[Any], header: dict[str, Any], body: bytes) -> None:
        buffer = capture_task_output()  # this asyncio task's context only
        try:
            outcome = await self._call(task, header, body)
        finally:
            with contextlib.suppress(KeyError):
                del self._running[header["id"]]
        self._done(header, outcome, buffer.log())

    async def _call(self, task: Task[Any], header: dict[str, Any], body: bytes) -> Outcome:
        timeout = header.get("timeout")
        try:
            args, kwargs = call_args(header["kind"], body)
            if header["kind"] == "chunk":
                coro: Any = asyncio.gather(*(task.fn(item) for item in args[0]))
            else:
                coro = task.fn(*args, **kwargs)
            value = await asyncio.wait_for(coro, timeout)
            return {"ok": True}, encode_result(task, value)
        except asyncio.TimeoutError:
            message = f"task timed out after {timeout}s"
            err = {"type": "TaskTimeout", "message": message, "traceback": ""}
            return {"ok": False, "error": err}, b""
        except Exception as exc:
            return {"ok": False, "error": error_info(exc)}, b""
