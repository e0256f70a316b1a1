"""The OpenAPI 3.1 document of the master's HTTP API, served at ``GET /api/v1/openapi.json``.

The job definition schema lists ``JobSpec``'s fields under both spellings the API accepts
(``chunk-size`` or ``chunk_size``), each with the rules its validators check (ranges,
durations, names) written out; a field without such rules keeps the schema pydantic gives it.
``tests/unit/test_openapi.py`` checks that the document names exactly the routes the app has
and that job definitions it allows are accepted.
"""

from __future__ import annotations

import copy
import functools

import orjson
from starlette.requests import Request
from starlette.responses import Response

from sje import __version__
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
    UnknownTask,
)
from sje.master.api_logs import LOGS_LIMIT_MAX
from sje.master.http import EVENT_ID, MAX_OFFSET
from sje.master.openapi_dlq import dead_letter_schema, dlq_operations
from sje.master.openapi_parts import (
    ERROR_RESPONSES,
    LIST_LIMIT_MAX,
    Schema,
    errors,
    event_schema,
    int_query,
    job_id_param,
    json_body,
    nullable_type,
    ref,
    text_query,
    time_query,
)
from sje.master.openapi_views import monitor_operations, view_operations, view_schemas
from sje.models import MAX_DURATION_S, MAX_PRIORITY, TASK_COUNTERS, JobSpec, JobState

PATH = "/api/v1/openapi.json"
#: bounds the handlers in ``sje.master.api`` enforce
RESULTS_LIMIT_MAX = 10_000

# a name with a character other than ':' and whitespace (as str.strip() sees it)
_NAME = r"^[^:]*[^\s\x1c-\x1f\x85:][^:]*$"
_NAME_RULE = {"type": "string", "minLength": 1, "maxLength": 200, "pattern": _NAME}
_DURATION = r"^\s*[0-9]+(\.[0-9]+)?\s*(ms|s|m|h|d)?\s*$"
_EVENT_ID = f"^{EVENT_ID.pattern}$"


def _nullable(schema: Schema, description: str) -> Schema:
    return {"anyOf": [schema, {"type": "null"}], "default": None, "description": description}


def _duration(description: str) -> Schema:
    seconds = {"type": "number", "minimum": 0, "maximum": MAX_DURATION_S}
    text = {"type": "string", "pattern": _DURATION}
    return {
        "anyOf": [seconds, text, {"type": "null"}],
        "default": None,
        "description": f"{description} Seconds, or a string like '250ms', '30s', '5m', '2h', "
        f"'1d'; at most {MAX_DURATION_S} seconds (10 years).",
    }


#: what the validators of ``JobSpec`` add to the types pydantic reports
_FIELD_RULES: dict[str, Schema] = {
    "name": _nullable(_NAME_RULE, "Display name; defaults to the task name."),
    "task": {**_NAME_RULE, "description": "Registered name of the task to run."},
    "reduce": _nullable(_NAME_RULE, "Task that receives every result, in input order."),
    "queue": _nullable(_NAME_RULE, "Queue; defaults to the task's own, then 'default'."),
    "inputs": _nullable(
        {"type": "array", "minItems": 1},
        "One task per item (or per chunk of chunk-size items). Not with args/kwargs.",
    ),
    "chunk_size": _nullable({"type": "integer", "minimum": 1}, "Items per task; needs inputs."),
    "args": _nullable({"type": "array"}, "Positional arguments of a single call."),
    "kwargs": _nullable({"type": "object"}, "Keyword arguments of a single call."),
    "priority": _nullable(
        {"type": "integer", "minimum": 0, "maximum": MAX_PRIORITY},
        f"0 (lowest) to {MAX_PRIORITY} (highest).",
    ),
    "retries": _nullable({"type": "integer", "minimum": 0}, "Retries per task after a failure."),
    "backoff": _duration("First retry delay, doubled per retry."),
    "backoff_max": _duration("Longest retry delay."),
    "timeout": _duration("Time limit of one task attempt."),
    "job_timeout": _duration("Time limit of the whole job."),
    "result_ttl": _duration("How long the job and its results are kept after it ends."),
    "idempotency_key": _nullable(
        {"type": "string"}, "Submitting the same definition with this key again returns its job."
    ),
    "allow_unknown_task": {
        "type": "boolean",
        "default": False,
        "description": "Queue the job even if no worker has registered the task yet.",
    },
}


