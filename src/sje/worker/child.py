"""The child process that runs tasks. Never imported by the worker's own loop at run time.

Frames on its socket (``sje.worker.wire``) are ``header JSON + b"\\n" + body``. Parent to
child: ``run`` (body: the task's JSON input), ``cancel``, ``recall``. Child to parent:
``ready`` / ``error`` at start, ``done`` (body: the JSON result when ``ok``; ``log``: what the
attempt printed and logged, when it did, see ``sje.worker.capture``), ``recalled``.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import queue
import resource
import signal
import socket
import sys
import threading
from typing import TYPE_CHECKING, Any

import orjson

from sje.errors import SJEError
from sje.tasks import Task, load_catalog
from sje.worker.capture import FdCapture, Log, install_task_output, keep_one_log_handler
from sje.worker.task_call import Outcome, call_args, encode_result, error_info
from sje.worker.wire import FrameReader, frame, send, unframe

if TYPE_CHECKING:
    from sje.worker.child_async import AsyncLane

_PR_SET_PDEATHSIG = 1
_CPU_GRACE_S = 2  # between SIGXCPU (soft limit) and SIGKILL (hard limit)
#: spec key -> (resource, bytes per unit, setting) for the limits set once at start-up
_START_LIMITS = (
    ("memory_mb", resource.RLIMIT_AS, 1024 * 1024, "task-memory-mb"),
    ("max_files", resource.RLIMIT_NOFILE, 1, "task-max-files"),
    ("nproc", resource.RLIMIT_NPROC, 1, "task-max-processes"),
)


def _left_processes() -> bool:
    """Whether the task just run left a process of its own behind, running or a zombie (one
    zombie is reaped by asking): the worker then replaces this child, killing them all."""
    try:
        os.waitpid(-1, os.WNOHANG)  # (0, 0): one is running; else a zombie, reaped now
    except ChildProcessError:
        return False  # no child process at all
    return True


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when the worker process dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _join_cgroup(spec: dict[str, Any]) -> str | None:
    if spec.get("cgroup"):
        try:
            with open(os.path.join(spec["cgroup"], "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        except OSError as exc:
            return f"cannot join the pids cgroup {spec['cgroup']}: {exc.strerror}"
    return None


def _set_limits(spec: dict[str, Any]) -> str | None:
    for key, which, unit, setting in _START_LIMITS:
        value = int(spec.get(key) or 0)
        if not value:
            continue
        _, hard = resource.getrlimit(which)
        limit = value * unit if hard == resource.RLIM_INFINITY else min(value * unit, hard)
        try:
            resource.setrlimit(which, (limit, limit))
        except (ValueError, OSError) as exc:
            return f"cannot apply {setting} {value}: {exc}; lower it or set it to 0"
    if spec.get("nice"):
        os.nice(int(spec["nice"]))
    return None


def _leave_network(spec: dict[str, Any]) -> str | None:
    flags = int(spec.get("unshare") or 0)
    if flags:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(flags) != 0:
            reason = os.strerror(ctypes.get_errno())
            return f"task-network is none but unshare() failed here: {reason}"
    return None


def _switch_user(spec: dict[str, Any]) -> str | None:
    if spec.get("uid") is None:
        return None
    name = spec["user"]
    needed = [p for p in (os.path.dirname(os.__file__), *sys.path) if p and os.path.isdir(p)]
    try:
        os.setgroups([])
        os.setgid(int(spec["gid"]))
        os.setuid(int(spec["uid"]))
    except OSError as exc:
        return f"cannot switch to task-user {name}: {exc.strerror}; unset task-user"
    _die_with_parent()  # a change of credentials clears the parent-death signal
    for path in needed:
        if not os.access(path, os.R_OK | os.X_OK):
            return (
                f"task-user {name} cannot read {path}; make Python, its packages and the task "
                "modules readable by that user, or unset task-user"
            )
    return None


def enter_sandbox(spec: dict[str, Any]) -> str | None:
    """Apply the worker's isolation to this process before any task code is imported.

    Order matters: join the cgroup, set limits and leave the network while still privileged,
    then switch user. Returns a one-line problem, or None.
    """
    for step in (_join_cgroup, _set_limits, _leave_network, _switch_user):
        problem = step(spec)
        if problem is not None:
            return problem
    return None


def arm_cpu_limit(seconds: int) -> None:
    """Allow the next task ``seconds`` of CPU time from now: SIGXCPU then SIGKILL end it.

    RLIMIT_CPU counts the process's whole life, so the limit moves with each task. Only a
    privileged child can raise its hard limit again later; others keep the hard limit and
    rely on SIGXCPU's default action.
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = math.ceil(usage.ru_utime + usage.ru_stime) + seconds
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if os.geteuid() == 0:
        hard = soft + _CPU_GRACE_S
    elif hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


