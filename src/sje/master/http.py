"""HTTP plumbing shared by the master's routes: JSON responses, errors, query parameters."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from sje.errors import InvalidRequest, QueueFull, RequestTooLarge, SJEError

#: a Redis stream entry id, as events carry it
EVENT_ID = re.compile(r"[0-9]{1,19}(-[0-9]{1,19}){0,2}")  # <ms>[-<seq>[-<j>]]
#: the largest offset a paged route accepts (Redis ranges are 64-bit)
MAX_OFFSET = 1_000_000_000_000


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers, media_type="application/json")


def query_int(request: Request, name: str, default: int, lo: int, hi: int | None) -> int:
    """An integer query parameter within ``[lo, hi]``, or ``InvalidRequest`` saying so."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    value = int(raw) if raw.isascii() and raw.isdigit() else lo - 1
    if value < lo or (hi is not None and value > hi):
        upper = f" to {hi}" if hi is not None else " or more"
        raise InvalidRequest(
            f"Query parameter '{name}={raw}': expected a whole number from {lo}{upper}."
        )
    return value


def query_seconds(request: Request, name: str, hi: float) -> float:
    """A duration in seconds (a number from 0 to ``hi``; 0 when absent), or ``InvalidRequest``."""
    raw = request.query_params.get(name)
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= hi:  # also refuses nan
        raise InvalidRequest(
            f"Query parameter '{name}={raw}': expected a number of seconds from 0 to {hi:g}."
        )
    return value


def query_choice(request: Request, name: str, default: str, choices: Sequence[str]) -> str:
    """A query parameter that must be one of ``choices``, or ``InvalidRequest`` saying so."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if raw not in choices:
        raise InvalidRequest(
            f"Query parameter '{name}={raw}': expected one of {', '.join(choices)}."
        )
    return raw


def query_text(request: Request, name: str, max_len: int = 200) -> str | None:
    """A free-text query parameter (None when absent or empty), at most ``max_len`` long."""
    raw = request.query_params.get(name)
    if raw is not None and len(raw) > max_len:
        raise InvalidRequest(
            f"Query parameter '{name}': {len(raw)} characters; at most {max_len} are allowed."
        )
    return raw.strip() or None if raw is not None else None


def query_epoch_ms(request: Request, name: str) -> int | None:
    """An epoch time in seconds (decimals allowed) as milliseconds, or None when absent."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e11:
        raise InvalidRequest(
            f"Query parameter '{name}={raw[:40]}': expected a time in seconds since 1970 "
            "(like 1735689600)."
        )
    return int(value * 1000)


def resume_after(request: Request, default: str = "0") -> str:
    """Where an event stream starts: after the ``Last-Event-ID`` a reconnecting client sends,
    else after ``?after=`` (default ``0``: every stored event)."""
    header = request.headers.get("last-event-id") or None
    query = request.query_params.get("after")
    for where, raw in (("Header 'Last-Event-ID: ", header), ("Query parameter 'after=", query)):
        if raw is not None and not EVENT_ID.fullmatch(raw):
            raise InvalidRequest(
                f"{where}{raw}': expected the id of an event received (like 1712345678901-0), "
                "or 0 for every event."
            )
    return header or query or default


def error_response(exc: SJEError) -> Response:
    headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, QueueFull) else None
    body = {"error": {"code": exc.code, "message": exc.message}}
    return json_response(body, exc.http_status, headers)


async def read_body(request: Request, limit_mb: float) -> bytes:
    """The request body, refused with ``RequestTooLarge`` as soon as it passes ``limit_mb``
    (whatever Content-Length claims, so a chunked upload cannot exhaust memory either)."""
    limit = int(limit_mb * 1024 * 1024)
    too_large = RequestTooLarge(
        f"Request body over max-request-mb={limit_mb:g}: split the job into smaller ones, or "
        "raise max-request-mb on the master."
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


_HTTP_MESSAGES = {
    404: "No such route: {method} {path}. The API is described at /api/v1/openapi.json.",
    405: "{method} is not allowed on {path}. The API is described at /api/v1/openapi.json.",
}


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (unknown route, wrong method) in the API's JSON error shape."""
    status = getattr(exc, "status_code", 500)
    template = _HTTP_MESSAGES.get(status, "{detail}")
    message = template.format(
        method=request.method, path=request.url.path, detail=getattr(exc, "detail", "")
    )
    headers = getattr(exc, "headers", None)
    body = {"error": {"code": "not_found" if status == 404 else "http", "message": message}}
    return json_response(body, status, headers)


#: for ``Starlette(exception_handlers=...)``
HTTP_ERROR_HANDLERS = {HTTPException: http_error}