def job_definition_schema() -> Schema:
    """``JobSpec`` as JSON schema, each key accepted in kebab-case or snake_case."""
    base = JobSpec.model_json_schema()
    properties: Schema = {}
    for field, pydantic_schema in base["properties"].items():
        schema = copy.deepcopy(_FIELD_RULES.get(field, pydantic_schema))
        schema.pop("title", None)
        properties[field] = schema
        if "_" in field:
            properties[field.replace("_", "-")] = schema
    return {
        "type": "object",
        "description": (
            "A job definition. Keys may be written in kebab-case or snake_case. Give either "
            "'inputs' (one task per item) or 'args'/'kwargs' (one call), not both. Options left "
            "out take the task's defaults, then the master's."
        ),
        "properties": properties,
        "required": base["required"],
        "additionalProperties": False,
        "allOf": _shape_rules(),
    }


def _shape_rules() -> list[Schema]:
    """What ``JobSpec._shape`` checks across keys: chunk-size needs inputs; inputs exclude
    args and kwargs."""
    has_inputs: Schema = {"required": ["inputs"], "properties": {"inputs": {"type": "array"}}}
    rules = [
        {"if": {"required": [key], "properties": {key: {"type": "integer"}}}, "then": has_inputs}
        for key in ("chunk_size", "chunk-size")
    ]
    no_call = {"properties": {"args": {"type": "null"}, "kwargs": {"type": "null"}}}
    return [*rules, {"if": has_inputs, "then": no_call}]


def _job_schema() -> Schema:
    counts = {c: {"type": "integer", "minimum": 0} for c in ("total", *TASK_COUNTERS)}
    error = {"type": ["object", "null"], "properties": {"message": {"type": "string"}}}
    properties: Schema = {
        "id": {"type": "string"},
        "name": nullable_type("string"),
        "task": nullable_type("string"),
        "state": {"type": "string", "enum": [s.value for s in JobState]},
        "queue": nullable_type("string"),
        "reduce": nullable_type("string"),
        "kind": {"type": "string", "enum": ["item", "chunk", "call"]},
        "inputs": {"type": "integer", "minimum": 0},
        "chunk_size": nullable_type("integer"),
        "timeout": nullable_type("number"),
        "job_timeout": nullable_type("number"),
        "tasks": {"type": "object", "properties": counts, "required": list(counts)},
        "error": {**error, "description": "Why the job failed, was cancelled or timed out."},
        "priority": {"type": "integer"},
        "retries": {"type": "integer"},
        "created_at": {"type": "number", "description": "Epoch seconds."},
        "started_at": nullable_type("number"),
        "finished_at": nullable_type("number"),
        "task_errors": {
            "type": "object",
            "additionalProperties": {"type": "object"},
            "description": "Last error of each failed task, by task index "
            "(with ?errors=1, or when the job failed).",
        },
    }
    required = [k for k in properties if k != "task_errors"]
    return {"type": "object", "properties": properties, "required": required}


def _results_schema() -> Schema:
    head: Schema = {"id": {"type": "string"}, "state": {"type": "string"}}
    page = {
        "type": "object",
        "description": "One page of an item or chunk job's results, in input order "
        "(null where a task has no result yet).",
        "properties": {
            **head,
            "total": {"type": "integer", "minimum": 0},
            "offset": {"type": "integer", "minimum": 0},
            "count": {"type": "integer", "minimum": 0},
            "results": {"type": "array"},
        },
        "required": ["id", "state", "total", "offset", "count", "results"],
    }
    single = {
        "type": "object",
        "description": "The result of a call job, or a job's reduce result (null until it is "
        "there); offset and limit do not apply.",
        "properties": {**head, "result": {}},
        "required": ["id", "state", "result"],
    }
    return {"anyOf": [page, single]}


def _worker_schema() -> Schema:
    return {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "host": {"type": "string"},
            "pid": {"type": "integer"},
            "queues": {"type": "array", "items": {"type": "string"}},
            "concurrency": {"type": "integer"},
            "async_concurrency": {"type": "integer"},
            "tasks": {"type": "array", "items": {"type": "string"}},
            "heartbeat_interval": {"type": "number"},
            "started_at": {"type": "number"},
            "last_seen_s": {"type": "number", "description": "Seconds since its last heartbeat."},
            "running": {"type": "integer", "description": "Tasks it holds a lease on."},
            "alive": {"type": "boolean"},
            "state": {
                "type": "string",
                "enum": ["alive", "lost"],
                "description": "lost: it missed 3 heartbeats (killed, hung or cut off).",
            },
            "busy": {"type": "integer", "description": "Tasks running in its children."},
            "slots": {"type": "integer"},
            "done": {"type": "integer", "description": "Tasks it finished since it started."},
            "failed": {"type": "integer", "description": "Failed attempts since it started."},
            "cpu_percent": {"type": "number", "description": "Itself and its children."},
            "rss_mb": {"type": "number", "description": "Itself and its children."},
        },
        "required": ["id", "name", "last_seen_s", "running", "alive", "state"],
    }


