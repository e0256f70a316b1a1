"""Calling a task in a child: its input decoded, its result encoded, its failure described.
Shared by the plain tasks (``sje.worker.child``) and the async ones (``sje.worker.child_async``).
"""

from __future__ import annotations

import traceback
from typing import Any

import orjson

from sje.tasks import Task

#: a ``done`` frame's outcome fields (``ok``, ``error``) and body
Outcome = tuple[dict[str, Any], bytes]


def error_info(exc: BaseException) -> dict[str, Any]:
    message = str(exc)
    if isinstance(exc, MemoryError) and not message:
        message = "the task ran out of memory; raise the worker's task-memory-mb or use less"
    return {
        "type": type(exc).__name__,
        "message": message,
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }


class BadPayload(Exception):
    """The payload is not the JSON its kind promises; the task is dead-lettered, not retried."""


def call_args(kind: str, payload: bytes) -> tuple[list[Any], dict[str, Any]]:
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise BadPayload(f"payload is not valid JSON ({exc}): {payload[:80]!r}") from None
    if kind == "call":
        if not (
            isinstance(value, dict)
            and isinstance(value.get("args"), list)
            and isinstance(value.get("kwargs"), dict)
            and len(value) == 2
        ):
            raise BadPayload('a call payload must be {"args": [...], "kwargs": {...}}')
        return value["args"], value["kwargs"]
    if kind == "chunk" and not isinstance(value, list):
        raise BadPayload("a chunk payload must be a JSON list")
    return [value], {}


def encode_result(task: Task[Any], value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        raise TypeError(
            f"task '{task.name}' returned a {type(value).__name__}, which is not JSON; "
            "return str, int, float, bool, None, list or dict"
        ) from None
