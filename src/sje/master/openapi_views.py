"""The OpenAPI description of the dashboard routes (``sje.master.api_views``) and of the
monitor-only ones (session, metrics); merged into the document by ``sje.master.openapi``."""

from __future__ import annotations

from sje.master.openapi_parts import (
    Schema,
    errors,
    event_schema,
    int_query,
    job_id_param,
    json_body,
    ref,
)
from sje.models import TaskState

_NUM = {"type": "number"}
_INT = {"type": "integer", "minimum": 0}
_STR = {"type": "string"}


def _nullable(kind: str) -> Schema:
    return {"type": [kind, "null"]}


def _obj(properties: Schema, required: list[str] | None = None) -> Schema:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
    }


def view_schemas() -> dict[str, Schema]:
    series = _obj({"t": _NUM, "succeeded": _INT, "failed": _INT})
    queue = _obj(
        {
            "name": _STR,
            "depth": _INT,
            "running": _INT,
            "retrying": _INT,
            "succeeded_per_s": _NUM,
            "failed_per_s": _NUM,
            "oldest_wait_s": _nullable("number"),
            "peek": {
                "type": "array",
                "items": _obj(
                    {
                        "task": _STR,
                        "job": _STR,
                        "index": _STR,
                        "name": _nullable("string"),
                        "priority": {"type": "integer"},
                        "waiting_s": _nullable("number"),
                    }
                ),
            },
        }
    )
    task = _obj(
        {
            "index": _STR,
            "state": {"type": "string", "enum": [s.value for s in TaskState]},
            "attempts": _INT,
            "duration_s": _nullable("number"),
            "worker": _nullable("string"),
            "error": {"type": ["object", "null"]},
        }
    )
    event = {
        "type": "object",
        "properties": {"id": _STR, "at": _NUM, "type": _STR},
        "required": ["id", "at", "type"],
        "description": "An event: its id, time and type, and the fields its type carries "
        "(job, task, attempt, worker, duration_ms, ...; the module sje.events lists them).",
    }
    return {
        "Overview": _obj(
            {
                "jobs": _obj(
                    {
                        k: _INT
                        for k in ("submitted", "succeeded", "failed", "cancelled", "timed_out")
                    }
                    | {"active": _INT}
                ),
                "tasks": _obj({k: _INT for k in ("succeeded", "failed", "dead", "retried")}),
                "rates": _obj({"succeeded_per_s": _NUM, "failed_per_s": _NUM}),
                "series": {"type": "array", "items": series},
                "queues": {"type": "array", "items": _obj({"name": _STR, "depth": _INT})},
                "workers": _obj({"alive": _INT, "lost": _INT, "busy": _INT, "slots": _INT}),
                "dead_letters": _INT,
            }
        ),
        "QueueList": _obj({"queues": {"type": "array", "items": queue}, "dead_letters": _INT}),
        "TaskPage": _obj(
            {"id": _STR, "total": _INT, "offset": _INT, "tasks": {"type": "array", "items": task}}
        ),
        "Timeline": _obj({"id": _STR, "events": {"type": "array", "items": event}}),
        "Retried": _obj({"id": _STR, "requeued": _INT}),
    }


def view_operations() -> dict[str, dict[str, Schema]]:
    """Path items of the dashboard routes."""
    job_id = job_id_param()
    return {
        "/api/v1/overview": {
            "get": {
                "operationId": "overview",
                "summary": "Counters, rates, throughput over time, queues, workers.",
                "parameters": [
                    int_query("window", 3600, 60, 7200, "Seconds of throughput to return.")
                ],
                "responses": {
                    "200": json_body(ref("schemas", "Overview"), "The overview."),
                    **errors("BadRequest"),
                },
            }
        },
        "/api/v1/queues": {
            "get": {
                "operationId": "listQueues",
                "summary": "Queues: depth, running, rates, oldest wait and a peek.",
                "parameters": [int_query("peek", 10, 0, 100, "Queued tasks to show per queue.")],
                "responses": {
                    "200": json_body(ref("schemas", "QueueList"), "The queues."),
                    **errors("BadRequest"),
                },
            }
        },
        "/api/v1/events": {
            "get": {
                "operationId": "globalEvents",
                "summary": "Server-sent events of the whole deployment, live.",
                "description": "Job events of every job, task retries and failures, worker "
                "events. Starts with live events, or after `after` / Last-Event-ID; never ends "
                "on its own (the client closes it).",
                "parameters": [
                    {
                        "name": "after",
                        "in": "query",
                        "required": False,
                        "description": "Replay the stored events after this id first.",
                        "schema": {"type": "string", "pattern": "^[0-9]{1,19}(-[0-9]{1,19})?$"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "An event stream.",
                        "content": {"text/event-stream": {"schema": event_schema()}},
                    },
                    **errors("BadRequest"),
                },
            }
        },
        "/api/v1/jobs/{job_id}/tasks": {
            "get": {
                "operationId": "jobTasks",
                "summary": "A page of a job's per-task table.",
                "parameters": [
                    job_id,
                    {
                        "name": "state",
                        "in": "query",
                        "required": False,
                        "description": "Only tasks in this state.",
                        "schema": {"type": "string", "enum": [s.value for s in TaskState]},
                    },
                    int_query("offset", 0, 0, 10**12, "Matching tasks to skip."),
                    int_query("limit", 100, 1, 1000, "Tasks to return."),
                ],
                "responses": {
                    "200": json_body(ref("schemas", "TaskPage"), "The tasks."),
                    **errors("BadRequest", "NotFound"),
                },
            }
        },
        "/api/v1/jobs/{job_id}/timeline": {
            "get": {
                "operationId": "jobTimeline",
                "summary": "The newest events of a job, oldest first.",
                "parameters": [job_id, int_query("limit", 200, 1, 10_000, "Events to return.")],
                "responses": {
                    "200": json_body(ref("schemas", "Timeline"), "The events."),
                    **errors("BadRequest", "NotFound"),
                },
            }
        },
        "/api/v1/jobs/{job_id}/retry": {
            "post": {
                "operationId": "retryJob",
                "summary": "Queue a failed job's failed, dead and dropped tasks again.",
                "parameters": [job_id],
                "responses": {
                    "200": json_body(ref("schemas", "Retried"), "The job is running again."),
                    **errors("NotFound", "NotRequeueable"),
                },
            }
        },
    }


def monitor_operations() -> dict[str, dict[str, Schema]]:
    """Routes only the monitor serves."""
    return {
        "/api/v1/session": {
            "get": {
                "operationId": "session",
                "summary": "The CSRF value a signed-in page sends with X-SJE-CSRF.",
                "responses": {
                    "200": json_body(
                        _obj({"csrf": _STR, "auth": {"type": "string", "enum": ["token", "none"]}}),
                        "The session.",
                    ),
                    **errors(),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (text exposition format).",
                "responses": {
                    "200": {
                        "description": "The metrics.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **errors(),
                },
            }
        },
    }
