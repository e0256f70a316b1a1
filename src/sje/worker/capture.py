"""What a task prints and logs, captured per attempt and bounded to ``LOG_LIMIT`` bytes.

Plain tasks run one at a time in a child, so the child points its file descriptors 1 and 2 at
a capture file for the length of the task (``FdCapture``): ``print``, ``sys.stderr``, logging,
C code and subprocesses all land there, in the order they were written. The worker creates
that file (``CaptureFile``) and keeps a descriptor of it, so when it kills a child (timeout,
crash, memory) it still reads what the attempt printed up to the kill. The file is unlinked from
the start (nothing is left on disk if the worker dies), and while a task runs the worker frees
its middle (``trim``), so a task printing without end costs disk only for what is kept.

Async tasks share one child and its descriptors, so they are told apart one level up: the
child's ``sys.stdout``/``sys.stderr`` are ``TaskOutput`` proxies that write to the current
task's ``TaskBuffer`` (a context variable each asyncio task sets for itself) and otherwise to
the real stream. What async tasks write below Python's streams (C code, subprocesses,
``sys.stdout.buffer``) or from threads that do not copy the task's context is not captured.

A log is ``{"text": str, "truncated": bool}``: the text decoded as UTF-8 with replacement
characters for invalid bytes; over ``LOG_LIMIT`` it keeps the first and the last
``LOG_LIMIT // 2`` bytes with a ``… N bytes dropped …`` line between.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import errno
import fcntl
import io
import logging
import os
import sys
import tempfile
from typing import Any, TextIO

LOG_LIMIT = 64 * 1024
_HALF = LOG_LIMIT // 2
_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
#: what the worker's sweeper leaves of a growing capture file: the head, and the tail region
_TRIM_FROM = 1024 * 1024
_PAGE = 4096
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02

Log = dict[str, Any]


def _complete_head(data: bytes) -> bytes:
    """``data`` without a UTF-8 sequence cut short at its end."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: look further back for the lead byte
        width = 1 if byte < 0x80 else 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
        return data[:-back] if width > back else data
    return data


def _complete_tail(data: bytes) -> bytes:
    """``data`` without the continuation bytes of a sequence cut at its start."""
    skip = 0
    while skip < min(3, len(data)) and data[skip] & 0xC0 == 0x80:
        skip += 1
    return data[skip:]


def bounded(head: bytes, tail: bytes, total: int) -> Log | None:
    """The log of ``total`` bytes written, of which ``head`` are the first and ``tail`` the
    last (all of them when ``len(head) + len(tail) == total``); None when nothing was."""
    if total <= 0:
        return None
    if len(head) + len(tail) >= total:
        return {"text": (head + tail).decode("utf-8", "replace"), "truncated": False}
    head, tail = _complete_head(head), _complete_tail(tail)
    dropped = total - len(head) - len(tail)
    text = head.decode("utf-8", "replace")
    if text and not text.endswith("\n"):
        text += "\n"
    text += f"… {dropped} bytes dropped …\n" + tail.decode("utf-8", "replace")
    return {"text": text, "truncated": True}


def _size(fd: int) -> int:
    # lseek, not fstat: a fifth of the cost, which counts after every task. Moving the offset
    # is harmless: the file is in append mode and read with pread.
    return os.lseek(fd, 0, os.SEEK_END)


def read_log(fd: int) -> Log | None:
    """The log held by the capture file ``fd`` (reads at most ``LOG_LIMIT`` bytes of it)."""
    size = _size(fd)
    if size <= LOG_LIMIT:
        data = os.pread(fd, size, 0) if size else b""
        return bounded(data, b"", len(data))
    return bounded(os.pread(fd, _HALF, 0), os.pread(fd, _HALF, size - _HALF), size)


# -- plain tasks: descriptors 1 and 2 -----------------------------------------------------------


