"""The one exception tree of SJE.

Every message says what happened (with the offending value) and what to do next.
The CLI maps each subtree to an exit code (``exit_code``); tracebacks only with ``--debug``.

::

    SJEError                      exit 1
    ├── ConfigError               exit 2   bad YAML, unknown key, wrong type
    ├── BrokerError               exit 3   Redis unreachable or failing
    ├── MasterError               exit 4   master unreachable or answered with a server error
    ├── JobError                  exit 5   bad job definition, unknown task, not found, conflict
    │   ├── InvalidJob
    │   ├── InvalidRequest       a bad query parameter or body shape on the HTTP API
    │   ├── RequestTooLarge      a request body over max-request-mb (HTTP 413)
    │   ├── UnknownTask
    │   ├── JobNotFound
    │   ├── IdempotencyConflict
    │   ├── EntryNotFound        no such dead-letter entry
    │   └── NotRequeueable       a dead-letter entry whose job cannot run again
    ├── QueueFull                 exit 6   a queue is at its bound (HTTP 429)
    ├── JobTimeout                exit 7   a job (or a wait on it) passed its time limit
    ├── JobFailed                 exit 8   a job ended failed or cancelled; carries the reason
    └── WorkerError               exit 9   a worker could not start (task module import, ...)
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "ConfigError",
    "EntryNotFound",
    "IdempotencyConflict",
    "InvalidJob",
    "InvalidRequest",
    "JobError",
    "JobFailed",
    "JobNotFound",
    "JobTimeout",
    "MasterError",
    "NotRequeueable",
    "QueueFull",
    "RequestTooLarge",
    "SJEError",
    "UnknownTask",
    "WorkerError",
]


class SJEError(Exception):
    """Root of every error SJE raises on purpose."""

    exit_code = 1
    #: stable machine-readable code used in HTTP error bodies
    code = "error"
    http_status = 500

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


class ConfigError(SJEError):
    exit_code = 2
    code = "config"
    http_status = 400


class BrokerError(SJEError):
    exit_code = 3
    code = "broker"
    http_status = 503


class MasterError(SJEError):
    exit_code = 4
    code = "master"
    http_status = 502


class JobError(SJEError):
    exit_code = 5
    code = "job"
    http_status = 400


class InvalidJob(JobError):
    code = "invalid_job"
    http_status = 422


class InvalidRequest(JobError):
    code = "invalid_request"
    http_status = 400


class RequestTooLarge(JobError):
    code = "too_large"
    http_status = 413


class UnknownTask(JobError):
    code = "unknown_task"
    http_status = 422


class JobNotFound(JobError):
    code = "not_found"
    http_status = 404


class IdempotencyConflict(JobError):
    code = "idempotency_conflict"
    http_status = 409


class EntryNotFound(JobError):
    code = "entry_not_found"
    http_status = 404


class NotRequeueable(JobError):
    code = "not_requeueable"
    http_status = 409


class QueueFull(SJEError):
    exit_code = 6
    code = "queue_full"
    http_status = 429

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class JobTimeout(SJEError):
    exit_code = 7
    code = "job_timeout"
    http_status = 408


class JobFailed(SJEError):
    exit_code = 8
    code = "job_failed"
    http_status = 409


class WorkerError(SJEError):
    exit_code = 9
    code = "worker"


def _subclasses(cls: type[SJEError]) -> list[type[SJEError]]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def error_from_code(code: str, message: str) -> SJEError:
    """Rebuild the exception a server reported as ``{"code", "message"}``."""
    return _BY_CODE.get(code, SJEError)(message)


_BY_CODE: dict[str, type[SJEError]] = {cls.code: cls for cls in _subclasses(SJEError)}
