"""The worker's pool of child processes and its slot accounting.

A child is *idle* (can take any task), *sync* (runs one plain task) or *async* (runs up to
``async_capacity`` coroutine tasks on its event loop). Free slots = idle children + room in
async children that are not draining; the worker never fetches more tasks than that.
A sync task fetched while no child is idle waits for the first async child to drain.

Every child runs under the worker's ``Isolation`` (see ``sje.worker.sandbox``). Killing a
child kills everything it started, including processes that left its process group with
setsid(): the pool snapshots the child's descendants (and its pids cgroup) before the kill, and
as the worker is a child subreaper, orphans are re-parented to it; the pool kills and reaps any
such process every ``_SWEEP_S``. The worker process is dedicated to the pool: any child of it
that is not one of the pool's children is an orphan of some task.
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
from typing import Any

import orjson
import psutil

from sje.errors import WorkerError
from sje.models import TaskMessage
from sje.worker import proctree
from sje.worker.capture import CaptureFile, Log
from sje.worker.cgroups import ChildCgroup
from sje.worker.cpus import CHILD_MODULE, CpuPlacement
from sje.worker.sandbox import Isolation, TaskLimits, prepare
from sje.worker.wire import FrameReader, frame, send, unframe

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 120.0
_ASYNC_KILL_GRACE_S = 5.0
_SWEEP_S = 0.1
_WATCHDOG_EVERY = 5  # sweeps between two counts of each busy child's processes

#: the bodies of the tasks queued in one child add up to this at most (a larger task waits for
#: an idle child), so they fit in the socket's buffer: a send to a busy child never blocks
_QUEUED_BODY_MAX = 64 * 1024
_READ_PAUSE_S = 0.002  # a child with tasks queued is read at most this often

#: called with (child, header, body) for every frame a child sends, and with
#: (child, None, b"") once when a child's pipe closes (it exited or was killed)
FrameHandler = Callable[["Child", "dict[str, Any] | None", bytes], None]


@dataclass(eq=False)
class Running:
    message: TaskMessage
    is_async: bool
    deadline: float | None  # monotonic seconds
    started: float = field(default_factory=time.monotonic)
    queued: bool = False  # sent to a busy plain child: it starts when the one before ends
    size: int = 0  # of its body
    aborted: bool = False  # no longer ours while queued: its outcome is ignored
    recalling: bool = False  # asked back from its child (see Pool.recall)


@dataclass(eq=False)
class Child:
    process: subprocess.Popen[bytes]
    sock: socket.socket
    reader: FrameReader  # of ``sock``
    tasks: dict[str, Running] = field(default_factory=dict)
    is_async: bool = False
    draining: bool = False
    dispatched: int = 0
    is_closed: bool = False
    dying: bool = False  # killed, its pipe not closed yet: it takes no task any more
    cgroup: ChildCgroup | None = None
    has_leftovers: bool = False  # its tasks left processes behind: replace it
    capture: CaptureFile | None = None  # where its plain tasks' output goes
    outgoing: list[bytes] = field(default_factory=list)  # frames for the next write
    paused: bool = False  # its frames are read a moment later, together

    @property
    def pid(self) -> int:
        return self.process.pid or 0

    def captured(self) -> Log | None:
        """What its plain task printed so far; read after killing it, before it is closed."""
        return self.capture.read() if self.capture is not None else None

    def send(self, header: dict[str, Any], body: bytes = b"") -> None:
        """Queue a frame; the frames queued while the event loop runs one step go in one write
        at its end."""
        self.outgoing.append(frame(header, body))
        if len(self.outgoing) == 1:
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        frames, self.outgoing = self.outgoing, []
        if frames and not self.is_closed:
            with contextlib.suppress(OSError, ValueError):
                send(self.sock, frames)

    @property
    def usable(self) -> bool:
        """Alive and not being drained: it may be given tasks."""
        return not (self.is_closed or self.dying or self.draining)

    def kill(self) -> None:
        """SIGKILL the child and every process it started, in its process group or not. From
        now on it takes no task, although its pipe closes (and the pool learns of its death)
        only a moment later."""
        self.dying = True
        tree = proctree.descendants(self.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        for proc in tree:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        if self.cgroup is not None:
            self.cgroup.kill()


class Pool:
    """Starts, feeds, supervises and replaces the child processes of one worker."""

    def __init__(
        self,
        modules: list[str],
        size: int,
        async_capacity: int,
        max_tasks_per_child: int,
        on_frame: FrameHandler,
        limits: TaskLimits | None = None,
        cpu_affinity: str = "spread",
    ) -> None:
        self.modules = modules
        self.size = size
        self.async_capacity = async_capacity
        self.max_tasks_per_child = max_tasks_per_child
        self.on_frame = on_frame
        self.limits = limits or TaskLimits()
        self.isolation: Isolation | None = None  # decided by start()
        self.placement = CpuPlacement(size, cpu_affinity)
        self.children: list[Child] = []
        self._own: dict[int, Child | None] = {}  # unreaped children (None: still starting)
        self._stale_cgroups: list[ChildCgroup] = []
        self._spawned = 0
        self._sweeper: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Decide the isolation (``WorkerError`` when a request cannot be met), start children."""
        self.isolation = await asyncio.to_thread(prepare, self.limits, self.size)
        self._sweeper = asyncio.create_task(self._supervise())
        started = await asyncio.gather(
            *(self._spawn() for _ in range(self.size)), return_exceptions=True
        )
        self.children = [c for c in started if isinstance(c, Child)]
        failed = [e for e in started if isinstance(e, BaseException)]
        if failed:
            await self.stop()
            raise failed[0]

    async def _spawn(self) -> Child:
        # a plain interpreter over a socketpair: no inherited loop or sockets, and none of
        # multiprocessing's helper processes (its resource tracker costs ~12 MB per worker)
        isolation = self.isolation
        if isolation is None:
            raise RuntimeError("Pool.start() decides the isolation before any child starts")
        cgroup = self._new_cgroup(isolation)
        capture = CaptureFile()
        parent_sock, child_sock = socket.socketpair()
        fd = child_sock.fileno()
        spec = orjson.dumps({**isolation.child_spec(cgroup), "log_fd": capture.fd}).decode()
        argv = [sys.executable, "-m", CHILD_MODULE, str(fd), orjson.dumps(sys.path).decode()]
        process = subprocess.Popen(
            [*argv, spec, *self.modules],
            pass_fds=[fd, capture.fd],
            env=isolation.child_env(os.environ),
        )
        self._own[process.pid] = None
        child_sock.close()
        reader = FrameReader(parent_sock.fileno())
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[dict[str, Any]] = loop.create_future()

        def first_frame() -> None:
            frames = reader.read()  # the child sends nothing more before it is given work
            if frames == []:
                return  # part of the frame: the rest follows
            loop.remove_reader(parent_sock.fileno())
            if frames:
                header, _ = unframe(frames[0])
            else:
                header = {"type": "error", "message": f"exit code {process.wait()}"}
            if not ready.done():
                ready.set_result(header)

        loop.add_reader(parent_sock.fileno(), first_frame)
        await asyncio.to_thread(self.placement.place, process.pid)  # it reads every process
        try:
            header = await asyncio.wait_for(ready, _START_TIMEOUT_S)
        except asyncio.TimeoutError:
            header = {"type": "error", "message": f"not ready after {_START_TIMEOUT_S:.0f}s"}
        if header["type"] != "ready":
            loop.remove_reader(parent_sock.fileno())
            Child(process, parent_sock, reader, cgroup=cgroup).kill()
            process.wait()
            self._own.pop(process.pid, None)
            self.placement.forget(process.pid)
            self._forget_cgroup(cgroup)
            parent_sock.close()
            capture.close()
            raise WorkerError(f"A child process failed to start: {header['message']}")
        child = Child(process, parent_sock, reader, cgroup=cgroup, capture=capture)
        self._own[process.pid] = child
        loop.add_reader(parent_sock.fileno(), self._readable, child)
        return child

    def _new_cgroup(self, isolation: Isolation) -> ChildCgroup | None:
        if isolation.cgroups is None:
            return None
        self._spawned += 1
        name = f"{os.getpid()}-{self._spawned}"
        try:
            return isolation.cgroups.create(name, isolation.limits.max_processes)
        except OSError as exc:
            log.warning("child %s starts without its pids cgroup: %s", name, exc)
            return None

    def _forget_cgroup(self, cgroup: ChildCgroup | None) -> None:
        if cgroup is not None and not cgroup.remove():
            self._stale_cgroups.append(cgroup)

    def _readable(self, child: Child) -> None:
        """Handle every frame that has arrived from ``child``. A plain child with tasks queued
        does not need an answer soon: it is read again only after ``_READ_PAUSE_S``, so a run of
        short tasks costs the worker one wake-up per batch of outcomes, not one per task. Frames
        wait in the socket, so a child that dies meanwhile still has its outcomes read first."""
        frames = child.reader.read()
        if frames is None:
            self._closed(child)
            return
        for data in frames:
            header, body = unframe(data)
            self.on_frame(child, header, body)
            if child.is_closed:
                return
        if not child.is_async and len(child.tasks) > 1 and not child.paused:
            loop = asyncio.get_running_loop()
            loop.remove_reader(child.sock.fileno())
            child.paused = True
            loop.call_later(_READ_PAUSE_S, self._resume, child)

    def _resume(self, child: Child) -> None:
        child.paused = False
        if not child.is_closed:
            asyncio.get_running_loop().add_reader(child.sock.fileno(), self._readable, child)

    def _closed(self, child: Child) -> None:
        if child.is_closed:
            return
        child.is_closed = True
        asyncio.get_running_loop().remove_reader(child.sock.fileno())
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(timeout=1)
        if child.process.returncode is not None:
            self._own.pop(child.pid, None)
        self.placement.forget(child.pid)
        self._forget_cgroup(child.cgroup)
        child.sock.close()
        self.on_frame(child, None, b"")
        if child.capture is not None:
            child.capture.close()  # after on_frame: it reads what a dead child's task printed

    async def replace(self, child: Child) -> None:
        """Kill ``child`` (if alive) and start a fresh one in its place."""
        child.kill()
        self._closed(child)
        self.reap_orphans()
        if child in self.children:
            self.children.remove(child)
            self.children.append(await self._spawn())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        for child in self.children:
            child.kill()
            self._closed(child)
        self.children = []
        self.reap_orphans()

    # -- supervision -----------------------------------------------------------------------

    async def _supervise(self) -> None:
        sweeps, failing = 0, False
        while True:
            await asyncio.sleep(_SWEEP_S)
            sweeps += 1
            try:
                self.reap_orphans()
                if sweeps % _WATCHDOG_EVERY == 0:
                    self._enforce_process_limit()
                    self._trim_captures()
                failing = False
            except Exception:
                if not failing:  # once per outage, not every sweep
                    log.exception("sweeping the children's processes failed; retrying")
                failing = True

    def reap_orphans(self) -> None:
        """Kill and reap processes re-parented to the worker that are not the pool's children.

        Only those pids are waited for: ``waitpid(-1)`` would steal the exit status of the
        pool's own children from their ``Popen``.
        """
        if self.isolation is not None and self.isolation.subreaper:
            for pid in proctree.direct_children():
                if pid not in self._own:
                    proctree.kill_and_reap(pid)
        for pid, child in list(self._own.items()):
            if child is not None and child.is_closed and child.process.poll() is not None:
                del self._own[pid]
        stale, self._stale_cgroups = self._stale_cgroups, []
        for cgroup in stale:
            cgroup.kill()
            self._forget_cgroup(cgroup)

    def _enforce_process_limit(self) -> None:
        """Without a kernel limit: kill a busy child whose tree passed ``max_processes``."""
        isolation = self.isolation
        if isolation is None or isolation.process_guard != "watchdog":
            return
        busy = [c for c in self.children if c.tasks and not c.is_closed]
        if not busy:
            return
        sizes = proctree.tree_sizes([child.pid for child in busy])
        limit = isolation.limits.max_processes
        for child in busy:
            count = sizes[child.pid]
            if count > limit:
                log.warning(
                    "killing child %d and its %d processes: more than task-max-processes %d",
                    child.pid,
                    count,
                    limit,
                )
                child.kill()

    def _trim_captures(self) -> None:
        """Keep the disk a loud plain task's capture file uses bounded (see CaptureFile.trim)."""
        for child in self.children:
            if child.tasks and not child.is_async and child.capture is not None:
                child.capture.trim()

    # -- slots and dispatch ----------------------------------------------------------------

    def free_slots(self) -> int:
        free = 0
        for child in self.children:
            if not child.usable:
                continue
            if not child.tasks:
                free += 1
            elif child.is_async:
                free += self.async_capacity - len(child.tasks)
        return free

    def place(self, message: TaskMessage, is_async: bool, body: bytes, depth: int = 1) -> bool:
        """Send the task to a suitable child; False when none can take it now.

        With ``depth`` > 1 a plain task may also queue behind up to ``depth - 1`` others in a
        busy plain child, which starts it as soon as the one before ends (no round trip to the
        worker in between); its deadline starts then.
        """
        child, queued = self._pick(is_async), False
        if child is None and not is_async and depth > 1:
            child = self._pick_queue(depth, len(body))
            queued = child is not None
        if child is None:
            if not is_async:
                self._drain_one_async_child()
            return False
        child.is_async = is_async
        child.dispatched += 1
        if self.max_tasks_per_child and child.dispatched >= self.max_tasks_per_child:
            child.draining = True
        now = time.monotonic()
        deadline = None if queued else _deadline(message, now)
        child.tasks[message.id] = Running(
            message, is_async, deadline, now, queued=queued, size=len(body)
        )
        child.send(_run_header(message), body)
        return True

    def _pick_queue(self, depth: int, size: int) -> Child | None:
        busy = [
            c
            for c in self.children
            if c.usable
            and not c.is_async
            and 0 < len(c.tasks) < depth
            and size + sum(r.size for r in c.tasks.values() if r.queued) <= _QUEUED_BODY_MAX
        ]
        return min(busy, key=lambda c: len(c.tasks)) if busy else None

    def _pick(self, is_async: bool) -> Child | None:
        live = [c for c in self.children if c.usable]
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
        candidates = [c for c in self.children if c.is_async and c.tasks and c.usable]
        if candidates:
            min(candidates, key=lambda c: len(c.tasks)).draining = True

    def finish(self, child: Child, task_id: str, leftovers: bool = False) -> Running | None:
        """Forget a finished task; a drained child becomes idle again (or retires).

        A child with processes of its own after a task (a task's leftovers, running or zombie)
        retires: replacing it kills them all and takes their pids out of the next task's count.
        A plain task's child reports them with its outcome (``leftovers``); an async child is
        looked at from here once it is idle.
        """
        running = child.tasks.pop(task_id, None)
        if child.tasks and not child.is_async:
            first = next(iter(child.tasks.values()))
            if first.queued:  # the child has started it
                first.queued, first.started = False, time.monotonic()
                first.deadline = _deadline(first.message, first.started)
        if (
            not child.tasks
            and child.draining
            and not (self.max_tasks_per_child and child.dispatched >= self.max_tasks_per_child)
        ):
            child.draining = False
        if leftovers or (
            child.is_async
            and not child.tasks
            and not child.is_closed
            and proctree.has_children(child.pid)
        ):
            child.has_leftovers = child.draining = True
        return running

    def recall(self, child: Child, running: Running) -> None:
        """Ask ``child`` to give back a queued task it has not started: it answers with a
        ``recalled`` frame (``ok`` false when the task had started meanwhile)."""
        running.recalling = True
        child.send({"type": "recall", "id": running.message.id})

    def recalled(self, child: Child, task_id: str) -> Running | None:
        """Forget a task its child gave back unstarted."""
        running = child.tasks.pop(task_id, None)
        if running is not None:
            child.dispatched -= 1
        return running

    def needs_retirement(self, child: Child) -> bool:
        is_spent = self.max_tasks_per_child and child.dispatched >= self.max_tasks_per_child
        return bool((is_spent or child.has_leftovers) and not child.tasks)

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


def _run_header(message: TaskMessage) -> dict[str, Any]:
    return {
        "type": "run",
        "id": message.id,
        "task": message.task,
        "kind": message.kind,
        "timeout": message.timeout,
    }


def _deadline(message: TaskMessage, start: float) -> float | None:
    return start + message.timeout if message.timeout else None
