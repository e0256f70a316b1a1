"""SJE in bench/compare.py: its tasks (``sje worker --tasks bench.peers.sys_sje``) and adapter.

A real master (``sje master --port 0``) and workers (``sje worker --concurrency 1`` x 2: two
worker processes, each running one task at a time in its child process), all on the benchmark's
private Redis under the key prefix ``bench-sje``, with a 5 s ``lease-timeout`` (default 30 s) so
that the recovery scenario does not wait half a minute for a killed worker's task.
"""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path
from typing import Any, ClassVar

import psutil
from bench.common import Service
from bench.peers import work
from bench.peers.base import Adapter as AdapterBase

import sje

LEASE_TIMEOUT = "5s"
ASYNC_CONCURRENCY = 100  # SJE's default: async tasks at once per child


@sje.task
def noop(i: int) -> int:
    return work.noop(i)


@sje.task
def cpu(arg: list[int]) -> int:
    return work.cpu(arg)


@sje.task
async def io(i: int) -> int:
    return await work.aio(i)


@sje.task
def warm(i: int) -> int:
    return work.warm(i)


TASKS: dict[str, sje.Task[Any]] = {"noop": noop, "cpu": cpu, "io": io, "warm": warm}


class Adapter(AdapterBase):
    name = "sje"
    dists = ("sparkjobexecutor", "redis")
    concurrency: ClassVar[dict[str, int]] = {
        "std": 2,
        "rt": 2,
        "io": 2 * ASYNC_CONCURRENCY,
        "rec": 2,
    }
    batch_api = "one job of N inputs (one HTTP call)"
    redelivery_s = 6.0  # lease-timeout + a scheduler tick

    def setup(self) -> None:
        self.token = f"bench-{secrets.token_hex(8)}"
        self.sje_env = self.h.env(
            SJE_BROKER_URL=self.h.plan.redis_url,
            SJE_KEY_PREFIX="bench-sje",
            SJE_TOKEN=self.token,
            SJE_LEASE_TIMEOUT=LEASE_TIMEOUT,
            SJE_TASK_ENV="BENCH_REDIS_URL",
            SJE_ASYNC_CONCURRENCY=str(ASYNC_CONCURRENCY),
            # the master's local token record stays with the run's logs, not in the user's
            SJE_STATE_DIR=str(Path(self.h.plan.log_dir) / "sje-state"),
        )
        args = ["-m", "sje", "master", "--port", "0", "--bind-address", "127.0.0.1"]
        master = self.h.start("sje-master", args, self.sje_env, persistent=True)
        url = master.wait_for("listening on", self.h.deadline.cap(60)).rsplit(" ", 1)[-1]
        self.client = sje.Client(url, token=self.token)
        self.open: list[Any] = []  # handles of jobs that may still be queued (for purge)

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()

    def settings(self) -> dict[str, str]:
        return {
            "workers": "`sje worker --concurrency 2`: one worker process and 2 child processes "
            "each running 1 task at a time (as Celery's prefork parent and 2 children, Huey's "
            "consumer and 2 workers), each child pinned to a CPU of its own (the default "
            "task-cpu-affinity spread); recovery: 2 x `--concurrency 1`, one of them killed; "
            f"I/O: async tasks, {ASYNC_CONCURRENCY} at once per child (its default) = 200",
            "enqueue": "one-by-one: `Client.submit` of a single-task job per task (an HTTP "
            "call each); batch: one job of N inputs",
            "results": "always stored (every task, every scenario); round trip: "
            "`submit({'args': [i]}, wait=30).result()` (one HTTP request: the reply carries "
            "the value)",
            "recovery": f"lease-timeout {LEASE_TIMEOUT} (default 30 s); the killed worker "
            "process (SIGKILL; its child dies with it) stays dead",
        }

    def workers(self, mode: str) -> list[Service]:
        """One worker with 2 children; for recovery, 2 workers of 1 child (one is killed)."""
        shape = [1, 1] if mode == "rec" else [2]
        out = []
        for children in shape:
            args = ["-m", "sje", "worker", "--tasks", __name__, "--concurrency", str(children)]
            out.append(self.h.start(f"sje-{mode}", [*args, "--name", "{name}"], self.sje_env))
        for service in out:
            service.wait_for("ready:", self.h.deadline.cap(60))
            self.h.note_pids(service)
        return out

    def victim(self, workers: list[Service]) -> psutil.Process:
        return psutil.Process(workers[0].pid)

    def held_by(self, victim: str) -> int | None:
        """Leases the killed worker held: ``P:owner`` maps each leased task to its worker's
        id, ``<name>-<6 hex>`` (the name from its command line's ``--name``)."""
        args = victim.split()
        name = args[args.index("--name") + 1]
        owners = [
            o.decode() if isinstance(o, bytes) else o for o in self.h.r.hvals("bench-sje:owner")
        ]
        return sum(1 for o in owners if o.rsplit("-", 1)[0] == name)

    def _job(self, kind: str, **spec: Any) -> None:
        job = {"task": TASKS[kind].name, "allow-unknown-task": True, **spec}
        self.open.append(self.client.submit(job))

    def enqueue_one(self, kind: str, arg: Any) -> None:
        self._job(kind, args=[arg])

    def enqueue_batch(self, kind: str, args: list[Any]) -> None:
        self._job(kind, inputs=args)

    def round_trip(self, i: int) -> Any:
        job = {"task": TASKS["noop"].name, "args": [i]}
        return self.client.submit(job, wait=30).result(timeout=30)

    def purge(self) -> None:
        """Cancel the jobs that may still be queued (SJE's state shares this Redis)."""
        for handle in self.open:
            with contextlib.suppress(sje.SJEError):  # a finished job cannot be cancelled
                handle.cancel()
        self.open.clear()
