"""Real master and worker processes on the SQLite broker: one file in the test's ``tmp_path``
that every process opens (``sqlite:////abs/path``), no Redis involved."""

from __future__ import annotations

import signal
from pathlib import Path

import psutil
import pytest

from sje.events import TASK_QUEUED
from tests.support import Proc, api_client, sje_env, start_master, start_worker, wait_until

WAIT = "tests.apps.sample_tasks.started_then_wait"


@pytest.fixture
def sqlite_env(tmp_path: Path) -> dict[str, str]:
    """Environment of the test's processes: its SQLite file, token and secret, short timers."""
    return sje_env(
        SJE_BROKER_URL=f"sqlite:///{tmp_path}/sje.db",
        SJE_LEASE_TIMEOUT="3",
        SJE_HEARTBEAT_INTERVAL="0.5",
        SJE_TICK_INTERVAL="0.2",
        SJE_SHUTDOWN_GRACE="10",
        SJE_TOKEN="token-sqlite-e2e",
        SJE_SECRET="secret-sqlite-e2e-0123456789",
    )


def _waiters(tmp_path: Path, n: int) -> list[dict[str, object]]:
    """Inputs for ``started_then_wait``: each task runs until the test creates ``release``."""
    started, release = tmp_path / "started", tmp_path / "release"
    return [{"value": i, "started": str(started), "release": str(release)} for i in range(n)]


def _started(tmp_path: Path) -> int:
    folder = tmp_path / "started"
    return len(list(folder.iterdir())) if folder.exists() else 0


def test_master_and_worker_on_a_sqlite_file_run_a_job_end_to_end(
    sqlite_env: dict[str, str], procs: list[Proc], tmp_path: Path
) -> None:
    url = sqlite_env.pop("SJE_BROKER_URL")  # the master gets it as a flag, the worker by env
    master, master_url = start_master(sqlite_env, "--broker-url", url)
    procs.append(master)
    procs.append(start_worker({**sqlite_env, "SJE_BROKER_URL": url}, "--concurrency", "2"))
    client = api_client(sqlite_env, master_url)
    handle = client.submit({"task": "tests.apps.sample_tasks.square", "inputs": [1, 2, 3, 4]})
    assert handle.result(timeout=60) == [1, 4, 9, 16]
    status = handle.status()
    assert status["state"] == "succeeded"
    assert (tmp_path / "sje.db").is_file()
    assert not master.find("WARNING"), master.output()


def test_sigkilled_worker_on_sqlite_loses_nothing_and_the_job_completes(
    sqlite_env: dict[str, str], procs: list[Proc], tmp_path: Path
) -> None:
    master, master_url = start_master(sqlite_env)
    procs.append(master)
    victim = start_worker(sqlite_env, "--concurrency", "2", "--name", "victim")
    procs.append(victim)
    children = wait_until(lambda: psutil.Process(victim.pid).children(), 10, "worker children")
    handle = api_client(sqlite_env, master_url).submit(
        {"task": WAIT, "inputs": _waiters(tmp_path, 6)}
    )
    wait_until(lambda: _started(tmp_path) >= 1, 30, "a task to start on the victim")
    victim.signal(signal.SIGKILL)
    victim.wait(10)
    wait_until(
        lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children),
        10,
        "the victim's children to die",
    )
    (tmp_path / "release").touch()
    procs.append(start_worker(sqlite_env, "--concurrency", "2", "--name", "rescuer"))
    assert handle.result(timeout=60) == list(range(6))
    kinds = {
        (e["type"], e.get("reason")) for e in handle.events(timeout=30) if e["type"] == TASK_QUEUED
    }
    assert (TASK_QUEUED, "redelivered") in kinds
