"""The capture of task output: bounds, UTF-8 cuts, async separation, descriptors and logging."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import textwrap

from sje.worker.capture import (
    LOG_LIMIT,
    CaptureFile,
    TaskBuffer,
    TaskOutput,
    bounded,
    capture_task_output,
    read_log,
)

HALF = LOG_LIMIT // 2


def test_nothing_written_is_no_log_and_output_within_the_bound_is_kept_whole() -> None:
    assert bounded(b"", b"", 0) is None
    whole = b"line\n" * (LOG_LIMIT // 5)
    assert bounded(whole, b"", len(whole)) == {"text": whole.decode(), "truncated": False}


def test_output_over_the_bound_keeps_head_and_tail_with_a_marker_line_between() -> None:
    data = b"".join(b"%06d\n" % i for i in range(30_000))  # 210,000 bytes
    log = bounded(data[:HALF], data[-HALF:], len(data))
    dropped = len(data) - LOG_LIMIT
    assert log == {
        "text": f"{data[:HALF].decode()}\n… {dropped} bytes dropped …\n{data[-HALF:].decode()}",
        "truncated": True,
    }


def test_a_cut_never_splits_a_utf8_character_and_invalid_bytes_are_replaced() -> None:
    data = ("a" + "é" * 50_000 + "€" * 30_000).encode()  # cuts fall inside both characters
    log = bounded(data[:HALF], data[-HALF:], len(data))
    assert log is not None
    head, marker, tail = log["text"].split("\n")
    assert head == "a" + "é" * ((HALF - 1) // 2)
    assert tail == "€" * (HALF // 3)
    kept = len(head.encode()) + len(tail.encode())
    assert marker == f"… {len(data) - kept} bytes dropped …"
    assert bounded(b"\xffok", b"", 3) == {"text": "\ufffdok", "truncated": False}


def test_an_async_task_buffer_keeps_what_the_file_capture_keeps() -> None:
    chunks = [f"chunk {i} ".encode() * (i % 50) + b"\n" for i in range(3000)]
    buffer = TaskBuffer()
    for chunk in chunks:
        buffer.write(chunk.decode())
    capture = CaptureFile()
    try:
        os.write(capture.fd, b"".join(chunks))
        log = buffer.log()
        assert log == capture.read() == read_log(capture.fd)
        assert log is not None
        assert log["truncated"]
    finally:
        capture.close()


def test_each_async_task_writes_to_its_own_buffer_and_anything_else_to_the_real_stream() -> None:
    real = io.StringIO()
    proxy = TaskOutput(real)

    async def task(
        name: str, other: str, turns: list[str], baton: dict[str, asyncio.Event]
    ) -> TaskBuffer:
        buffer = capture_task_output()
        for step in range(3):
            await baton[name].wait()  # take turns: a, b, a, b, ...
            baton[name].clear()
            turns.append(name)
            proxy.write(f"{name} {step}\n")
            baton[other].set()
        return buffer

    async def scenario() -> tuple[list[TaskBuffer], list[str]]:
        turns: list[str] = []
        baton = {"a": asyncio.Event(), "b": asyncio.Event()}
        baton["a"].set()
        proxy.write("outside\n")
        buffers = await asyncio.gather(task("a", "b", turns, baton), task("b", "a", turns, baton))
        proxy.write("after\n")
        return list(buffers), turns

    (a, b), turns = asyncio.run(scenario())
    assert turns == ["a", "b", "a", "b", "a", "b"]  # they really interleaved
    assert a.log() == {"text": "a 0\na 1\na 2\n", "truncated": False}
    assert b.log() == {"text": "b 0\nb 1\nb 2\n", "truncated": False}
    assert real.getvalue() == "outside\nafter\n"
    assert proxy.getvalue() == real.getvalue()  # any other attribute is the real stream's


def test_trimming_a_large_capture_file_frees_its_middle_and_keeps_its_log() -> None:
    capture = CaptureFile()
    try:
        block = b"".join(b"%07d\n" % i for i in range(1024 * 1024 // 8))  # 1 MiB
        for _ in range(8):
            os.write(capture.fd, block)
        before = capture.read()
        used = os.fstat(capture.fd).st_blocks
        capture.trim()
        assert os.fstat(capture.fd).st_blocks < used // 4
        assert os.fstat(capture.fd).st_size == 8 * len(block)
        assert capture.read() == before
    finally:
        capture.close()


def _run_child_code(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_plain_task_capture_takes_descriptor_output_then_gives_the_descriptors_back() -> None:
    done = _run_child_code(
        """
        import ctypes, json, os, subprocess, sys
        from sje.worker.capture import CaptureFile, FdCapture, install_task_output
        install_task_output()
        capture = FdCapture(CaptureFile().fd)
        for name in ("one", "two"):
            capture.start()
            print(f"{name}: print")
            subprocess.run(["echo", f"{name}: echo"], check=True)
            os.write(2, f"{name}: fd 2\\n".encode())
            ctypes.CDLL(None).printf(f"{name}: printf\\n".encode())
            log = capture.stop()
            print(json.dumps(log))
        sys.stderr.write("stderr is back\\n")
        """
    )
    logs = [json.loads(line) for line in done.stdout.splitlines()]
    assert logs == [
        {
            "text": f"{name}: print\n{name}: echo\n{name}: fd 2\n{name}: printf\n",
            "truncated": False,
        }
        for name in ("one", "two")
    ]
    assert done.stderr == "stderr is back\n"


def test_task_logging_is_captured_once_whoever_configures_it() -> None:
    done = _run_child_code(
        """
        import json, logging, sys
        from sje.worker.capture import (
            CaptureFile, FdCapture, install_task_output, keep_one_log_handler
        )
        capture = FdCapture(CaptureFile().fd)
        ours = install_task_output(capture)
        logging.basicConfig(level=logging.DEBUG)  # a task module's usual setup: a no-op now
        keep_one_log_handler(ours)
        app = logging.getLogger("app")
        app.info("outside a task: not shown")
        app.warning("outside a task: shown as Python would")
        capture.start()
        app.info("first")
        app.debug("not shown")
        print(json.dumps(capture.stop()))
        mine = logging.StreamHandler(sys.stderr)  # a module with a root handler of its own
        mine.setFormatter(logging.Formatter("mine %(message)s"))
        logging.getLogger().addHandler(mine)
        keep_one_log_handler(ours)
        capture.start()
        app.warning("second")
        print(json.dumps(capture.stop()))
        """
    )
    assert [json.loads(line)["text"] for line in done.stdout.splitlines()] == [
        "INFO app: first\n",
        "mine second\n",
    ]
    assert done.stderr == "WARNING app: outside a task: shown as Python would\n"
