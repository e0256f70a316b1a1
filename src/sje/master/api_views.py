"""Routes behind the dashboard (served by masters and monitors alike): overview, filtered job
pages, per-task tables, timelines, queues, retrying a failed job and the global event stream.
Shapes are in ``docs/monitor.md``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from sje.broker.base import Broker, JobQuery
from sje.errors import NotRequeueable
from sje.events import event_view
from sje.master.http import (
    MAX_OFFSET,
    json_response,
    query_choice,
    query_epoch_ms,
    query_int,
    query_text,
    resume_after,
)
from sje.master.views import job_view, sse, until_failure
from sje.models import JobState, TaskState

_KEEPALIVE_MS = 5000
_TASK_STATES = [s.value for s in TaskState]


class ViewRoutes:
    def __init__(
        self, broker: Broker, job_or_404: Callable[[str], Awaitable[dict[str, str]]]
    ) -> None:
        self.broker = broker
        self.views = broker.views
        self.job_or_404 = job_or_404

    async def overview(self, request: Request) -> Response:
        window = query_int(request, "window", 3600, 60, 7200)
        return json_response(await self.views.overview(window))

    async def jobs(self, request: Request) -> Response:
        limit = query_int(request, "limit", 50, 1, 1000)
        offset = query_int(request, "offset", 0, 0, MAX_OFFSET)
        query = JobQuery(
            state=query_choice(request, "state", "", [s.value for s in JobState]) or None,
            name=query_text(request, "name"),
            since_ms=query_epoch_ms(request, "since"),
            until_ms=query_epoch_ms(request, "until"),
            id_prefix=query_text(request, "q", 64),
        )
        rows, next_offset = await self.views.find_jobs(query, limit, offset)
        return json_response({"jobs": [job_view(r["id"], r) for r in rows], "next": next_offset})

    async def tasks(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        state = query_choice(request, "state", "", _TASK_STATES) or None
        offset = query_int(request, "offset", 0, 0, MAX_OFFSET)
        limit = query_int(request, "limit", 100, 1, 1000)
        job = await self.job_or_404(job_id)
        total, rows = await self.views.tasks(job_id, job, state, offset, limit)
        return json_response({"id": job_id, "total": total, "offset": offset, "tasks": rows})

    async def timeline(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        limit = query_int(request, "limit", 200, 1, 10_000)
        await self.job_or_404(job_id)
        events = await self.views.timeline(job_id, limit)
        return json_response({"id": job_id, "events": [event_view(i, f) for i, f in events]})

    async def retry(self, request: Request) -> Response:
        """Requeue a failed job's failed and dead tasks (and everything it dropped)."""
        job_id = request.path_params["job_id"]
        job = await self.job_or_404(job_id)
        status, _, queued = await self.broker.dlq.requeue("", job_id)
        if status != "ok":
            raise NotRequeueable(
                f"Cannot retry job {job_id}: it is {job.get('state')}, not failed; only failed "
                "jobs can be retried."
            )
        return json_response({"id": job_id, "requeued": queued})

    async def queues(self, request: Request) -> Response:
        peek = query_int(request, "peek", 10, 0, 100)
        return json_response(await self.views.queues(peek))

    async def events(self, request: Request) -> Response:
        """SSE of the global stream: live events, or from ``after`` / ``Last-Event-ID``."""
        start = resume_after(request, "") or await self.views.last_event_id()
        return StreamingResponse(until_failure(self._stream(start)), media_type="text/event-stream")

    async def _stream(self, after: str) -> AsyncIterator[bytes]:
        yield b": connected\n\n"
        while True:
            batch = await self.views.global_events(after, _KEEPALIVE_MS)
            for event_id, fields in batch:
                after = event_id
                yield sse(fields.get("type", "event"), event_view(event_id, fields), event_id)
            if not batch:
                yield b": keepalive\n\n"
