"""The master's HTTP/JSON API (``/api/v1``), used by the CLI, the Python client and plain HTTP.

Errors are ``{"error": {"code", "message"}}`` with the status of the ``SJEError`` subclass;
a full queue answers 429 with ``Retry-After``. When a token is configured every route but
``/api/v1/health`` needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from sje.broker.base import Broker, JobEnd, NewJob, SubmitOutcome
from sje.broker.redis import EVENTS_PAGE
from sje.config import MasterSettings
from sje.errors import (
    IdempotencyConflict,
    InvalidJob,
    JobNotFound,
    QueueFull,
    SJEError,
)
from sje.events import JOB_PROGRESS, event_view
from sje.master.api_dlq import DeadLetterRoutes
from sje.master.api_logs import TaskLogRoutes
from sje.master.api_views import ViewRoutes
from sje.master.http import (
    HTTP_ERROR_HANDLERS,
    MAX_OFFSET,
    error_response,
    json_response,
    query_choice,
    query_int,
    query_seconds,
    read_body,
    resume_after,
)
from sje.master.openapi import monitor_openapi_json, openapi_json
from sje.master.planner import check_tasks, plan
from sje.master.views import is_terminal, job_view, progress_view, sse, until_failure
from sje.master.waiters import JobEnds
from sje.models import MAX_SUBMIT_WAIT_S, parse_job
from sje.results import flatten, task_range
from sje.tasks import TaskDefaults

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]
_CATALOG_TTL_S = 2.0
_MAX_PAGE = 10_000
_PROGRESS_EVERY_MS = 500
_KEEPALIVE_MS = 5000


def _is_job_id(text: str) -> bool:
    """False for text with ':', which would name another key of a job (ids are hex)."""
    return ":" not in text


class BearerAuth:
    """Requests must carry ``Authorization: Bearer <token>`` (no token: anyone may call)."""

    def __init__(self, token: str | None) -> None:
        self.token = token

    def bearer_ok(self, request: Request) -> bool:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def check(self, request: Request) -> Response | None:
        """None when the request may proceed, else the response refusing it."""
        if self.token is None or self.bearer_ok(request):
            return None
        return unauthorized()


def unauthorized() -> Response:
    body = {
        "error": {
            "code": "unauthorized",
            "message": "Missing or wrong API token: set SJE_TOKEN to the token "
            "the master printed at its first start (`sje token` prints it).",
        }
    }
    return json_response(body, 401)


class Auth(Protocol):
    def check(self, request: Request) -> Response | None: ...


class Api:
    """Route handlers bound to one broker. With ``settings`` and ``key`` (a master) it accepts
    jobs; without (a monitor) it serves every other route."""

    def __init__(
        self,
        broker: Broker,
        settings: MasterSettings | None,
        key: bytes | None,
        auth: Auth,
    ) -> None:
        self.broker = broker
        self.settings = settings
        self.key = key
        self.auth = auth
        self._catalog: dict[str, TaskDefaults] = {}
        self._catalog_at = 0.0
        self.ends = JobEnds(broker.views)

    def guarded(self, handler: Handler, *, public: bool = False) -> Handler:
        auth = self.auth

        async def run(request: Request) -> Response:
            refused = None if public else auth.check(request)
            if refused is not None:
                return refused
            try:
                return await handler(request)
            except SJEError as exc:
                return error_response(exc)

        return run

    async def catalog(self) -> dict[str, TaskDefaults]:
        if time.monotonic() - self._catalog_at > _CATALOG_TTL_S:
            self._catalog = await self.broker.task_catalog()
            self._catalog_at = time.monotonic()
        return self._catalog

    async def _job_or_404(self, job_id: str) -> dict[str, str]:
        raw = await self.broker.job(job_id) if _is_job_id(job_id) else None
        if raw is None:
            raise JobNotFound(
                f"No job '{job_id}': it never existed or its results expired (result-ttl). "
                "List jobs with `sje jobs`."
            )
        return raw

    # -- routes ----------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        await self.broker.ping()
        return json_response({"status": "ok", "broker": "ok"})

    async def submit(self, request: Request) -> Response:
        assert self.settings is not None and self.key is not None, "submit is a master's route"
        wait = query_seconds(request, "wait", MAX_SUBMIT_WAIT_S)
        body = await read_body(request, self.settings.max_request_mb)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidJob(f"Request body is not valid JSON: {exc}") from None
        spec = parse_job(data)
        catalog = await self.catalog()
        if spec.task not in catalog or (spec.reduce and spec.reduce not in catalog):
            self._catalog_at = 0.0
            catalog = await self.catalog()
        check_tasks(spec, catalog)
        new = plan(spec, catalog, self.settings, self.key)
        if not wait:
            outcome = await self._store(new, spec.idempotency_key)
            return self._accepted(outcome, len(new.payloads))
        async with self.ends.watching(new.id) as ended:
            outcome = await self._store(new, spec.idempotency_key)
            if outcome.job_id == new.id:
                final = await self._final_after(new.id, ended, wait, checked=False)
                return self._accepted(outcome, len(new.payloads), final)
        async with self.ends.watching(outcome.job_id) as ended:  # an earlier job (duplicate)
            final = await self._final_after(outcome.job_id, ended, wait, checked=True)
        return self._accepted(outcome, len(new.payloads), final)

    async def _store(self, new: NewJob, idempotency_key: str | None) -> SubmitOutcome:
        outcome = await self.broker.submit(new)
        if outcome.status == "full":
            raise QueueFull(
                f"Queue full: queue '{new.queue}' holds {outcome.depth} tasks and its bound is "
                f"{new.max_queue_length} (max-queue-length); this job adds {len(new.payloads)}. "
                "Retry later, or raise max-queue-length on the master."
            )
        if outcome.status == "conflict":
            raise IdempotencyConflict(
                f"Idempotency key '{idempotency_key}' already belongs to job "
                f"{outcome.job_id} with a different definition; use a new key."
            )
        log.debug("job %s %s (%d tasks)", outcome.job_id, outcome.status, len(new.payloads))
        return outcome

    @staticmethod
    def _accepted(
        outcome: SubmitOutcome, tasks: int, final: dict[str, Any] | None = None
    ) -> Response:
        duplicate = outcome.status == "duplicate"
        body: dict[str, Any] = {"id": outcome.job_id, "duplicate": duplicate, "tasks": tasks}
        if final is not None:
            body["job"] = final
        return json_response(body, 200 if duplicate else 201)

    async def _final_after(
        self, job_id: str, ended: asyncio.Future[JobEnd | None], wait: float, checked: bool
    ) -> dict[str, Any] | None:
        """The final record of a stored job that ends within ``wait`` s, else None; with
        ``checked`` its state is read first (it may have ended before ``ended`` was set up).
        What the job end carries is not read again. Never raises: the job is stored, so the
        reply must say so (the client then follows its events)."""
        try:
            raw = await self.broker.job(job_id) if checked else None
            end = None
            if raw is None or not is_terminal(raw):
                with contextlib.suppress(asyncio.TimeoutError):  # not TimeoutError on 3.10
                    end = await asyncio.wait_for(asyncio.shield(ended), wait)
                if end is not None and end.record is not None:
                    raw = end.record
                else:
                    raw = await self.broker.job(job_id)
            if raw is None or not is_terminal(raw):
                return None
            return await self._final_view(job_id, raw, end.value if end is not None else None)
        except SJEError as exc:
            log.warning("job %s: answered without its outcome: %s", job_id, exc)
            return None

    async def get_job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        errors = query_choice(request, "errors", "0", ("0", "1")) == "1"
        raw = await self._job_or_404(job_id)
        return json_response(await self._full_view(job_id, raw, errors))

    async def _full_view(self, job_id: str, raw: dict[str, str], errors: bool) -> dict[str, Any]:
        """The job record; with every task's last error when asked or when the job failed."""
        view = job_view(job_id, raw)
        if errors or raw.get("state") == "failed":
            view["task_errors"] = {
                k: orjson.loads(v) for k, v in (await self.broker.errors(job_id)).items()
            }
        return view

    async def _final_view(
        self, job_id: str, raw: dict[str, str], value: bytes | None = None
    ) -> dict[str, Any]:
        """An ended job's whole record, with the value of a job that has one (args, reduce),
        read unless given: waiting clients need nothing more."""
        final = await self._full_view(job_id, raw, errors=False)
        if raw["state"] == "succeeded" and (raw.get("reduce") or raw["kind"] == "call"):
            if value is None:
                value = await self._value(job_id, bool(raw.get("reduce")))
            final["result"] = orjson.Fragment(value or b"null")
        return final

    async def results(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        offset = query_int(request, "offset", 0, 0, MAX_OFFSET)
        limit = query_int(request, "limit", 1000, 1, _MAX_PAGE)
        raw = await self._job_or_404(job_id)
        head = {"id": job_id, "state": raw["state"]}
        if raw.get("reduce") or raw["kind"] == "call":
            value = await self._value(job_id, bool(raw.get("reduce")))
            return Response(
                orjson.dumps(head)[:-1] + b',"result":' + (value or b"null") + b"}",
                media_type="application/json",
            )
        total = int(raw["inputs"])
        stop = min(total, offset + limit)
        items = await self._page(job_id, raw, offset, stop)
        meta = orjson.dumps(
            {**head, "total": total, "offset": offset, "count": max(0, stop - offset)}
        )
        return Response(
            meta[:-1] + b',"results":[' + b",".join(items) + b"]}", media_type="application/json"
        )

    async def _value(self, job_id: str, reduce: bool) -> bytes | None:
        """The value of a job that has one: its reduce output, or its ``args`` call's result."""
        if reduce:
            return await self.broker.reduce_result(job_id)
        return (await self.broker.results(job_id, 0, 1))[0]

    async def _page(self, job_id: str, raw: dict[str, str], start: int, stop: int) -> list[bytes]:
        size = int(raw.get("chunk_size") or 0)
        first, last = task_range(size, start, stop)
        return flatten(await self.broker.results(job_id, first, last), size, first, start, stop)

    async def cancel(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        status = await self.broker.cancel(job_id) if _is_job_id(job_id) else "missing"
        raw = await self._job_or_404(job_id)
        return json_response({**job_view(job_id, raw), "cancelled": status == "ok"})

    async def workers(self, request: Request) -> Response:
        rows = await self.broker.workers()
        for row in rows:
            row["alive"] = row["state"] == "alive"
        return json_response({"workers": rows})

    async def events(self, request: Request) -> Response:
        """SSE. ``?scope=job`` sends job-level events and a progress snapshot at least every
        half second (what ``wait()`` and progress bars need); the default sends every event."""
        job_id = request.path_params["job_id"]
        after = resume_after(request)
        job_level = query_choice(request, "scope", "all", ("all", "job")) == "job"
        await self._job_or_404(job_id)
        stream = until_failure(self._event_stream(job_id, after, job_level))
        return StreamingResponse(stream, media_type="text/event-stream")

    async def _event_stream(self, job_id: str, after: str, job_level: bool) -> AsyncIterator[bytes]:
        """Stored events after ``after`` (a replay for late observers), then live ones, with
        ``progress`` snapshots between; the last snapshot shows the final state."""
        block = _PROGRESS_EVERY_MS if job_level else _KEEPALIVE_MS
        raw = await self.broker.job(job_id)
        while raw is not None:
            terminal = is_terminal(raw)
            batch = await self.broker.events(job_id, after, None if terminal else block, job_level)
            for entry_id, fields in batch:
                after = entry_id
                yield sse(fields["type"], event_view(entry_id, fields, job_id), entry_id)
            if terminal and len(batch) < EVENTS_PAGE:
                yield sse(JOB_PROGRESS, await self._final_view(job_id, raw))
                return
            raw = await self.broker.job(job_id)
            if raw is not None and not is_terminal(raw) and (batch or job_level):
                yield sse(JOB_PROGRESS, progress_view(job_id, raw))
            elif not batch:
                yield b": keepalive\n\n"

    def routes(self) -> list[Route]:
        g = self.guarded
        document = openapi_json if self.settings is not None else monitor_openapi_json
        views = ViewRoutes(self.broker, self._job_or_404)
        logs = TaskLogRoutes(self.broker.logs, self._job_or_404)
        # a master's hot route first: Starlette tries the routes in order (~1 us each)
        routes = []
        if self.settings is not None:
            routes.append(Route("/api/v1/jobs", g(self.submit), methods=["POST"]))
        routes += [
            Route("/api/v1/health", g(self.health, public=True)),
            Route("/api/v1/openapi.json", g(document, public=True)),
            Route("/api/v1/overview", g(views.overview)),
            Route("/api/v1/events", g(views.events)),
            Route("/api/v1/queues", g(views.queues)),
            Route("/api/v1/jobs", g(views.jobs), methods=["GET"]),
            Route("/api/v1/jobs/{job_id}", g(self.get_job)),
            Route("/api/v1/jobs/{job_id}/results", g(self.results)),
            Route("/api/v1/jobs/{job_id}/tasks", g(views.tasks)),
            Route("/api/v1/jobs/{job_id}/timeline", g(views.timeline)),
            Route("/api/v1/jobs/{job_id}/logs", g(logs.page)),
            Route("/api/v1/jobs/{job_id}/cancel", g(self.cancel), methods=["POST"]),
            Route("/api/v1/jobs/{job_id}/retry", g(views.retry), methods=["POST"]),
            Route("/api/v1/jobs/{job_id}/events", g(self.events)),
            Route("/api/v1/workers", g(self.workers)),
        ]
        dlq = DeadLetterRoutes(self.broker.dlq)
        routes += [
            Route("/api/v1/dlq", g(dlq.page), methods=["GET"]),
            Route("/api/v1/dlq", g(dlq.purge_all), methods=["DELETE"]),
            Route("/api/v1/dlq/requeue", g(dlq.requeue_all), methods=["POST"]),
            Route("/api/v1/dlq/{entry_id}", g(dlq.show), methods=["GET"]),
            Route("/api/v1/dlq/{entry_id}", g(dlq.purge), methods=["DELETE"]),
            Route("/api/v1/dlq/{entry_id}/requeue", g(dlq.requeue), methods=["POST"]),
        ]
        return routes

    def app(self) -> Starlette:
        return Starlette(routes=self.routes(), exception_handlers=HTTP_ERROR_HANDLERS)