class ChildRunner:
    """Executes ``run`` frames against the catalog and answers with ``done`` frames.

    The main thread runs sync tasks itself (so task code may call ``asyncio.run``); a reader
    thread takes frames in; async tasks go to an ``AsyncLane``, started on first use.
    """

    def __init__(
        self,
        sock: socket.socket,
        catalog: dict[str, Task[Any]],
        cpu_seconds: int = 0,
        capture: FdCapture | None = None,
    ) -> None:
        self.sock = sock
        self.catalog = catalog
        self.cpu_seconds = cpu_seconds
        self.capture = capture
        self._send_lock = threading.Lock()
        self._lane: AsyncLane | None = None  # started by the first async task
        # run frames read and not started yet; ids recalled meanwhile are skipped
        self._inbox: queue.SimpleQueue[tuple[dict[str, Any] | None, bytes]] = queue.SimpleQueue()
        self._inbox_lock = threading.Lock()
        self._pending: set[str] = set()
        self._recalled: set[str] = set()

    def send(self, header: dict[str, Any], body: bytes = b"") -> None:
        with self._send_lock:
            send(self.sock, [frame(header, body)])

    def serve(self) -> None:
        """Run what the reader thread queues, in order, until the worker's end closes."""
        threading.Thread(target=self._read, name="sje-reader", daemon=True).start()
        while True:
            header, body = self._inbox.get()
            if header is None:
                return
            with self._inbox_lock:
                if header["id"] in self._recalled:
                    self._recalled.discard(header["id"])
                    continue
                self._pending.discard(header["id"])
            if self.cpu_seconds and not (self._lane and self._lane.running):
                arm_cpu_limit(self.cpu_seconds)
            task = self.catalog[header["task"]]
            if task.is_async:
                self._async_lane().start(task, header, body)
            else:
                self.run_sync(task, header, body)

    def _read(self) -> None:
        """Frames from the worker, read while a task runs: ``run`` frames queue for the main
        thread; ``cancel`` (an async task) and ``recall`` (a queued task not started yet,
        answered with ``recalled``) take effect at once. ``(None, b"")`` ends the inbox."""
        reader = FrameReader(self.sock.fileno())
        while True:
            frames = reader.read()
            if frames is None:
                self._inbox.put((None, b""))
                return
            for data in frames:
                self._take(*unframe(data))

    def _take(self, header: dict[str, Any], body: bytes) -> None:
        kind = header["type"]
        if kind == "run":
            with self._inbox_lock:
                self._pending.add(header["id"])
            self._inbox.put((header, body))
        elif kind == "cancel":
            if self._lane is not None:
                self._lane.cancel(header["id"])
        elif kind == "recall":
            with self._inbox_lock:
                found = header["id"] in self._pending
                if found:
                    self._pending.discard(header["id"])
                    self._recalled.add(header["id"])
            with contextlib.suppress(OSError):
                self.send({"type": "recalled", "id": header["id"], "ok": found})

    def _async_lane(self) -> AsyncLane:
        if self._lane is None:
            # imported here: a child that runs only plain tasks never loads asyncio (~6 MB)
            from sje.worker.child_async import AsyncLane

            self._lane = AsyncLane(self._done)
        return self._lane

    def _done(self, header: dict[str, Any], outcome: Outcome, log: Log | None) -> None:
        done, body = outcome
        reply = {"type": "done", "id": header["id"], **done}
        if log is not None:
            reply["log"] = log
        self.send(reply, body)

    def run_sync(self, task: Task[Any], header: dict[str, Any], body: bytes) -> None:
        if self.capture is None:
            outcome, log = self._call_sync(task, header, body), None
        else:
            self.capture.start()
            try:
                outcome = self._call_sync(task, header, body)
            finally:
                log = self.capture.stop()
        if _left_processes():
            outcome = ({**outcome[0], "leftovers": True}, outcome[1])
        self._done(header, outcome, log)

    def _call_sync(self, task: Task[Any], header: dict[str, Any], body: bytes) -> Outcome:
        try:
            args, kwargs = call_args(header["kind"], body)
            if header["kind"] == "chunk":
                value: Any = [task.fn(item) for item in args[0]]
            else:
                value = task.fn(*args, **kwargs)
            return {"ok": True}, encode_result(task, value)
        except Exception as exc:
            return {"ok": False, "error": error_info(exc)}, b""


def _load(modules: list[str], spec: dict[str, Any]) -> dict[str, Task[Any]] | str:
    """The catalog, isolated per ``spec``; or a one-line reason this child cannot serve."""
    problem = enter_sandbox(spec)
    if problem is not None:
        return problem
    try:
        return load_catalog(modules)
    except SJEError as exc:
        return exc.message
    except MemoryError:
        return (
            f"importing {', '.join(modules)} ran out of memory under task-memory-mb "
            f"{spec.get('memory_mb')}; raise task-memory-mb"
        )


def child_main(sock: socket.socket, modules: list[str], spec: dict[str, Any] | None = None) -> None:
    """Serve tasks on ``sock``: own process group, dies with its worker, isolated per ``spec``;
    plain tasks' output goes to the capture file ``spec["log_fd"]`` when given."""
    spec = spec or {}
    _die_with_parent()
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    capture = FdCapture(int(spec["log_fd"])) if spec.get("log_fd") is not None else None
    handler = install_task_output(capture)  # before task code, so its own logging setup wins
    catalog = _load(modules, spec)
    if isinstance(catalog, str):
        with contextlib.suppress(OSError):  # the worker may have given up on us already
            send(sock, [frame({"type": "error", "message": catalog})])
        return
    keep_one_log_handler(handler)
    send(sock, [frame({"type": "ready", "pid": os.getpid()})])
    ChildRunner(sock, catalog, int(spec.get("cpu_seconds") or 0), capture).serve()


def main(argv: list[str]) -> None:
    """``python -m sje.worker.child FD SYS_PATH_JSON SANDBOX_JSON MODULE...``, started by the
    worker's pool; SANDBOX_JSON is ``Isolation.child_spec``."""
    sys.path[:] = orjson.loads(argv[2])
    child_main(socket.socket(fileno=int(argv[1])), argv[4:], orjson.loads(argv[3]))


if __name__ == "__main__":
    main(sys.argv)
