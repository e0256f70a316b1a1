"""The OpenAPI description of the dead-letter routes (``sje.master.api_dlq``)."""

from __future__ import annotations

from sje.master.http import MAX_OFFSET
from sje.master.openapi_parts import LIST_LIMIT_MAX, Schema, errors, int_query, json_body, ref


def dlq_operations() -> dict[str, dict[str, Schema]]:
    entry_id = {
        "name": "entry_id",
        "in": "path",
        "required": True,
        "description": "Dead-letter entry id (<job>:<task index>, or orphan-<n>).",
        "schema": {"type": "string", "minLength": 1},
    }
    requeued = json_body(ref("schemas", "Requeued"), "The entry's job is running again.")
    purged = json_body(
        {
            "type": "object",
            "properties": {"purged": {"type": "integer", "minimum": 0}},
            "required": ["purged"],
        },
        "How many entries were deleted.",
    )
    return {
        "/api/v1/dlq": {
            "get": {
                "operationId": "listDeadLetters",
                "summary": "Dead-letter entries, newest first.",
                "parameters": [
                    int_query("limit", 50, 1, LIST_LIMIT_MAX, "How many entries to read."),
                    int_query("offset", 0, 0, MAX_OFFSET, "How many of the newest to skip."),
                ],
                "responses": {
                    "200": json_body(ref("schemas", "DeadLetterList"), "A page of entries."),
                    **errors("BadRequest"),
                },
            },
            "delete": {
                "operationId": "purgeDeadLetters",
                "summary": "Delete every dead-letter entry.",
                "responses": {"200": purged, **errors()},
            },
        },
        "/api/v1/dlq/requeue": {
            "post": {
                "operationId": "requeueDeadLetters",
                "summary": "Requeue the jobs of every entry; entries that cannot be are skipped.",
                "responses": {
                    "200": json_body(
                        {
                            "type": "object",
                            "properties": {
                                "requeued": {
                                    "type": "array",
                                    "items": ref("schemas", "Requeued"),
                                },
                                "skipped": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "entry": {"type": "string"},
                                            "reason": {"type": "string"},
                                        },
                                        "required": ["entry", "reason"],
                                    },
                                },
                            },
                            "required": ["requeued", "skipped"],
                        },
                        "What was requeued and what was skipped, with why.",
                    ),
                    **errors(),
                },
            }
        },
        "/api/v1/dlq/{entry_id}": {
            "get": {
                "operationId": "getDeadLetter",
                "summary": "An entry with its payload (or raw queue entry) and its job's state.",
                "parameters": [entry_id],
                "responses": {
                    "200": json_body(ref("schemas", "DeadLetter"), "The entry."),
                    **errors("EntryNotFound"),
                },
            },
            "delete": {
                "operationId": "purgeDeadLetter",
                "summary": "Delete an entry.",
                "parameters": [entry_id],
                "responses": {"200": purged, **errors("EntryNotFound")},
            },
        },
        "/api/v1/dlq/{entry_id}/requeue": {
            "post": {
                "operationId": "requeueDeadLetter",
                "summary": "Reopen the entry's failed job: its tasks that did not succeed run "
                "again.",
                "parameters": [entry_id],
                "responses": {
                    "200": requeued,
                    **errors("EntryNotFound", "NotRequeueable"),
                },
            }
        },
    }


def dead_letter_schema() -> Schema:
    return {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "at": {"type": "number", "description": "When it was dead-lettered (epoch seconds)."},
            "job": {"type": "string"},
            "task": {"type": "string", "description": "Task index in the job ('r': reduce)."},
            "name": {"type": "string", "description": "Task name."},
            "queue": {"type": "string"},
            "state": {"type": "string", "enum": ["failed", "dead"]},
            "attempt": {"type": "integer"},
            "error": {"type": "object"},
            "job_state": {"type": "string", "description": "In GET of one entry."},
            "payload": {"type": ["string", "null"], "description": "In GET of one entry."},
            "raw": {"type": "string", "description": "In GET of an orphan entry."},
        },
        "required": ["id", "at", "state", "error"],
    }