def _anonymous_file() -> int:
    """A temporary file with no name (nothing is left behind, whatever happens to the worker),
    in append mode: writes of the task's threads and subprocesses never overwrite each other."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
    try:
        return os.open(tempfile.gettempdir(), flags | os.O_TMPFILE, 0o600)
    except OSError:  # no O_TMPFILE on this file system: create, then unlink at once
        fd, path = tempfile.mkstemp(prefix="sje-task-log-")
        os.unlink(path)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
        return fd


class CaptureFile:
    """The worker's side of one child's capture file: created before the child starts (its
    descriptor is passed to the child), read after a kill, trimmed while it grows."""

    def __init__(self) -> None:
        self.fd = _anonymous_file()
        self._can_trim = True

    def read(self) -> Log | None:
        """What the child's current (or killed) plain task has written so far."""
        try:
            return read_log(self.fd)
        except OSError:
            return None

    def trim(self) -> None:
        """Free the disk blocks of the part of a large file no log will show (the middle);
        the file keeps its size and reads of that part give zeros. No-op where the file
        system cannot punch holes."""
        if not self._can_trim:
            return
        try:
            size = _size(self.fd)
        except OSError:
            return
        if size < _TRIM_FROM:
            return
        start = -(-_HALF // _PAGE) * _PAGE
        end = (size - LOG_LIMIT) // _PAGE * _PAGE  # a margin: the tail keeps growing
        if end - start < _TRIM_FROM // 2:
            return
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        flags = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
        if libc.fallocate(self.fd, flags, start, end - start) != 0:
            self._can_trim = ctypes.get_errno() not in (errno.EOPNOTSUPP, errno.ENOSYS)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _dup_or_null(fd: int) -> int:
    """A private copy of ``fd``; /dev/null when the worker was started with it closed."""
    try:
        return os.dup(fd)
    except OSError:
        return os.open(os.devnull, os.O_WRONLY)


class FdCapture:
    """The child's side: points descriptors 1 and 2 at the capture file around each plain
    task. Only for the main thread, one task at a time."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_inheritable(fd, False)  # subprocesses get it as 1 and 2 only
        self._saved = (_dup_or_null(1), _dup_or_null(2))
        self._libc = ctypes.CDLL(None)
        self.is_active = False

    def start(self) -> None:
        if _size(self.fd):  # what a previous task's leftover processes wrote is not ours
            os.ftruncate(self.fd, 0)
        os.dup2(self.fd, 1)
        os.dup2(self.fd, 2)
        self.is_active = True

    def stop(self) -> Log | None:
        """Put descriptors 1 and 2 back; the task's log. The file is emptied once read, so a
        kill between two tasks finds nothing to blame on the next one."""
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            pass  # the task closed or replaced them: nothing of theirs is buffered here
        self._libc.fflush(None)  # C stdio buffers (printf) into the file, not after it
        self.is_active = False
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        log = read_log(self.fd)
        if log is not None:
            os.ftruncate(self.fd, 0)
        return log


# -- async tasks: a buffer per asyncio task --------------------------------------------------


class TaskBuffer:
    """An async task's output: the first ``LOG_LIMIT // 2`` bytes and a bounded tail."""

    def __init__(self) -> None:
        self._head = bytearray()
        self._tail = bytearray()
        self._total = 0

    def write(self, text: str) -> None:
        data = text.encode("utf-8", "replace")
        self._total += len(data)
        room = _HALF - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if data:
            self._tail += data
            if len(self._tail) > 4 * _HALF:  # amortised: trim now and then, not every write
                del self._tail[:-_HALF]

    def log(self) -> Log | None:
        tail = self._tail if self._total <= LOG_LIMIT else self._tail[-_HALF:]
        return bounded(bytes(self._head), bytes(tail), self._total)


_current: contextvars.ContextVar[TaskBuffer | None] = contextvars.ContextVar(
    "sje_task_output", default=None
)


def capture_task_output() -> TaskBuffer:
    """Send what the calling asyncio task (and tasks it starts) writes to a new buffer."""
    buffer = TaskBuffer()
    _current.set(buffer)
    return buffer


class TaskOutput:
    """Stands in for ``sys.stdout`` or ``sys.stderr`` in a child: text written while an async
    task's buffer is current goes to that buffer, anything else to the real stream."""

    def __init__(self, real: TextIO) -> None:
        self._real = real

    def write(self, text: str) -> int:
        buffer = _current.get()
        if buffer is None:
            return self._real.write(text)
        buffer.write(text)
        return len(text)

    def writelines(self, lines: list[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._real.flush()

    def __getattr__(self, name: str) -> Any:
        # task code may use any attribute of a text stream (encoding, isatty, buffer, ...)
        return getattr(self._real, name)


class _TaskLevels(logging.Filter):
    """INFO and above while a task runs (it is captured); outside tasks, as Python shows
    without any logging set up, WARNING and above (to the worker's stderr)."""

    def __init__(self, capture: FdCapture | None) -> None:
        super().__init__()
        self.capture = capture

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING or _current.get() is not None:
            return True
        return self.capture is not None and self.capture.is_active


def install_task_output(capture: FdCapture | None = None) -> logging.Handler:
    """In a child before it imports task code: line-buffered real streams (so a kill loses no
    finished line, and print and stderr keep their order), ``TaskOutput`` proxies in
    ``sys.stdout``/``sys.stderr``, and a root handler writing ``LEVEL logger: message`` lines
    to ``sys.stderr``: INFO and above during tasks (``capture`` says when a plain one runs).
    Returns that handler."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            with contextlib.suppress(ValueError, OSError):
                stream.reconfigure(line_buffering=True)
    # None when the worker was started without them; plain tasks' output is still captured
    if sys.stdout is not None:
        sys.stdout = TaskOutput(sys.stdout)
    if sys.stderr is not None:
        sys.stderr = TaskOutput(sys.stderr)
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.INFO)
    handler.addFilter(_TaskLevels(capture))
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


def keep_one_log_handler(ours: logging.Handler) -> None:
    """After the task modules were imported: when they set up root handlers of their own,
    drop ours, so no line is logged twice (theirs, made after the proxies, are captured)."""
    root = logging.getLogger()
    if any(h is not ours for h in root.handlers):
        root.removeHandler(ours)
