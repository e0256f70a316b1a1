"""Every event SJE emits, in one place (the Observer side of the engine).

Events are appended by the Lua scripts that make each state change, in the same atomic step,
so an event exists exactly when its change does (``docs/monitor.md``). They live in bounded
Redis streams: each job's own (every event of the job), its job-level one (what waiting
clients follow) and the global one (job events of every job, task failures, worker events).

An event is a flat mapping of strings: ``type`` plus the fields its type lists below. The
stream id (``<ms>-<seq>``) is the event's id; ``at`` (epoch seconds) is derived from it.
"""

from __future__ import annotations

from typing import Any

# -- jobs ---------------------------------------------------------------------------------
JOB_SUBMITTED = "job.submitted"  # tasks: how many tasks were queued
JOB_STARTED = "job.started"  # its first task started
#: a snapshot of the job record, sent by event streams, never stored: its ``id`` is the job's
JOB_PROGRESS = "job.progress"
#: sent by an event stream, never stored, when it cannot go on (its broker failed): ``code``
#: and ``message`` as in an error reply; the stream ends with it (a client raises the error)
STREAM_ERROR = "stream.error"
JOB_REDUCING = "job.reducing"  # every task succeeded; the reduce step is queued
JOB_SUCCEEDED = "job.succeeded"
JOB_FAILED = "job.failed"
JOB_CANCELLED = "job.cancelled"
JOB_TIMED_OUT = "job.timed_out"
JOB_REQUEUED = "job.requeued"  # a failed job reopened from the dead-letter queue; tasks
#: the event of each final job state
JOB_FINISHED = {
    "succeeded": JOB_SUCCEEDED,
    "failed": JOB_FAILED,
    "cancelled": JOB_CANCELLED,
    "timed_out": JOB_TIMED_OUT,
}

# -- tasks (job, task, and as listed) --------------------------------------------------------
TASK_QUEUED = "task.queued"  # back in its queue: reason = retry | released | redelivered
TASK_STARTED = "task.started"  # attempt, worker, wait_ms (time since it became ready)
TASK_SUCCEEDED = "task.succeeded"  # attempt, worker, duration_ms
TASK_RETRYING = "task.retrying"  # attempt, worker, duration_ms, delay_ms
TASK_FAILED = "task.failed"  # attempt, worker, duration_ms: its code failed on every attempt
TASK_DEAD = "task.dead"  # attempt, worker: it could not be run (see the dead-letter entry)
TASK_DEAD_LETTERED = "task.dead_lettered"  # entry: a dead-letter entry was added (global only)

# -- workers (worker; joined also name, host, pid) ---------------------------------------------
WORKER_JOINED = "worker.joined"
WORKER_HEARTBEAT = "worker.heartbeat"  # busy: slots in use; at most every 30 s per worker
WORKER_LEFT = "worker.left"  # stopped cleanly
WORKER_LOST = "worker.lost"  # missed its heartbeats (killed, hung or cut off)
WORKER_BACK = "worker.back"  # a lost worker renewed again

JOB_EVENTS = (
    JOB_SUBMITTED,
    JOB_STARTED,
    JOB_REDUCING,
    JOB_SUCCEEDED,
    JOB_FAILED,
    JOB_CANCELLED,
    JOB_TIMED_OUT,
    JOB_REQUEUED,
)
TASK_EVENTS = (
    TASK_QUEUED,
    TASK_STARTED,
    TASK_SUCCEEDED,
    TASK_RETRYING,
    TASK_FAILED,
    TASK_DEAD,
    TASK_DEAD_LETTERED,
)
WORKER_EVENTS = (WORKER_JOINED, WORKER_HEARTBEAT, WORKER_LEFT, WORKER_LOST, WORKER_BACK)
ALL_EVENTS = (*JOB_EVENTS, JOB_PROGRESS, STREAM_ERROR, *TASK_EVENTS, *WORKER_EVENTS)

#: upper bounds (ms) of the task run-time and queue-wait histogram buckets kept by the scripts
#: (``lua/common.lua`` has the same list); a last bucket holds everything above
HISTOGRAM_BOUNDS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000)
#: throughput is counted per slot of this many seconds (``P:tp:<slot>``), kept 2 hours
SLOT_S = 10
SLOTS_KEPT = 720

_INT_FIELDS = ("attempt", "duration_ms", "delay_ms", "wait_ms", "tasks", "busy", "pid")


def event_time(event_id: str) -> float:
    """Epoch seconds of a stream id ``<ms>-<seq>``."""
    return int(event_id.partition("-")[0]) / 1000


def event_view(event_id: str, fields: dict[str, str], job_id: str | None = None) -> dict[str, Any]:
    """An event as the API returns it: its id and time, numbers as numbers."""
    out: dict[str, Any] = {"id": event_id, "at": event_time(event_id)}
    if job_id is not None:
        out["job"] = job_id
    for key, value in fields.items():
        out[key] = int(value) if key in _INT_FIELDS and value.lstrip("-").isdigit() else value
    return out
