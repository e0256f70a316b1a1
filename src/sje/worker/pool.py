"""The worker's pool of child processes and its slot accounting.

A child is *idle* (can take any task), *sync* (runs one plain task) or *async* (runs up to
``async_capacity`` coroutine tasks on its event loop). Free slots = idle children + room in
async children that are not draining; the worker never fetches more tasks than that.
A sync task fetched while no child is idle waits for the first async child to drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import orjson

from sje.errors import WorkerError
from sje.models import TaskMessage
from sje.worker.child import frame, unframe

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 120.0
_ASYNC_KILL_GRACE_S = 5.0

#: called with (child, header, body) for every frame a child sends, and with
#: (child, None, b"") once when a child's pipe closes (it exited or was killed)
FrameHandler = Callable[["Child", "dict[str, Any] | None", bytes], None]


@dataclass(eq=False)
class Running:
    message: TaskMessage
    is_async: bool
    deadline: float | None  # monotonic seconds
    started: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class Child:
    process: subprocess.Popen[bytes]
    conn: Connection
    tasks: dict[str, Running] = field(default_factory=dict)
    is_async: bool = False
    draining: bool = False
    dispatched: int = 0
    is_closed: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid or 0

    def send(self, header: dict[str, Any], body: bytes = b"") -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.send_bytes(frame(header, body))

    def kill(self) -> None:
        """SIGKILL the child's whole process group (the task and anything it started)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


class Pool:
    """Starts, feeds, supervises and replaces the child processes of one worker."""

    def __init__(
        self,
        modules: list[str],
        size: int,
        async_capacity: int,
        max_tasks_per_child: int,
        on_frame: FrameHandler,
    ) -> None:
        self.modules = modules
        self.size = size
        self.async_capacity = async_capacity
        self.max_tasks_per_child = max_tasks_per_child
        self.on_frame = on_frame
        self.children: list[Child] = []

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.children = list(await asyncio.gather(*(self._spawn() for _ in range(self.size))))

    async def _spawn(self) -> Child:
        # a plain interpreter over a socketpair: no inherited loop or sockets, and none of
        # multiprocessing's helper processes (its resource tracker costs ~12 MB per worker)
        parent_sock, child_sock = socket.socketpair()
        fd = child_sock.fileno()
        argv = [sys.executable, "-m", "sje.worker.child", str(fd), orjson.dumps(sys.path).decode()]
        process = subprocess.Popen([*argv, *self.modules], pass_fds=[fd])
        child_sock.close()
        parent_end = Connection(parent_sock.detach())
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[dict[str, Any]] = loop.create_future()

        def first_frame() -> None:
            loop.remove_reader(parent_end.fileno())
            try:
                header, _ = unframe(parent_end.recv_bytes())
            except (EOFError, OSError):
                header = {"type": "error", "message": f"exit code {process.wait()}"}
            if not ready.done():
                ready.set_result(header)

        loop.add_reader(parent_end.fileno(), first_frame)
        try:
            header = await asyncio.wait_for(ready, _START_TIMEOUT_S)
        except asyncio.TimeoutError:
            header = {"type": "error", "message": f"not ready after {_START_TIMEOUT_S:.0f}s"}
        if header["type"] != "ready":
            process.kill()
            process.wait()
            raise WorkerError(f"A child process failed to start: {header['message']}")
        child = Child(process, parent_end)
        loop.add_reader(parent_end.fileno(), self._readable, child)
        return child

    def _readable(self, child: Child) -> None:
        try:
            header, body = unframe(child.conn.recv_bytes())
        except (EOFError, OSError):
            self._closed(child)
            return
        self.on_frame(child, header, body)

    def _closed(self, child: Child) -> None:
        if child.is_closed:
            return
        child.is_closed = True
        asyncio.get_running_loop().remove_reader(child.conn.fileno())
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(timeout=1)
        child.conn.close()
        self.on_frame(child, None, b"")

    async def replace(self, child: Child) -> None:
        """Kill ``child`` (if alive) and start a fresh one in its place."""
        child.kill()
        self._closed(child)
        if child in self.children:
            self.children.remove(child)
            self.children.append(await self._spawn())

    async def stop(self) -> None:
        for child in self.children:
            child.kill()
            self._closed(child)
        self.children = []

    # -- slots and dispatch ----------------------------------------------------------------

    def free_slots(self) -> int:
        free = 0
        for child in self.children:
            if child.is_closed or child.draining:
                continue
            if not child.tasks:
                free += 1
            elif child.is_async:
                free += self.async_capacity - len(child.tasks)
        return free

    def place(self, message: TaskMessage, is_async: bool, body: bytes) -> bool:
        """Send the task to a suitable child; False when none can take it now."""
        child = self._pick(is_async)
        if child is None:
            if not is_async:
                self._drain_one_async_child()
            return False
        child.is_async = is_async
        child.dispatched += 1
        if self.max_tasks_per_child and child.dispatched >= self.max_tasks_per_child:
            child.draining = True
        deadline = time.monotonic() + message.timeout if message.timeout else None
        child.tasks[message.id] = Running(message, is_async, deadline)
        header = {
            "type": "run",
            "id": message.id,
            "task": message.task,
            "kind": message.kind,
            "timeout": message.timeout,
        }
        child.send(header, body)
        return True

    def _pick(self, is_async: bool) -> Child | None:
        live = [c for c in self.children if not c.is_closed and not c.draining]
        if is_async:
            busy = [
                c for c in live if c.is_async and c.tasks and len(c.tasks) < self.async_capacity
            ]
            if busy:
                return min(busy, key=lambda c: len(c.tasks))
        return next((c for c in live if not c.tasks), None)

    def _drain_one_async_child(self) -> None:
        if any(c.draining and c.tasks for c in self.children):
            return
        candidates = [c for c in self.children if c.is_async and c.tasks and not c.is_closed]
        if candidates:
            min(candidates, key=lambda c: len(c.tasks)).draining = True

    def finish(self, child: Child, task_id: str) -> Running | None:
        """Forget a finished task; a drained child becomes idle again (or retires)."""
        running = child.tasks.pop(task_id, None)
        if (
            not child.tasks
            and child.draining
            and not (self.max_tasks_per_child and child.dispatched >= self.max_tasks_per_child)
        ):
            child.draining = False
        return running

    def needs_retirement(self, child: Child) -> bool:
        return bool(
            self.max_tasks_per_child
            and child.dispatched >= self.max_tasks_per_child
            and not child.tasks
        )

    def find(self, task_id: str) -> tuple[Child, Running] | None:
        for child in self.children:
            running = child.tasks.get(task_id)
            if running:
                return child, running
        return None

    def running(self) -> list[tuple[Child, Running]]:
        return [(c, r) for c in self.children for r in c.tasks.values()]

    def overdue(self, now: float) -> list[tuple[Child, Running, bool]]:
        """Tasks past their deadline, with whether the child must be killed now."""
        out = []
        for child, running in self.running():
            if running.deadline is None or now < running.deadline:
                continue
            kill = not running.is_async or now >= running.deadline + _ASYNC_KILL_GRACE_S
            out.append((child, running, kill))
        return out
