"""SJE (SparkJobExecutor): submit a job, it fans out across workers, every result comes back.

Public API: ``@sje.task`` to make a task function, ``sje.Job(job_def).submit()`` to run a
job, ``sje.Client`` / ``sje.AsyncClient`` to talk to a master, and the error classes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sje.errors import (
    BrokerError,
    ConfigError,
    EntryNotFound,
    IdempotencyConflict,
    InvalidJob,
    InvalidRequest,
    JobError,
    JobFailed,
    JobNotFound,
    JobTimeout,
    MasterError,
    NotRequeueable,
    QueueFull,
    RequestTooLarge,
    SJEError,
    UnknownTask,
    WorkerError,
)
from sje.tasks import Task, task

if TYPE_CHECKING:
    from sje.client import Client, Job, JobHandle
    from sje.client_async import AsyncClient, AsyncJobHandle
    from sje.models import JobState, TaskState

# The client side (httpx, pydantic) loads on first use, so the child processes that import
# ``sje`` for ``@sje.task`` stay small.
_LAZY = {
    "AsyncClient": "sje.client_async",
    "AsyncJobHandle": "sje.client_async",
    "Client": "sje.client",
    "Job": "sje.client",
    "JobHandle": "sje.client",
    "JobState": "sje.models",
    "TaskState": "sje.models",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sje' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AsyncJobHandle",
    "BrokerError",
    "Client",
    "ConfigError",
    "EntryNotFound",
    "IdempotencyConflict",
    "InvalidJob",
    "InvalidRequest",
    "Job",
    "JobError",
    "JobFailed",
    "JobHandle",
    "JobNotFound",
    "JobState",
    "JobTimeout",
    "MasterError",
    "NotRequeueable",
    "QueueFull",
    "RequestTooLarge",
    "SJEError",
    "Task",
    "TaskState",
    "UnknownTask",
    "WorkerError",
    "task",
]
