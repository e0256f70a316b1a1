"""The master's timer work: promote due retries, reclaim expired leases, end timed-out jobs.

Each step is one atomic broker call, so any number of masters may tick at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sje.broker.base import Scheduler
from sje.errors import BrokerError

log = logging.getLogger(__name__)


class SchedulerLoop:
    """Runs the timer steps every ``interval_s`` until ``stop()``; survives broker outages."""

    def __init__(self, broker: Scheduler, interval_s: float, max_redeliveries: int) -> None:
        self.broker = broker
        self.interval_s = interval_s
        self.max_redeliveries = max_redeliveries
        self._stopping = asyncio.Event()

    async def tick(self) -> None:
        promoted = await self.broker.promote_due()
        reclaimed = await self.broker.reclaim_expired(self.max_redeliveries)
        expired = await self.broker.expire_jobs()
        await self.broker.prune_index()
        lost = await self.broker.mark_lost_workers()
        if lost:
            log.warning("%d worker(s) missed their heartbeats and are marked lost", lost)
        if reclaimed:
            log.warning("reclaimed %d task(s) whose worker stopped renewing its lease", reclaimed)
        if promoted or expired:
            log.info("promoted %d retries, timed out %d job(s)", promoted, expired)

    async def run(self) -> None:
        failing = False
        while not self._stopping.is_set():
            try:
                await self.tick()
                if failing:
                    log.warning("broker reachable again; scheduler resumed")
                failing = False
            except BrokerError as exc:
                if not failing:
                    log.error("scheduler tick failed, will keep retrying: %s", exc)
                failing = True
            except Exception:
                log.exception("scheduler tick failed unexpectedly; continuing")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval_s)

    def stop(self) -> None:
        self._stopping.set()
