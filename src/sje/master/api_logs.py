"""The task log route of the master API: ``GET /api/v1/jobs/{job_id}/logs``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from sje.broker.base import TaskLogs
from sje.errors import InvalidRequest
from sje.master.http import MAX_OFFSET, json_response, query_int

#: most tasks in one page of a job's logs
LOGS_LIMIT_MAX = 1000

JobLookup = Callable[[str], Awaitable[dict[str, str]]]


def _task(request: Request) -> str | None:
    """The ``task`` query parameter: a task index or ``r``; None when absent. An index the job
    does not have is no error: that task has no logs."""
    raw = request.query_params.get("task")
    if raw is None or raw == "r":
        return raw
    try:
        return str(query_int(request, "task", 0, 0, None))
    except InvalidRequest:
        raise InvalidRequest(
            f"Query parameter 'task={raw}': expected a task index (0, 1, ...), or r for the "
            "reduce step."
        ) from None


class TaskLogRoutes:
    """``job_or_404`` is the API's job lookup, which raises ``JobNotFound`` for unknown ids."""

    def __init__(self, logs: TaskLogs, job_or_404: JobLookup) -> None:
        self.logs = logs
        self.job_or_404 = job_or_404

    async def page(self, request: Request) -> Response:
        """Every attempt's log of one task (``?task=``), or a page of the job's tasks' logs."""
        job_id = request.path_params["job_id"]
        offset = query_int(request, "offset", 0, 0, MAX_OFFSET)
        limit = query_int(request, "limit", 100, 1, LOGS_LIMIT_MAX)
        task = _task(request)
        await self.job_or_404(job_id)
        if task is None:
            page = await self.logs.of_job(job_id, offset, limit)
        else:
            page = await self.logs.of_task(job_id, task)
        body = {"id": job_id, "logs": page.logs, "next": page.next, "dropped": page.dropped}
        return json_response(body)