def _task_logs_schema() -> Schema:
    log = {
        "type": "object",
        "properties": {
            "task": {"type": "string", "description": "Task index ('r': reduce)."},
            "attempt": {"type": "integer", "minimum": 1},
            "text": {"type": "string", "description": "stdout, stderr and logging, in order."},
            "truncated": {"type": "boolean", "description": "Only head and tail were kept."},
        },
        "required": ["task", "attempt", "text", "truncated"],
    }
    return {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "logs": {"type": "array", "items": log},
            "next": {"type": ["integer", "null"], "minimum": 0},
            "dropped": {"type": "integer", "minimum": 0},
        },
        "required": ["id", "logs", "next", "dropped"],
    }


def _operations() -> dict[str, dict[str, Schema]]:
    job_id = job_id_param()
    public: list[Schema] = []
    return {
        "/api/v1/health": {
            "get": {
                "operationId": "health",
                "summary": "Liveness: the master answers and reaches Redis.",
                "security": public,
                "responses": {
                    "200": json_body(ref("schemas", "Health"), "Master and broker are up."),
                    "503": ref("responses", "BrokerDown"),
                },
            }
        },
        PATH: {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "security": public,
                "responses": {"200": json_body({"type": "object"}, "The OpenAPI document.")},
            }
        },
        "/api/v1/jobs": {
            "post": {
                "operationId": "submitJob",
                "summary": "Submit a job; its inputs are split into tasks and queued.",
                "parameters": [
                    {
                        "name": "wait",
                        "in": "query",
                        "required": False,
                        "description": "Seconds (0 to 60) to hold the request for the job to "
                        "end: if it does, the reply's `job` is its final record, with `result` "
                        "for an `args` or reduce job that succeeded. Without it, or when the "
                        "time runs out, the reply has no `job`; follow the job's events.",
                        "schema": {"type": "number", "minimum": 0, "maximum": 60, "default": 0},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref("schemas", "JobDefinition")}},
                },
                "responses": {
                    "201": json_body(ref("schemas", "Submitted"), "Accepted as a new job."),
                    "200": json_body(
                        ref("schemas", "Submitted"),
                        "The idempotency key names an existing job with the same definition: "
                        "that job (duplicate: true).",
                    ),
                    **errors("BadRequest", "TooLarge", "Conflict", "Unprocessable", "QueueFull"),
                },
            },
            "get": {
                "operationId": "listJobs",
                "summary": "Jobs, newest first, filtered; `next` continues the scan.",
                "parameters": [
                    int_query("limit", 50, 1, LIST_LIMIT_MAX, "How many jobs to read."),
                    int_query("offset", 0, 0, MAX_OFFSET, "How many of the newest to skip."),
                    {
                        "name": "state",
                        "in": "query",
                        "required": False,
                        "description": "Only jobs in this state.",
                        "schema": {"type": "string", "enum": [s.value for s in JobState]},
                    },
                    text_query(
                        "name",
                        200,
                        "Only jobs whose name contains this (ASCII letters in any case).",
                    ),
                    text_query("q", 64, "Only jobs whose id starts with this."),
                    time_query("since", "Only jobs created at or after this time."),
                    time_query("until", "Only jobs created at or before this time."),
                ],
                "responses": {
                    "200": json_body(ref("schemas", "JobList"), "A page of jobs."),
                    **errors("BadRequest"),
                },
            },
        },
        "/api/v1/jobs/{job_id}": {
            "get": {
                "operationId": "getJob",
                "summary": "A job's record: options, state, task counts, timestamps, error.",
                "parameters": [
                    job_id,
                    {
                        "name": "errors",
                        "in": "query",
                        "required": False,
                        "description": "1: include every failed task's last error "
                        "(always included when the job failed).",
                        "schema": {"type": "string", "enum": ["0", "1"]},
                    },
                ],
                "responses": {
                    "200": json_body(ref("schemas", "Job"), "The job."),
                    **errors("BadRequest", "NotFound"),
                },
            }
        },
        "/api/v1/jobs/{job_id}/results": {
            "get": {
                "operationId": "getResults",
                "summary": "A job's results so far, in input order, one page at a time.",
                "parameters": [
                    job_id,
                    int_query("offset", 0, 0, MAX_OFFSET, "First input index of the page."),
                    int_query("limit", 1000, 1, RESULTS_LIMIT_MAX, "Most results per page."),
                ],
                "responses": {
                    "200": json_body(ref("schemas", "Results"), "The results."),
                    **errors("BadRequest", "NotFound"),
                },
            }
        },
        "/api/v1/jobs/{job_id}/cancel": {
            "post": {
                "operationId": "cancelJob",
                "summary": "Cancel a job: queued tasks are dropped, running ones stopped.",
                "parameters": [job_id],
                "responses": {
                    "200": json_body(
                        ref("schemas", "Cancelled"),
                        "The job after the request; cancelled is false if it had already ended.",
                    ),
                    **errors("NotFound"),
                },
            }
        },
        "/api/v1/jobs/{job_id}/events": {
            "get": {
                "operationId": "jobEvents",
                "summary": "Server-sent events of a job until it ends.",
                "description": (
                    "Stored events after `after` (or Last-Event-ID) are replayed, then live ones "
                    "follow, with `job.progress` snapshots in between; the stream ends after a "
                    "last `job.progress` event carrying the final job record (with `result`, the "
                    "value, when a job with `args` or a reduce step succeeded). Each event has an "
                    "`id` to resume from, an `event` type (job.submitted, job.started, "
                    "task.started, task.succeeded, task.retrying, job.succeeded, job.progress, "
                    "...; the module sje.events lists them all) and JSON `data`."
                ),
                "parameters": [
                    job_id,
                    {
                        "name": "after",
                        "in": "query",
                        "required": False,
                        "description": "Send only events after this event id (0: all).",
                        "schema": {"type": "string", "pattern": _EVENT_ID, "default": "0"},
                    },
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "description": "As `after`, set by reconnecting SSE clients; wins. "
                        "Empty: not given.",
                        "schema": {"type": "string", "pattern": f"^$|{_EVENT_ID}"},
                    },
                    {
                        "name": "scope",
                        "in": "query",
                        "required": False,
                        "description": "job: only job-level events, and a progress snapshot "
                        "at least every half second; all (default): every event.",
                        "schema": {"type": "string", "enum": ["all", "job"], "default": "all"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "An event stream (text/event-stream).",
                        "content": {"text/event-stream": {"schema": event_schema()}},
                    },
                    **errors("BadRequest", "NotFound"),
                },
            }
        },
        "/api/v1/jobs/{job_id}/logs": {
            "get": {
                "operationId": "jobLogs",
                "summary": "What the job's tasks printed and logged, per attempt.",
                "description": (
                    "With `task`: every stored attempt of that task. Without: the logs of the "
                    "tasks that have any, by task index (reduce last) then attempt, `limit` "
                    "tasks from `offset` (a page also ends after about 4 MiB of text); `next` "
                    "is the offset of the next page. Each attempt keeps its first and last 32 "
                    "KiB; a job keeps at most 10,000 logs and 32 MiB, and counts the logs "
                    "refused beyond that in `dropped`."
                ),
                "parameters": [
                    job_id,
                    {
                        "name": "task",
                        "in": "query",
                        "required": False,
                        "description": "Only this task: its index (an index the job does "
                        "not have has no logs), or r for the reduce step.",
                        "schema": {"type": "string", "pattern": "^([0-9]+|r)$"},
                    },
                    int_query("offset", 0, 0, MAX_OFFSET, "How many tasks with logs to skip."),
                    int_query("limit", 100, 1, LOGS_LIMIT_MAX, "Most tasks per page."),
                ],
                "responses": {
                    "200": json_body(ref("schemas", "TaskLogs"), "The logs."),
                    **errors("BadRequest", "NotFound"),
                },
            }
        },
        "/api/v1/workers": {
            "get": {
                "operationId": "listWorkers",
                "summary": "Registered workers with their last heartbeat and running tasks.",
                "responses": {
                    "200": json_body(ref("schemas", "WorkerList"), "The workers."),
                    **errors(),
                },
            }
        },
    }


