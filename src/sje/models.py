"""Job, task and event records, their states, and the one JSON wire format.

A job definition is validated here (by the client before sending and by the master on
receipt); everything that crosses a process boundary is JSON encoded with orjson.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from sje._validation import (
    describe_validation_error,
    json_problem,
    normalize_keys,
    parse_duration,
)
from sje.errors import InvalidJob

MAX_PRIORITY = 9
#: the longest duration a job may ask for (timeouts, backoff, result-ttl): 10 years
MAX_DURATION_S = 10 * 365 * 86400
#: the longest a submit may wait for its job to end in the same request (``POST /jobs?wait=``)
MAX_SUBMIT_WAIT_S = 60.0


class JobState(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def is_terminal(self) -> bool:
        return self not in (JobState.PENDING, JobState.RUNNING)


class TaskState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRYING = "retrying"
    DEAD = "dead"
    CANCELLED = "cancelled"


TASK_COUNTERS = ("queued", "running", "retrying", "succeeded", "failed", "dead", "cancelled")


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


class JobSpec(BaseModel):
    """A job definition. ``None`` options take the task's own default, then the global one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    task: str
    inputs: list[Any] | None = None
    chunk_size: int | None = None
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    queue: str | None = None
    priority: int | None = None
    retries: int | None = None
    backoff: float | None = None
    backoff_max: float | None = None
    timeout: float | None = None
    job_timeout: float | None = None
    idempotency_key: str | None = None
    result_ttl: float | None = None
    reduce: str | None = None
    allow_unknown_task: bool = False

    @field_validator(
        "backoff", "backoff_max", "timeout", "job_timeout", "result_ttl", mode="before"
    )
    @classmethod
    def _duration(cls, value: Any) -> float | None:
        return parse_duration(value)

    @field_validator("task", "reduce", "queue", "name")
    @classmethod
    def _identifier(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or len(value) > 200 or ":" in value):
            raise ValueError("must be a non-empty name of at most 200 characters without ':'")
        return value

    @field_validator("priority")
    @classmethod
    def _priority(cls, value: int | None) -> int | None:
        if value is not None and not 0 <= value <= MAX_PRIORITY:
            raise ValueError(f"must be between 0 (lowest) and {MAX_PRIORITY} (highest)")
        return value

    @field_validator("retries", "chunk_size")
    @classmethod
    def _non_negative(cls, value: int | None) -> int | None:
        if value is not None and value < 0:
            raise ValueError("must be >= 0")
        return value

    @field_validator("timeout", "job_timeout", "result_ttl", "backoff", "backoff_max")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and not 0 <= value <= MAX_DURATION_S:
            raise ValueError(f"must be a number of seconds from 0 to {MAX_DURATION_S} (10 years)")
        return value

    @model_validator(mode="after")
    def _shape(self) -> JobSpec:
        has_inputs = self.inputs is not None
        if has_inputs and (self.args is not None or self.kwargs is not None):
            raise ValueError(
                "give either 'inputs' (one task per item) or 'args'/'kwargs', not both"
            )
        if self.chunk_size is not None and not has_inputs:
            raise ValueError("'chunk-size' needs 'inputs'")
        if self.chunk_size == 0:
            raise ValueError("'chunk-size' must be >= 1")
        if has_inputs and not self.inputs:
            raise ValueError("'inputs' is empty: give at least one item")
        for field in ("inputs", "args", "kwargs"):
            problem = json_problem(getattr(self, field), field)
            if problem:
                raise ValueError(f"not JSON: {problem}")
        return self

    @property
    def task_count(self) -> int:
        if self.inputs is None:
            return 1
        size = self.chunk_size or 1
        return (len(self.inputs) + size - 1) // size

    @property
    def kind(self) -> str:
        if self.inputs is None:
            return "call"
        return "item" if self.chunk_size is None else "chunk"

    def task_payloads(self) -> list[bytes]:
        """The JSON payload of each task, in input order."""
        if self.inputs is None:
            return [dumps({"args": self.args or [], "kwargs": self.kwargs or {}})]
        if self.chunk_size is None:
            return [dumps(item) for item in self.inputs]
        size = self.chunk_size
        return [dumps(self.inputs[i : i + size]) for i in range(0, len(self.inputs), size)]


def parse_job(data: Mapping[str, Any], where: str = "job definition") -> JobSpec:
    """Validate a job definition dict (kebab- or snake-case keys) or raise ``InvalidJob``."""
    if not isinstance(data, Mapping):
        raise InvalidJob(f"{where}: expected a mapping of keys, got {type(data).__name__}")
    fields = normalize_keys(data, JobSpec.model_fields, where, InvalidJob)
    try:
        return JobSpec.model_validate(fields)
    except ValidationError as exc:
        raise InvalidJob(describe_validation_error(exc, where)) from None


@dataclass(frozen=True, slots=True)
class TaskMessage:
    """One fetched task attempt, as a worker receives it from the broker.

    ``payload`` is the stored bytes (signature first, see ``sje.signing``) and ``header`` the
    signed header fields as stored; ``problem`` says why a message could not even be read.
    """

    id: str
    job_id: str
    index: str
    task: str
    payload: bytes
    attempt: int
    retries: int
    backoff: float
    backoff_max: float
    timeout: float | None
    kind: str  # "item" (one input), "chunk" (a list of inputs), "call" (args/kwargs), "reduce"
    header: tuple[str, ...] = ()
    problem: str | None = None

    @property
    def is_reduce(self) -> bool:
        return self.kind == "reduce"

    @classmethod
    def parse(cls, task_id: bytes, header: bytes, payload: bytes) -> TaskMessage:
        """From a fetch reply; a header that cannot be read gives a message with ``problem``."""
        tid = task_id.decode()
        job_id, _, index = tid.partition(":")
        try:
            fields = loads(header)
            task, kind, attempt, retries, backoff, backoff_max, timeout = fields
            signed = (task, kind, retries, backoff, backoff_max, timeout)
            if not all(isinstance(f, str) for f in signed):
                raise TypeError("header fields must be strings")
            return cls(
                tid,
                job_id,
                index,
                task,
                payload,
                int(attempt),
                int(retries),
                float(backoff),
                float(backoff_max),
                float(timeout) if timeout else None,
                kind,
                signed,
            )
        except (ValueError, TypeError) as exc:
            problem = f"unreadable task header {header[:200]!r}: {exc}"
            return cls(tid, job_id, index, "", payload, 0, 0, 0.0, 0.0, None, "", (), problem)
