"""The asyncio client: the same calls as ``sje.Client`` and its job handles, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx
import orjson

from sje.client import (
    CONNECT_TIMEOUT_S,
    READ_TIMEOUT_S,
    Event,
    SSEParser,
    check_outcome,
    event_params,
    job_payload,
    raise_for,
    read_results,
    status_record,
    stream_dropped,
    submit_wait,
    unreachable,
    waited_too_long,
)
from sje.config import ClientSettings, load_settings


class AsyncClient:
    """The asyncio variant of ``Client``: the same calls, awaited."""

    def __init__(self, master_url: str | None = None, token: str | None = None) -> None:
        settings = load_settings(ClientSettings, None, {"master": master_url, "token": token})
        self.url = settings.master.rstrip("/")
        headers = settings.auth_headers
        timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout)

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(method, "/api/v1" + path, **kwargs)
        except httpx.TransportError as exc:
            timeout = kwargs.get("timeout") or self._http.timeout
            raise unreachable(self.url, exc, _timed_out(exc, timeout)) from exc
        raise_for(response.status_code, response.content, self.url)
        return response.json()

    async def submit(self, job_def: Mapping[str, Any], wait: float | None = None) -> AsyncJobHandle:
        """As ``Client.submit``: with ``wait``, the request waits up to that long for the end."""
        body = orjson.dumps(job_payload(job_def))
        headers = {"Content-Type": "application/json"}
        params, read_s = submit_wait(wait)
        timeout = httpx.Timeout(read_s, connect=CONNECT_TIMEOUT_S)
        reply = await self.request(
            "POST", "/jobs", content=body, headers=headers, params=params, timeout=timeout
        )
        return AsyncJobHandle(self, reply["id"], reply.get("job"))

    def job(self, job_id: str) -> AsyncJobHandle:
        return AsyncJobHandle(self, job_id)

    async def events(self, job_id: str, job_level: bool = False) -> AsyncIterator[Event]:
        parser = SSEParser()
        while True:
            streaming = False
            try:
                async with self._http.stream(
                    "GET",
                    f"/api/v1/jobs/{job_id}/events",
                    params=event_params(parser.after, job_level),
                ) as response:
                    if response.status_code >= 400:
                        raise_for(response.status_code, await response.aread(), self.url)
                    streaming = True
                    async for line in response.aiter_lines():
                        event = parser.feed(line)
                        if event is not None:
                            yield event
                        if parser.finished:
                            return
            except httpx.ReadTimeout:
                continue
            except httpx.TransportError as exc:
                if streaming and not isinstance(exc, httpx.TimeoutException):
                    raise stream_dropped(self.url, exc) from exc
                raise unreachable(self.url, exc, _timed_out(exc, self._http.timeout)) from exc

    async def aclose(self) -> None:
        await self._http.aclose()


def _timed_out(exc: httpx.TransportError, timeout: httpx.Timeout) -> float | None:
    """The seconds a request waited for an answer once connected, if that is how it failed
    (None: no connection could be made)."""
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return timeout.read
    return None


class AsyncJobHandle:
    """The asyncio variant of ``JobHandle``."""

    def __init__(self, client: AsyncClient, job_id: str, final: Event | None = None) -> None:
        self.client = client
        self.id = job_id
        self._final = final  # the ended job's record, when its submit waited for it

    async def status(self) -> dict[str, Any]:
        return dict(await self.client.request("GET", f"/jobs/{self.id}"))

    @property
    def ended(self) -> bool:
        """As ``JobHandle.ended``."""
        return self._final is not None

    async def wait(
        self, timeout: float | None = None, on_event: Callable[[Event], None] | None = None
    ) -> dict[str, Any]:
        """As ``JobHandle.wait``."""
        if self._final is not None:
            return status_record(self._final)

        async def drain() -> Event:
            final: Event = {}
            async for event in self.client.events(self.id, job_level=True):
                if on_event is not None:
                    on_event(event)
                final = event
            return final

        try:
            final = await asyncio.wait_for(drain(), timeout)
        except asyncio.TimeoutError:
            raise waited_too_long(self.id, timeout) from None
        return status_record(final)

    async def result(self, timeout: float | None = None) -> Any:
        view = await self.wait(timeout)
        check_outcome(view)
        steps = read_results(self.id, view)
        try:
            path, params = next(steps)
            while True:
                path, params = steps.send(await self.client.request("GET", path, params=params))
        except StopIteration as stop:
            return stop.value

    async def cancel(self) -> dict[str, Any]:
        return dict(await self.client.request("POST", f"/jobs/{self.id}/cancel"))

    def events(self, job_level: bool = False) -> AsyncIterator[Event]:
        """Every event of the job, in order and once each, until it ends (``async for``)."""
        return self.client.events(self.id, job_level)

    def on_event(self, fn: Callable[[Event], Any]) -> asyncio.Task[None]:
        """Call ``fn(event)`` (sync or async) for every pushed event; returns the watching task."""

        async def watch() -> None:
            async for event in self.client.events(self.id):
                outcome = fn(event)
                if asyncio.iscoroutine(outcome):
                    await outcome

        return asyncio.ensure_future(watch())

    def on_complete(self, fn: Callable[[dict[str, Any]], Any]) -> asyncio.Task[None]:
        """Call ``fn(status)`` (sync or async) once when the job ends; returns the watching task."""

        async def watch() -> None:
            final = await self.wait()
            outcome = fn(final)
            if asyncio.iscoroutine(outcome):
                await outcome

        return asyncio.ensure_future(watch())
