"""Containment of hostile tasks, with real processes: hung, leaking, forking, CPU-hogging and
nosy tasks fail alone, leave no process behind, and the worker keeps serving.

Every pass condition is counted from marker files the tasks write (``tests/apps/hostile_tasks``)
and from the process table, never from logs.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest

import sje
from sje.worker import sandbox
from tests.support import ROOT, Proc, run_sje, sje_env, wait_until

HOSTILE = "tests.apps.hostile_tasks"
SQUARE = "tests.apps.sample_tasks.square"
HUNG = ("setsid_grandchild", "block_forever", "spin", "ignore_sigterm")
TIMEOUT_S = 2
GRACE_S = 3.0  # a killed task's processes are gone within its timeout plus this


def _start(worker: Callable[..., Proc], *args: str) -> tuple[Proc, str]:
    """A worker that also serves the hostile tasks, and its start-up isolation line."""
    proc = worker("--tasks", HOSTILE, *args)
    line = wait_until(lambda: proc.find("isolation:") or "", 10, "the worker's isolation line")
    return proc, line


def _marker(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / name
    return json.loads(path.read_text()) if path.exists() else None


def _await_marker(folder: Path, name: str, timeout: float) -> dict[str, Any]:
    found: dict[str, Any] = wait_until(lambda: _marker(folder, name) or {}, timeout, name)
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie is dead, only not yet reaped)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _submit(client: sje.Client, task: str, item: Any, **options: Any) -> sje.JobHandle:
    return client.submit({"task": f"{HOSTILE}.{task}", "inputs": [item], **options})


def _failure(handle: sje.JobHandle) -> str:
    with pytest.raises(sje.JobFailed) as failure:
        handle.result(timeout=60)
    return failure.value.message


def _still_serves(client: sje.Client, worker: Proc) -> None:
    assert client.submit({"task": SQUARE, "inputs": [7]}).result(timeout=60) == [49]
    assert worker.popen.poll() is None


def test_hung_tasks_are_killed_at_their_timeout_with_every_process_they_started(
    master: str, env: dict[str, str], worker: Callable[..., Proc], tmp_path: Path
) -> None:
    # no pids cgroup: the kill has only the process tree snapshot and the subreaper to go on
    env["SJE_TASK_MAX_PROCESSES"] = "0"
    w, line = _start(worker, "--concurrency", "2")
    assert "subreaper" in line and "processes unlimited" in line
    client = sje.Client(master)
    handles = {
        kind: _submit(client, kind, {"dir": str(tmp_path), "kind": kind}, timeout=TIMEOUT_S)
        for kind in HUNG
    }
    grandchild: dict[str, Any] = {}
    for kind, handle in handles.items():
        started = _await_marker(tmp_path, f"started-{kind}", 60)
        if kind == "setsid_grandchild":
            grandchild = _await_marker(tmp_path, "grandchild-setsid_grandchild", 10)
            assert grandchild["sid"] == grandchild["pid"], "it left the session"
        _assert_killed_in_time(started, kind)
        assert re.search(
            rf"TaskTimeout: task timed out after {TIMEOUT_S}\.0s and was killed", _failure(handle)
        )
    wait_until(
        lambda: not psutil.pid_exists(grandchild["pid"]),
        GRACE_S,
        "the setsid() grandchild to be killed and reaped",
    )
    _still_serves(client, w)
    assert len(psutil.Process(w.pid).children()) == 2, "the pool is whole, nothing else is left"


def _assert_killed_in_time(started: dict[str, Any], kind: str) -> None:
    left = started["time"] + TIMEOUT_S + GRACE_S - time.time()
    wait_until(
        lambda: not _alive(started["pid"]),
        max(left, 0.1),
        f"{kind} to be killed within {TIMEOUT_S}s + {GRACE_S}s",
    )


def test_a_process_a_task_leaves_running_on_its_own_is_killed_and_reaped(
    master: str, worker: Callable[..., Proc], tmp_path: Path
) -> None:
    w, _ = _start(worker, "--concurrency", "1")
    client = sje.Client(master)
    handle = _submit(client, "daemonize", {"dir": str(tmp_path)})
    assert handle.result(timeout=60) == ["daemonized"]
    daemon = _await_marker(tmp_path, "daemon", 0)
    wait_until(lambda: not psutil.pid_exists(daemon["pid"]), 5, "the orphaned daemon to be reaped")
    _still_serves(client, w)


def test_fork_bomb_is_held_to_the_process_limit_and_leaves_nothing_behind(
    master: str, env: dict[str, str], worker: Callable[..., Proc], tmp_path: Path
) -> None:
    env["SJE_TASK_MAX_PROCESSES"] = "16"
    w, line = _start(worker, "--concurrency", "1")
    client = sje.Client(master)
    bomb = {"dir": str(tmp_path), "max_forks": 2000, "give_up_after": 20}
    handle = _submit(client, "fork_bomb", bomb, timeout=20)

    def forks() -> list[int]:
        return [int(p.name.removeprefix("fork-")) for p in tmp_path.glob("fork-*")]

    if "(pids cgroup)" in line:
        [summary] = handle.result(timeout=60)
        assert summary["refused"] == 20, "the kernel refused every fork past the limit"
        assert 1 <= summary["forked"] <= 15, "16 processes at most, the task's own included"
        wait_until(lambda: len(forks()) == summary["forked"], 10, "a marker from every fork")
    else:  # the watchdog kills the whole tree once it passes the limit
        assert "(watchdog" in line
        assert re.search(r"ChildCrashed|TaskTimeout", _failure(handle))
    pids = forks()
    wait_until(
        lambda: not any(psutil.pid_exists(pid) for pid in pids),
        10,
        "every process the bomb left behind to be killed and reaped",
    )
    _still_serves(client, w)
    assert len(psutil.Process(w.pid).children()) == 1, "the pool is whole, nothing else is left"


def test_memory_leak_fails_its_task_only(
    master: str, env: dict[str, str], worker: Callable[..., Proc], tmp_path: Path
) -> None:
    env["SJE_TASK_MEMORY_MB"] = "256"
    w, line = _start(worker, "--concurrency", "1")
    assert "memory 256 MB" in line
    client = sje.Client(master)
    message = _failure(_submit(client, "leak_memory", {"cap_mb": 2048}))
    assert re.search(r"MemoryError|ChildCrashed", message), message
    if "MemoryError" in message:
        assert "task-memory-mb" in message
    _still_serves(client, w)


def test_cpu_hog_is_stopped_by_the_cpu_limit_which_counts_per_task(
    master: str, env: dict[str, str], worker: Callable[..., Proc]
) -> None:
    env["SJE_TASK_CPU_SECONDS"] = "1"
    w, line = _start(worker, "--concurrency", "1")
    assert "cpu 1 s per task" in line
    client = sje.Client(master)
    # three tasks of about 0.5 CPU seconds each: over the limit together, not one by one
    for _ in range(3):
        handle = _submit(client, "burn_cpu", {"seconds": 0.5})
        assert handle.result(timeout=60) == ["the CPU limit did not stop me"]
    begun = time.monotonic()
    message = _failure(_submit(client, "burn_cpu", {"seconds": 60}))
    assert time.monotonic() - begun < 30
    assert re.search(
        r"ChildCrashed: the child process running this task died \(signal (24|9)\)", message
    ), message
    if "signal 24" in message:
        assert "task-cpu-seconds" in message
    _still_serves(client, w)


def test_defaults_scrub_the_environment_and_apply_the_limits(
    master: str, env: dict[str, str], worker: Callable[..., Proc]
) -> None:
    assert {"SJE_BROKER_URL", "SJE_TOKEN", "SJE_SECRET"} <= set(env)
    env["SJE_TASK_ENV"] = "CONTAINMENT_ALLOWED"
    env["CONTAINMENT_ALLOWED"] = "yes"
    env["CONTAINMENT_SECRET"] = "no"
    w, line = _start(worker, "--concurrency", "1")
    for part in ("own process group", "files 4096", "nice +5", "env scrubbed", "network allowed"):
        assert part in line
    client = sje.Client(master)
    [seen] = _submit(client, "environment", None).result(timeout=60)
    assert not [name for name in seen if name.startswith("SJE_")]
    assert seen["CONTAINMENT_ALLOWED"] == "yes"
    assert "CONTAINMENT_SECRET" not in seen
    allowed = set(sandbox.BASE_ENV) | {"CONTAINMENT_ALLOWED"}
    assert {n for n in seen if not n.startswith("LC_")} <= allowed
    [me] = _submit(client, "whoami", None).result(timeout=60)
    assert me["nice"] == psutil.Process(w.pid).nice() + 5
    assert me["max_files"] == [4096, 4096]
    assert me["pgid"] == me["pid"], "each child leads its own process group"


def test_network_none_cuts_tasks_off_or_the_worker_refuses_to_start(
    master: str, redis_url: str, env: dict[str, str], worker: Callable[..., Proc]
) -> None:
    target = {"host": "127.0.0.1", "port": urlsplit(redis_url).port}
    problem = sandbox.unshare_problem(sandbox.network_flags("none", os.geteuid()))
    env["SJE_TASK_NETWORK"] = "none"
    if problem is not None:
        done = run_sje("worker", "--tasks", HOSTILE, env=env)
        assert done.returncode == 9
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert "task-network is none but this machine cannot give tasks their own" in lines[0]
        return
    _, line = _start(worker, "--concurrency", "1", "--queues", "offline")
    assert "no network" in line
    env["SJE_TASK_NETWORK"] = "allow"
    worker("--tasks", HOSTILE, "--concurrency", "1", "--queues", "online")
    client = sje.Client(master)
    [offline] = _submit(client, "connect", target, queue="offline").result(timeout=60)
    [online] = _submit(client, "connect", target, queue="online").result(timeout=60)
    assert online == {"connected": True}, "the same task reaches Redis with network allowed"
    assert offline["connected"] is False
    assert isinstance(offline["errno"], int), offline


def _can_run_as(user: pwd.struct_passwd) -> bool:
    """Whether that user can start Python here and import the task modules."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", f"import sje.worker.child, {HOSTILE}"],
            user=user.pw_uid,
            group=user.pw_gid,
            extra_groups=[],
            cwd=ROOT,
            env=sje_env(),
            capture_output=True,
            timeout=60,
        )
    except PermissionError:
        return False
    return done.returncode == 0


def test_task_user_runs_tasks_unprivileged_or_the_worker_refuses_clearly(
    master: str, env: dict[str, str], worker: Callable[..., Proc]
) -> None:
    assert os.geteuid() == 0, "these tests run as root"
    nobody = pwd.getpwnam("nobody")
    env["SJE_TASK_USER"] = "nobody"
    if not _can_run_as(nobody):
        done = run_sje("worker", "--tasks", HOSTILE, env=env)
        assert done.returncode == 9
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert "task-user nobody cannot read" in lines[0]
        return
    _, line = _start(worker, "--concurrency", "1")
    assert "uid nobody" in line
    [me] = _submit(sje.Client(master), "whoami", None).result(timeout=60)
    assert (me["uid"], me["gid"], me["home"]) == (nobody.pw_uid, nobody.pw_gid, nobody.pw_dir)
