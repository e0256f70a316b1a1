"""The dead-letter routes of the master API (``/api/v1/dlq``): list, show, requeue, purge."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from sje.broker.base import DeadLetters
from sje.errors import EntryNotFound, NotRequeueable
from sje.master.http import MAX_OFFSET, json_response, query_int

_WHY = {
    "orphan": "it names no job (it was written into the queue by something other than a "
    "master, or corrupted)",
    "expired": "its job's record expired (result-ttl), so its inputs are gone",
}


def _missing(entry_id: str) -> EntryNotFound:
    return EntryNotFound(f"No dead-letter entry '{entry_id}'. List them with `sje dlq list`.")


class DeadLetterRoutes:
    def __init__(self, dlq: DeadLetters) -> None:
        self.dlq = dlq

    async def page(self, request: Request) -> Response:
        limit = query_int(request, "limit", 50, 1, 1000)
        offset = query_int(request, "offset", 0, 0, MAX_OFFSET)
        total, entries = await self.dlq.page(limit, offset)
        return json_response({"total": total, "offset": offset, "entries": entries})

    async def show(self, request: Request) -> Response:
        entry_id = request.path_params["entry_id"]
        entry = await self.dlq.entry(entry_id)
        if entry is None:
            raise _missing(entry_id)
        return json_response(entry)

    async def requeue(self, request: Request) -> Response:
        entry_id = request.path_params["entry_id"]
        return json_response(await self._requeue(entry_id))

    async def _requeue(self, entry_id: str) -> dict[str, object]:
        status, job_id, queued = await self.dlq.requeue(entry_id)
        if status == "missing":
            raise _missing(entry_id)
        if status != "ok":
            why = _WHY.get(status, f"its job {job_id} is {status}, not failed")
            raise NotRequeueable(
                f"Cannot requeue '{entry_id}': {why}. Purge it with `sje dlq purge {entry_id}`."
            )
        return {"entry": entry_id, "job": job_id, "queued": queued}

    async def requeue_all(self, request: Request) -> Response:
        requeued, skipped = [], []
        for entry_id in await self.dlq.ids():
            try:
                requeued.append(await self._requeue(entry_id))
            except EntryNotFound:
                continue  # requeued with an earlier entry of the same job
            except NotRequeueable as exc:
                skipped.append({"entry": entry_id, "reason": exc.message})
        return json_response({"requeued": requeued, "skipped": skipped})

    async def purge(self, request: Request) -> Response:
        entry_id = request.path_params["entry_id"]
        if not await self.dlq.purge([entry_id]):
            raise _missing(entry_id)
        return json_response({"purged": 1})

    async def purge_all(self, request: Request) -> Response:
        return json_response({"purged": await self.dlq.purge(None)})
