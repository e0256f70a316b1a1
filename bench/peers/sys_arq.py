"""arq in bench/compare.py: its functions and settings (``arq bench.peers.sys_arq.WorkerSettings``)
and adapter. arq runs coroutines only, in one event loop per worker process; it polls its queue
(a sorted set) every ``poll_delay``."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any, ClassVar

import psutil
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.worker import func
from bench.common import Service
from bench.peers import work
from bench.peers.base import Adapter as AdapterBase

MAX_JOBS = {"std": 10, "rt": 10, "io": 100, "rec": 10}  # 10: arq's default
POLL_DELAY = 0.05  # default 0.5 s
JOB_TIMEOUT = 5  # default 300 s; a job's in-progress mark lives job_timeout + 10 s
RESULT_POLL = 0.002  # how often the client polls for a result (default 0.5 s)


async def noop(ctx: dict[str, Any], i: int) -> int:
    return await work.anoop(i)


async def cpu(ctx: dict[str, Any], arg: list[int]) -> int:
    return await work.acpu(arg)


async def io(ctx: dict[str, Any], i: int) -> int:
    return await work.aio(i)


async def warm(ctx: dict[str, Any], i: int) -> int:
    return await work.awarm(i)


class WorkerSettings:
    functions: ClassVar[list[Any]] = [
        func(noop, name="noop", keep_result=0),
        func(noop, name="noop_result"),
        func(cpu, name="cpu", keep_result=0),
        func(io, name="io", keep_result=0),
        func(warm, name="warm", keep_result=0),
    ]
    redis_settings = RedisSettings.from_dsn(work.redis_url())
    max_jobs = int(os.environ.get("BENCH_ARQ_MAX_JOBS", "10"))
    poll_delay = POLL_DELAY
    job_timeout = JOB_TIMEOUT


class Adapter(AdapterBase):
    name = "arq"
    dists = ("arq", "redis")
    concurrency: ClassVar[dict[str, int]] = {k: 2 * v for k, v in MAX_JOBS.items()}
    redelivery_s = JOB_TIMEOUT + 10.0

    def setup(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.pool: ArqRedis = self.loop.run_until_complete(
            create_pool(RedisSettings.from_dsn(work.redis_url()))
        )

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run_until_complete(self.pool.aclose())
            self.loop.close()

    def settings(self) -> dict[str, str]:
        return {
            "workers": f"2 x `arq WorkerSettings` (2 processes), max_jobs {MAX_JOBS['std']} "
            f"(default; arq starts jobs by polling, and 1 job per poll is crippling), "
            f"poll_delay {POLL_DELAY} s (default 0.5 s); I/O: max_jobs {MAX_JOBS['io']}; "
            "async tasks only (the CPU task blocks its event loop)",
            "enqueue": "one-by-one: `await pool.enqueue_job(name, i)`; batch: n/a (no API)",
            "results": f"kept only for the round trip (`job.result(poll_delay={RESULT_POLL})`: "
            "the client polls); keep_result=0 for the others",
            "recovery": f"job_timeout {JOB_TIMEOUT} s (default 300 s): a killed worker's jobs "
            "are re-run by the other once their in-progress mark expires (job_timeout + 10 s)",
        }

    def workers(self, mode: str) -> list[Service]:
        env = self.h.env(BENCH_ARQ_MAX_JOBS=str(MAX_JOBS[mode]))
        args = ["-m", "arq", "bench.peers.sys_arq.WorkerSettings"]
        return [self.h.start(f"arq-{mode}", args, env) for _ in range(2)]

    def victim(self, workers: list[Service]) -> psutil.Process:
        return psutil.Process(workers[0].pid)

    def enqueue_one(self, kind: str, arg: Any) -> None:
        self.loop.run_until_complete(self.pool.enqueue_job(kind, arg))

    def enqueue_many(self, kind: str, args: list[Any]) -> None:
        async def send() -> None:
            for start in range(0, len(args), 100):
                chunk = args[start : start + 100]
                await asyncio.gather(*(self.pool.enqueue_job(kind, a) for a in chunk))

        self.loop.run_until_complete(send())

    def round_trip(self, i: int) -> Any:
        async def one() -> Any:
            job = await self.pool.enqueue_job("noop_result", i)
            assert job is not None
            return await job.result(timeout=30, poll_delay=RESULT_POLL)

        return self.loop.run_until_complete(one())