def _schemas() -> dict[str, Schema]:
    codes = sorted(
        {c.code for c in (InvalidRequest, InvalidJob, UnknownTask, JobNotFound, EntryNotFound)}
        | {c.code for c in (RequestTooLarge, IdempotencyConflict, NotRequeueable, QueueFull)}
        | {BrokerError.code}
        | {"unauthorized"}
    )
    return {
        "Error": {
            "type": "object",
            "properties": {
                "error": {
                    "type": "object",
                    "properties": {
                        "code": {
                            "type": "string",
                            "description": "Stable machine-readable code: " + ", ".join(codes),
                        },
                        "message": {
                            "type": "string",
                            "description": "What happened and what to do about it.",
                        },
                    },
                    "required": ["code", "message"],
                }
            },
            "required": ["error"],
        },
        "Health": {
            "type": "object",
            "properties": {"status": {"const": "ok"}, "broker": {"const": "ok"}},
            "required": ["status", "broker"],
        },
        "JobDefinition": job_definition_schema(),
        "Submitted": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "duplicate": {"type": "boolean"},
                "tasks": {"type": "integer", "minimum": 1},
                "job": {
                    **ref("schemas", "Job"),
                    "description": "With `wait`, when the job ended in time: its final "
                    "record, plus `result` (the value of an `args` or reduce job).",
                },
            },
            "required": ["id", "duplicate", "tasks"],
        },
        "Job": _job_schema(),
        "JobList": {
            "type": "object",
            "properties": {
                "jobs": {"type": "array", "items": ref("schemas", "Job")},
                "next": {
                    "type": ["integer", "null"],
                    "description": "The offset to ask for next, or null at the end.",
                },
            },
            "required": ["jobs", "next"],
        },
        "Results": _results_schema(),
        "Cancelled": {
            "allOf": [
                ref("schemas", "Job"),
                {
                    "type": "object",
                    "properties": {"cancelled": {"type": "boolean"}},
                    "required": ["cancelled"],
                },
            ]
        },
        "DeadLetter": dead_letter_schema(),
        "DeadLetterList": {
            "type": "object",
            "properties": {
                "total": {"type": "integer", "minimum": 0},
                "offset": {"type": "integer", "minimum": 0},
                "entries": {"type": "array", "items": ref("schemas", "DeadLetter")},
            },
            "required": ["total", "offset", "entries"],
        },
        "Requeued": {
            "type": "object",
            "properties": {
                "entry": {"type": "string"},
                "job": {"type": "string"},
                "queued": {"type": "integer", "minimum": 0},
            },
            "required": ["entry", "job", "queued"],
        },
        "TaskLogs": _task_logs_schema(),
        "Worker": _worker_schema(),
        "WorkerList": {
            "type": "object",
            "properties": {"workers": {"type": "array", "items": ref("schemas", "Worker")}},
            "required": ["workers"],
        },
    }


