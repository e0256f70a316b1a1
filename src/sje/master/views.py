"""The JSON shapes the API returns for jobs, results and events (one place, used by every route)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from sje.errors import SJEError
from sje.events import STREAM_ERROR
from sje.models import TASK_COUNTERS, JobState

_NUMERIC = ("priority", "retries")
_SECONDS = ("created_at", "started_at", "finished_at")


def _num(value: str) -> float | None:
    return float(value) if value else None


def job_view(job_id: str, raw: dict[str, str]) -> dict[str, Any]:
    """A job record: options, state, task counts by state, timestamps (epoch seconds), error."""
    counts = {c: int(raw.get(f"c_{c}", "0")) for c in TASK_COUNTERS}
    total = int(raw.get("n", "0")) + (1 if raw.get("reduce") else 0)
    error = orjson.loads(raw["error"]) if raw.get("error") else None
    view: dict[str, Any] = {
        "id": job_id,
        "name": raw.get("name"),
        "task": raw.get("task"),
        "state": raw.get("state"),
        "queue": raw.get("queue"),
        "reduce": raw.get("reduce") or None,
        "kind": raw.get("kind"),
        "inputs": int(raw.get("inputs", "0")),
        "chunk_size": int(raw.get("chunk_size", "0")) or None,
        "timeout": _num(raw.get("timeout", "")),
        "job_timeout": _num(raw.get("job_timeout", "")),
        "tasks": {"total": total, **counts},
        "error": error,
    }
    for key in _NUMERIC:
        view[key] = int(raw.get(key, "0"))
    for key in _SECONDS:
        view[key] = int(raw[key]) / 1000 if raw.get(key) else None
    return view


def is_terminal(raw: dict[str, str]) -> bool:
    return JobState(raw["state"]).is_terminal


def progress_view(job_id: str, raw: dict[str, str]) -> dict[str, Any]:
    view = job_view(job_id, raw)
    return {"id": job_id, "state": view["state"], "tasks": view["tasks"], "error": view["error"]}


def sse(event: str, data: dict[str, Any], event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n"


async def until_failure(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """An event stream that, when the server cannot go on (its broker failed), ends with a
    ``stream.error`` event saying why: its headers are sent, so no error status can."""
    try:
        async for chunk in events:
            yield chunk
    except SJEError as exc:
        yield sse(STREAM_ERROR, {"code": exc.code, "message": exc.message})
