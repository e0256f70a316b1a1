"""SJE (SparkJobExecutor): submit a job, it fans out across workers, every result comes back.

Public API: ``@sje.task`` to make a task function, ``sje.Job(job_def).submit()`` to run a
job, ``sje.Client`` / ``sje.AsyncClient`` to talk to a master, and the error classes.
"""

from sje.client import AsyncClient, AsyncJobHandle, Client, Job, JobHandle
from sje.errors import (
    BrokerError,
    ConfigError,
    IdempotencyConflict,
    InvalidJob,
    JobError,
    JobFailed,
    JobNotFound,
    JobTimeout,
    MasterError,
    QueueFull,
    SJEError,
    UnknownTask,
    WorkerError,
)
from sje.models import JobState, TaskState
from sje.tasks import Task, task

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AsyncJobHandle",
    "BrokerError",
    "Client",
    "ConfigError",
    "IdempotencyConflict",
    "InvalidJob",
    "Job",
    "JobError",
    "JobFailed",
    "JobHandle",
    "JobNotFound",
    "JobState",
    "JobTimeout",
    "MasterError",
    "QueueFull",
    "SJEError",
    "Task",
    "TaskState",
    "UnknownTask",
    "WorkerError",
    "task",
]
