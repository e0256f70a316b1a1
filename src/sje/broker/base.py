"""The broker contract: a task queue (what workers use) and a job store (what masters use).

Retries, backoff, timeouts, serialization and events live above these protocols and are written
once; an implementation only moves bytes and leases, atomically.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
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


@dataclass(frozen=True, slots=True)
class JobQuery:
    """Filters of a jobs page; ``None`` means any."""

    state: str | None = None
    name: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    id_prefix: str | None = None


@dataclass(frozen=True, slots=True)
class JobEnd:
    """A job that ended; a backend may carry what a waiting request answers with, so that it
    need not read it: the ended job's record and its value (an ``args`` call's result, or a
    reduce step's output). ``None``: not carried (read it)."""

    job_id: str
    record: dict[str, str] | None = None
    value: bytes | None = None


@dataclass
class Snapshot:
    """The counters and gauges ``/metrics`` shows, read in one go."""

    stats: dict[str, int]
    depths: dict[str, int]
    unfinished: dict[str, dict[str, int]]
    workers: list[dict[str, Any]]
    dead_letters: int
    queues: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class LogPage:
    """Logs as ``{"task", "attempt", "text", "truncated"}``, by task index (reduce last) then
    attempt; ``next``: the offset of the next page (None: no more); ``dropped``: logs of the
    job refused for being over its bounds."""

    logs: list[dict[str, Any]]
    next: int | None
    dropped: int


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

    async def complete_many(
        self,
        worker_id: str,
        done: list[tuple[str, bytes]],
        n: int,
        queues: list[str],
        lease_s: float,
    ) -> tuple[list[str], list[TaskMessage]]:
        """``complete`` each (task id, result) of ``done`` in order, then ``fetch`` up to ``n``
        tasks for the freed slots, in one step. Returns each completion's status and the
        fetched tasks."""
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


class MonitorViews(Protocol):
    """The monitor's reads (``docs/monitor.md``): each bounded per call."""

    async def stats(self) -> dict[str, int]: ...

    async def queue_names(self) -> list[str]: ...

    async def depths(self, queues: list[str]) -> dict[str, int]: ...

    async def throughput(
        self, window_s: int, by_queue_s: int = 0
    ) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]: ...

    async def unfinished(self) -> dict[str, dict[str, int]]: ...

    async def snapshot(self) -> Snapshot: ...

    async def overview(self, window_s: int) -> dict[str, Any]: ...

    async def find_jobs(
        self, query: JobQuery, limit: int, offset: int
    ) -> tuple[list[dict[str, str]], int | None]: ...

    async def tasks(
        self, job_id: str, job: dict[str, str], state: str | None, offset: int, limit: int
    ) -> tuple[int, list[dict[str, Any]]]: ...

    async def timeline(self, job_id: str, limit: int) -> list[tuple[str, dict[str, str]]]: ...

    async def global_events(
        self, after: str, block_ms: int | None, count: int = 1000
    ) -> list[tuple[str, dict[str, str]]]: ...

    async def last_event_id(self) -> str: ...

    async def job_ends(self, after: str, block_ms: int) -> tuple[str, list[JobEnd]]:
        """The jobs that ended after position ``after``, oldest first, and the position to
        read on from; waits up to ``block_ms`` for one. What requests waiting for jobs
        follow."""
        ...

    async def last_job_end(self) -> str:
        """The position of the newest job end, for a first ``job_ends``."""
        ...

    async def queues(self, peek: int) -> dict[str, Any]: ...


class DeadLetters(Protocol):
    """The dead-letter queue: entries newest first; requeue reopens an entry's failed job."""

    async def page(self, limit: int, offset: int) -> tuple[int, list[dict[str, Any]]]: ...

    async def entry(self, entry_id: str) -> dict[str, Any] | None: ...

    async def requeue(self, entry_id: str, job_id: str = "") -> tuple[str, str, int]: ...

    async def ids(self) -> list[str]: ...

    async def purge(self, entry_ids: list[str] | None) -> int: ...


class TaskLogs(Protocol):
    """What each attempt printed and logged, bounded per job, gone with the job."""

    async def store(self, job_id: str, index: str, attempt: int, log: Mapping[str, Any]) -> str: ...

    async def of_task(self, job_id: str, index: str) -> LogPage: ...

    async def of_job(self, job_id: str, offset: int, limit: int) -> LogPage: ...


class RelayStore(Protocol):
    """What a state store adds so another transport (RabbitMQ) can deliver its tasks
    (``docs/brokers.md``, "RabbitMQ"): an **outbox** of tasks that became ready, and
    **start**, which leases tasks named by a delivery.

    Once ``enable_relay`` has been called on a deployment, every transition that makes a task
    ready (submit, promote, reclaim, release, reduce step, requeue) also puts its id in the
    outbox in the same atomic step: visible at once, except a submit's, which is held for
    ``SUBMIT_HOLD_S`` because its submitter publishes the job itself and settles them.
    """

    async def enable_relay(self) -> None:
        """Start filling the outbox (idempotent; stays on for the deployment)."""
        ...

    async def claim_outbox(self, n: int, hold_s: float) -> list[tuple[str, str, int]]:
        """Up to ``n`` visible outbox entries as ``(task_id, queue, priority)``, hidden from
        other claimers for ``hold_s`` (a claimer that dies before ``settle_outbox`` leaves them
        to be claimed again); entries whose task is no longer ready are removed, not returned."""
        ...

    async def settle_outbox(self, task_ids: list[str]) -> None:
        """Remove published entries from the outbox (unknown ids are ignored)."""
        ...

    async def start(self, worker_id: str, task_ids: list[str], lease_s: float) -> list[TaskMessage]:
        """Lease the named tasks that are ready (out of their queue, as ``fetch`` does, with
        its events and counters); ids that are not ready (running, done, retrying, of an ended
        or unknown job, malformed) are skipped: their delivery was a duplicate."""
        ...


#: how long a submit's outbox entries stay hidden while the submitter publishes them itself
SUBMIT_HOLD_S = 30.0


class Broker(TaskQueue, Scheduler, JobStore, Protocol):
    """Everything one backend provides (``registry.open_broker`` returns one): the protocols
    above, the worker registry, deployment secrets and the monitor's reads. The contract suite
    (``tests/integration/test_broker_contract.py``) runs against every implementation."""

    @property
    def views(self) -> MonitorViews: ...

    @property
    def dlq(self) -> DeadLetters: ...

    @property
    def logs(self) -> TaskLogs: ...

    async def dead_letter(self, task_id: str, worker_id: str, error: dict[str, Any]) -> str:
        """Fail a task that cannot be run (``dead``); returns ``dead`` or ``stale``."""
        ...

    async def reduce_result(self, job_id: str) -> bytes | None: ...

    async def register_worker(
        self,
        worker_id: str,
        info: dict[str, Any],
        tasks: dict[str, TaskDefaults],
        due_s: float = 10.0,
    ) -> None: ...

    async def deregister_worker(self, worker_id: str, event: bool = True) -> None: ...

    async def ping(self) -> None: ...

    async def server_time(self) -> float:
        """The broker's clock (epoch seconds): leases and delays are measured on it."""
        ...

    async def shared_value(self, name: str, candidate: str) -> tuple[str, bool]: ...

    async def durability_warnings(self) -> list[str]: ...


class StateStore(Broker, RelayStore, Protocol):
    """A broker that keeps its own state (Redis, SQLite): it can also be the state store of
    the ``amqp://`` backend."""