def document() -> Schema:
    """The whole OpenAPI document (a fresh copy)."""
    doc: Schema = orjson.loads(_document_bytes())
    return doc


@functools.cache
def _document_bytes() -> bytes:
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": "SJE master API",
            "version": __version__,
            "description": (
                "Submit jobs, follow them and read their results. Errors are "
                '`{"error": {"code", "message"}}`. When the master has a token (SJE_TOKEN), '
                "every route but the health check and this document needs "
                "`Authorization: Bearer <token>`."
            ),
        },
        "paths": {
            **_operations(),
            **view_operations(),
            **dlq_operations(),
        },
        "components": {
            "schemas": {**_schemas(), **view_schemas()},
            "responses": {name: body for name, (_status, body) in ERROR_RESPONSES.items()},
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The master's token (SJE_TOKEN or token: in its config).",
                }
            },
        },
        "security": [{"bearer": []}],
    }
    return orjson.dumps(doc)


async def openapi_json(request: Request) -> Response:
    return Response(_document_bytes(), media_type="application/json")


def monitor_document() -> Schema:
    """The monitor's document: the master's routes but submit, plus session and metrics."""
    doc = document()
    del doc["paths"]["/api/v1/jobs"]["post"]
    doc["paths"].update(monitor_operations())
    doc["info"]["title"] = "SJE monitor API"
    doc["info"]["description"] = (
        "What the dashboard shows and does, for programs. Errors are "
        '`{"error": {"code", "message"}}`. Every route but the health check and this document '
        "needs `Authorization: Bearer <token>` (or a signed-in browser session, whose POST and "
        "DELETE requests also carry X-SJE-CSRF)."
    )
    return doc


@functools.cache
def _monitor_bytes() -> bytes:
    return orjson.dumps(monitor_document())


async def monitor_openapi_json(request: Request) -> Response:
    return Response(_monitor_bytes(), media_type="application/json")
