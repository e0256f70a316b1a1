"""Building blocks of the OpenAPI documents (``sje.master.openapi``): references, error
responses, common parameters."""

from __future__ import annotations

from typing import Any

from sje.errors import (
    BrokerError,
    EntryNotFound,
    IdempotencyConflict,
    InvalidJob,
    InvalidRequest,
    JobNotFound,
    NotRequeueable,
    QueueFull,
    RequestTooLarge,
)
from sje.master.http import EVENT_ID

Schema = dict[str, Any]
EVENT_ID_PATTERN = f"^{EVENT_ID.pattern}$"
#: the largest page the list routes (jobs, dead letters) return
LIST_LIMIT_MAX = 1000


def nullable_type(kind: str | list[str]) -> Schema:
    kinds = [kind] if isinstance(kind, str) else kind
    return {"type": [*kinds, "null"]}


def ref(kind: str, name: str) -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def json_body(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error(description: str) -> Schema:
    return json_body(ref("schemas", "Error"), description)


ERROR_RESPONSES: dict[str, tuple[int, Schema]] = {
    "BadRequest": (
        InvalidRequest.http_status,
        error("A query parameter is malformed or out of range (code invalid_request)."),
    ),
    "Unauthorized": (
        401,
        error("Missing or wrong token (code unauthorized); only when the master has a token."),
    ),
    "NotFound": (
        JobNotFound.http_status,
        error("No such job: it never existed or its result-ttl passed (code not_found)."),
    ),
    "Conflict": (
        IdempotencyConflict.http_status,
        error(
            "The idempotency key belongs to a job with another definition "
            "(code idempotency_conflict)."
        ),
    ),
    "Unprocessable": (
        InvalidJob.http_status,
        error(
            "The job definition is invalid, or a task's input is over max-message-kb (code "
            "invalid_job), or no worker has registered its task (code unknown_task)."
        ),
    ),
    "TooLarge": (
        RequestTooLarge.http_status,
        error("The request body is over the master's max-request-mb (code too_large)."),
    ),
    "QueueFull": (
        QueueFull.http_status,
        {
            **error("The job's queue is at max-queue-length (code queue_full)."),
            "headers": {
                "Retry-After": {
                    "description": "Seconds to wait before submitting again.",
                    "required": True,
                    "schema": {"type": "integer", "minimum": 0},
                }
            },
        },
    ),
    "EntryNotFound": (
        EntryNotFound.http_status,
        error("No such dead-letter entry (code entry_not_found)."),
    ),
    "NotRequeueable": (
        NotRequeueable.http_status,
        error(
            "The entry's job cannot run again: it is not failed, its record expired, or the "
            "entry names no job (code not_requeueable)."
        ),
    ),
    "BrokerDown": (
        BrokerError.http_status,
        error("The master cannot reach Redis, or Redis failed (code broker)."),
    ),
}


def errors(*names: str) -> dict[str, Schema]:
    """Error responses by status: each route may also answer 401 and 503."""
    chosen = (*names, "Unauthorized", "BrokerDown")
    return {str(ERROR_RESPONSES[n][0]): ref("responses", n) for n in chosen}


def job_id_param() -> Schema:
    return {
        "name": "job_id",
        "in": "path",
        "required": True,
        "description": "Job id, as returned by POST /api/v1/jobs.",
        "schema": {"type": "string", "minLength": 1},
    }


def int_query(name: str, default: int, lo: int, hi: int, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "integer", "minimum": lo, "maximum": hi, "default": default},
    }


def text_query(name: str, max_len: int, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string", "maxLength": max_len},
    }


def time_query(name: str, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": f"{description} Epoch seconds.",
        "schema": {"type": "number", "minimum": 0, "exclusiveMaximum": 1e11},
    }


def event_schema() -> Schema:
    """One server-sent event; ``progress`` events have no id."""
    return {
        "type": "object",
        "properties": {
            "event": {"type": "string"},
            "id": {"type": "string", "pattern": EVENT_ID_PATTERN},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"type": "object"},
            },
        },
        "required": ["event", "data"],
    }
