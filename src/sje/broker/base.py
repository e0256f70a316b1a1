"""The broker contract: a task queue (what workers use) and a job store (what masters use).

Retries, backoff, timeouts, serialization and events live above these protocols and are written
once; an implementation only moves bytes and leases, atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from sje.models import TaskMessage
from sje.tasks import TaskDefaults


@dataclass(frozen=True, slots=True)
class SubmitOutcome:
    """``status`` is ``ok`` (stored), ``duplicate`` (same idempotency key and payload: the
    existing job), ``conflict`` (same key, other payload) or ``full`` (queue at its bound)."""

    status: str
    job_id: str
    depth: int = 0


@dataclass(frozen=True, slots=True)
class NewJob:
    """A validated, decomposed job ready to be stored."""

    id: str
    fields: dict[str, str]
    payloads: list[bytes]
    queue: str
    priority: int
    max_queue_length: int
    job_timeout_s: float | None
    idempotency_key: str | None
    idempotency_hash: str


class TaskQueue(Protocol):
    """Delivery of tasks to workers: at-least-once, leased, no ordering promised across queues.

    Within one queue, higher priority is fetched first, then older tasks first.
    """

    async def fetch(
        self, worker_id: str, queues: list[str], n: int, lease_s: float
    ) -> list[TaskMessage]:
        """Up to ``n`` tasks, each leased to ``worker_id`` for ``lease_s`` on the broker's clock.

        Returns at once (maybe empty); never more than ``n``: a worker asks for its free slots.
        """
        ...

    async def wait_for_work(self, queues: list[str], timeout_s: float) -> None:
        """Block until work may be available on ``queues`` or ``timeout_s`` passes."""
        ...

    async def complete(self, task_id: str, worker_id: str, result: bytes) -> str:
        """Store the result and acknowledge: the first success wins (idempotent).

        Returns ``ok``, ``duplicate`` (already stored) or ``stale`` (job finished meanwhile).
        """
        ...

    async def fail(
        self, task_id: str, worker_id: str, error: dict[str, Any], retry_in_s: float | None
    ) -> str:
        """Record a failed attempt; retry after ``retry_in_s`` or, when None, fail for good.

        Returns ``retry``, ``failed`` or ``stale`` (the worker no longer held the lease).
        """
        ...

    async def complete_and_fetch(
        self,
        task_id: str,
        worker_id: str,
        result: bytes,
        n: int,
        queues: list[str],
        lease_s: float,
    ) -> tuple[str, list[TaskMessage]]:
        """``complete``, then ``fetch`` up to ``n`` tasks for the freed slot, in one step."""
        ...

    async def renew(
        self,
        worker_id: str,
        task_ids: list[str],
        lease_s: float,
        stats: dict[str, Any] | None = None,
        due_s: float = 10.0,
    ) -> list[str]:
        """Heartbeat: extend the leases and store the worker's ``stats`` (it counts as lost
        after ``due_s`` without another); returns the ids the worker must stop."""
        ...

    async def release(self, worker_id: str, task_ids: list[str]) -> int:
        """Hand leased tasks back to the front of their queue; the attempt does not count."""
        ...

    async def close(self) -> None: ...


class Scheduler(Protocol):
    """Timer work a master runs; every call is atomic and safe from several masters at once."""

    async def reclaim_expired(self, max_redeliveries: int) -> int:
        """Requeue tasks whose lease expired; fail those lost more than ``max_redeliveries``."""
        ...

    async def promote_due(self) -> int:
        """Move retries whose backoff passed back to their queue."""
        ...

    async def expire_jobs(self) -> int:
        """End jobs past their ``job-timeout`` as ``timed_out``."""
        ...

    async def prune_index(self) -> int:
        """Forget (a slice of) the jobs whose records expired; returns how many."""
        ...

    async def mark_lost_workers(self) -> int:
        """Mark workers past their heartbeat deadline lost (once each); returns how many."""
        ...


class JobStore(Protocol):
    """Durable job state: a job is stored whole or not at all; terminal jobs expire by TTL."""

    async def submit(self, job: NewJob) -> SubmitOutcome: ...

    async def job(self, job_id: str) -> dict[str, str] | None: ...

    async def jobs(self, limit: int, offset: int) -> list[dict[str, str]]: ...

    async def results(self, job_id: str, start: int, stop: int) -> list[bytes | None]: ...

    async def errors(self, job_id: str) -> dict[str, bytes]: ...

    async def cancel(self, job_id: str) -> str:
        """``ok``, ``missing`` or the job's terminal state when it had already ended."""
        ...

    async def events(
        self, job_id: str, after: str, block_ms: int | None, job_level: bool = False
    ) -> list[tuple[str, dict[str, str]]]: ...

    async def task_catalog(self) -> dict[str, TaskDefaults]: ...

    async def workers(self) -> list[dict[str, Any]]: ...

    async def depth(self, queue: str) -> int: ...
