"""The HTTP client of the master's API, shared by the CLI and the Python API.

Clients never hold broker credentials: they speak HTTP/JSON to the master, with a token when
the master requires one. Events are pushed over Server-Sent Events, not polled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import orjson
import urllib3
from urllib3.exceptions import HTTPError as TransportError
from urllib3.exceptions import ReadTimeoutError

from sje.config import ClientSettings, load_settings
from sje.errors import JobFailed, JobTimeout, MasterError, error_from_code
from sje.events import JOB_PROGRESS, STREAM_ERROR
from sje.models import MAX_SUBMIT_WAIT_S, JobState, parse_job
from sje.tasks import Task

if TYPE_CHECKING:
    from sje.client_async import AsyncClient, AsyncJobHandle

Event = dict[str, Any]
RESULTS_PAGE = 10_000
#: seconds: a master's answer (a submit that waits gets its wait on top), and a connection
READ_TIMEOUT_S, CONNECT_TIMEOUT_S = 30.0, 5.0


def job_payload(job_def: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a job definition locally (clear errors before any network) and make it JSON."""
    data = dict(job_def)
    for key in ("task", "reduce"):
        if isinstance(data.get(key), Task):
            data[key] = data[key].name
    spec = parse_job(data)
    return spec.model_dump(exclude_none=True, exclude_defaults=True) | {"task": spec.task}


def submit_wait(wait: float | None) -> tuple[dict[str, str], float]:
    """The query and the read timeout (s) of a submit that waits ``wait`` s for its job."""
    if not wait:
        return {}, READ_TIMEOUT_S
    if not 0 < wait <= MAX_SUBMIT_WAIT_S:
        raise ValueError(
            f"submit(wait={wait!r}): expected seconds from 0 to {MAX_SUBMIT_WAIT_S:g}; for a "
            "longer wait, call result(timeout=...) on the handle."
        )
    return {"wait": f"{wait:g}"}, READ_TIMEOUT_S + wait


def raise_for(status: int, body: bytes, url: str) -> None:
    """Raise the error a master's answer ``status`` / ``body`` carries, if any."""
    if status < 400:
        return
    try:
        err = orjson.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        text = body[:200].decode(errors="replace")
        raise MasterError(f"The master at {url} answered HTTP {status}: {text}") from None
    if err.get("code") == "unauthorized":
        raise MasterError(err["message"])
    raise error_from_code(err.get("code", "error"), err.get("message", "unknown error"))


def unreachable(url: str, exc: Exception, timed_out_after: float | None) -> MasterError:
    """The error for a request that got no answer: connected, then none within
    ``timed_out_after`` seconds; or (None) no connection."""
    if timed_out_after is not None:
        return MasterError(
            f"The master at {url} did not answer within {timed_out_after:g}s "
            f"({type(exc).__name__}); it may be waiting on its broker. Retry (with an "
            "idempotency-key a retried submit cannot run twice), or check the master's log."
        )
    return MasterError(
        f"Connection refused: no SJE master answers at {url} ({type(exc).__name__}). "
        "Start one with `sje master`, or set SJE_MASTER to its URL."
    )


def stream_dropped(url: str, exc: Exception) -> MasterError:
    """The error for an event stream the master ended without its final event (it stopped,
    or something between cut the connection)."""
    return MasterError(
        f"The master at {url} cut the job's event stream ({type(exc).__name__}); it may have "
        "stopped or restarted. Check it, then wait for the job again."
    )


def _follow(lines: Iterable[bytes], parser: SSEParser, deadline: float | None) -> Iterator[Event]:
    """The events of one open stream, until the job's final one or the ``deadline``."""
    for raw in lines:
        event = parser.feed(raw.rstrip(b"\r\n").decode())
        if event is not None:
            yield event
        if parser.finished or (deadline is not None and time.monotonic() >= deadline):
            return


class SSEParser:
    """Incremental Server-Sent Events parser: feed lines, get events when a blank line ends one.

    Remembers the last event id (``after``, to resume from) and whether the stream reached the
    job's final ``progress`` snapshot (``finished``).
    """

    def __init__(self, after: str = "0") -> None:
        self._fields: dict[str, str] = {}
        self.after = after
        self.finished = False

    def feed(self, line: str) -> Event | None:
        if line:
            if not line.startswith(":"):
                key, _, value = line.partition(":")
                self._fields[key] = value.removeprefix(" ")
            return None
        fields, self._fields = self._fields, {}
        if "data" not in fields:
            return None
        event: Event = {**orjson.loads(fields["data"]), "type": fields.get("event", "message")}
        if event["type"] == STREAM_ERROR:  # the master could not go on (its broker failed)
            raise error_from_code(str(event.get("code")), str(event.get("message")))
        if "id" in fields:
            event["id"] = self.after = fields["id"]
        self.finished = event["type"] == JOB_PROGRESS and final_state(event)
        return event


def event_params(after: str, job_level: bool) -> dict[str, str]:
    return {"after": after, "scope": "job"} if job_level else {"after": after}


def status_record(final: Event) -> dict[str, Any]:
    """The job record carried by a stream's final ``progress`` event."""
    return {k: v for k, v in final.items() if k != "type"}


def waited_too_long(job_id: str, timeout: float | None) -> JobTimeout:
    """The error for a client that stopped waiting for a job after ``timeout`` s."""
    return JobTimeout(f"Job timeout: job {job_id} did not finish within {timeout}s of waiting.")


def final_state(view: Mapping[str, Any]) -> bool:
    return JobState(view["state"]).is_terminal


#: one request that reading a result needs: (path, query parameters)
ResultRequest = tuple[str, "dict[str, int] | None"]


def read_results(job_id: str, view: Mapping[str, Any]) -> Generator[ResultRequest, Any, Any]:
    """The reading of a finished job's value, whatever the client's I/O: yields each request
    to make, is sent its reply, returns the ordered results (``inputs``), the value (``args``)
    or the reduce output. ``send_requests`` drives it for ``Client``; ``AsyncJobHandle.result``
    for the async client."""
    path = f"/jobs/{job_id}/results"
    if view.get("reduce") or view["kind"] == "call":
        if "result" in view:  # carried by the final event of the stream or the submit reply
            return view["result"]
        return (yield path, None)["result"]
    out: list[Any] = []
    while len(out) < view["inputs"]:
        page = yield path, {"offset": len(out), "limit": RESULTS_PAGE}
        out.extend(page["results"])
    return out


def send_requests(steps: Generator[ResultRequest, Any, Any], client: Client) -> Any:
    """Run ``steps`` (see ``read_results``) with the synchronous client; its return value."""
    try:
        path, params = next(steps)
        while True:
            path, params = steps.send(client.request("GET", path, params=params))
    except StopIteration as stop:
        return stop.value


def check_outcome(view: Mapping[str, Any]) -> None:
    """Raise ``JobTimeout`` / ``JobFailed`` for a job that did not succeed."""
    state = view["state"]
    if state == JobState.SUCCEEDED.value:
        return
    err = view.get("error") or {}
    if state == JobState.TIMED_OUT.value:
        raise JobTimeout(err.get("message") or f"Job timeout: job {view['id']} timed out")
    if state == JobState.CANCELLED.value:
        raise JobFailed(f"Job {view['id']} was cancelled.")
    inner = err.get("error") or {}
    where = f" in task {err.get('task')}" if err.get("task") is not None else ""
    attempt = f" (attempt {inner['attempt']})" if inner.get("attempt") else ""
    detail = f"{inner.get('type', 'Error')}: {inner.get('message', '')}"
    failure = JobFailed(f"Job {view['id']} failed{where}{attempt}: {detail}")
    failure.traceback = inner.get("traceback", "")  # type: ignore[attr-defined]  # extra detail for callers
    raise failure


class Client:
    """Synchronous client. ``master_url`` defaults to ``SJE_MASTER``; ``token`` to ``SJE_TOKEN``."""

    def __init__(self, master_url: str | None = None, token: str | None = None) -> None:
        settings = load_settings(ClientSettings, None, {"master": master_url, "token": token})
        self.url = settings.master.rstrip("/")
        self._headers = dict(settings.auth_headers)
        self._api = (urllib3.util.parse_url(self.url).path or "").rstrip("/") + "/api/v1"
        # urllib3, not httpx, for the synchronous client: about half the CPU per request
        # (docs/performance.md); no retries: a submit is never sent twice behind the caller's back
        self._http = urllib3.connection_from_url(self.url, maxsize=8, retries=False)

    def _open(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        read_s: float,
        stream: bool = False,
        **kwargs: Any,
    ) -> urllib3.BaseHTTPResponse:
        url = self._api + path + ("?" + urlencode(params) if params else "")
        headers = self._headers | kwargs.pop("headers", {})
        if "json" in kwargs:
            kwargs["body"] = orjson.dumps(kwargs.pop("json"))
            headers["Content-Type"] = "application/json"
        return self._http.urlopen(
            method,
            url,
            headers=headers,
            timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=read_s),
            retries=False,
            redirect=False,
            preload_content=not stream,
            **kwargs,
        )

    def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        read_s: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """One call of the API (``path`` below ``/api/v1``, ``json=`` or ``body=`` for its
        body), answered within ``read_s`` (default ``READ_TIMEOUT_S``) seconds; its JSON
        answer, or the error."""
        read_s = read_s or READ_TIMEOUT_S
        try:
            response = self._open(method, path, params, read_s, **kwargs)
        except TransportError as exc:
            timed_out = read_s if isinstance(exc, ReadTimeoutError) else None
            raise unreachable(self.url, exc, timed_out) from exc
        raise_for(response.status, response.data, self.url)
        return orjson.loads(response.data)

    def submit(self, job_def: Mapping[str, Any], wait: float | None = None) -> JobHandle:
        """Submit a job. With ``wait`` (seconds, at most 60) the same request waits for the
        job to end: a job done within it needs no further request for ``result()``."""
        body = orjson.dumps(job_payload(job_def))
        params, read_s = submit_wait(wait)
        headers = {"Content-Type": "application/json"}
        reply = self.request("POST", "/jobs", params, read_s, body=body, headers=headers)
        return JobHandle(self, reply["id"], reply.get("job"))

    def job(self, job_id: str) -> JobHandle:
        return JobHandle(self, job_id)

    def jobs(self, limit: int = 50, state: str | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit} | ({"state": state} if state else {})
        return list(self.request("GET", "/jobs", params=params)["jobs"])

    def workers(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/workers")["workers"])

    def queues(self, peek: int = 10) -> dict[str, Any]:
        """``{"queues": [...], "dead_letters": n}``: depth, rates, oldest wait, a peek."""
        return dict(self.request("GET", "/queues", params={"peek": peek}))

    def health(self) -> dict[str, Any]:
        return dict(self.request("GET", "/health"))

    def logs(self, job_id: str, task: int | str | None = None) -> dict[str, Any]:
        """What a job's tasks printed and logged: ``{"id", "logs": [{"task", "attempt",
        "text", "truncated"}], "dropped"}``, every stored attempt (of one ``task`` index, or
        ``"r"``, when given), by task then attempt. ``JobNotFound`` for an unknown job."""
        path = f"/jobs/{quote(job_id, safe='')}/logs"
        params: dict[str, Any] = {} if task is None else {"task": str(task)}
        reply = dict(self.request("GET", path, params=params))
        while reply["next"] is not None:
            page = self.request("GET", path, params={"offset": reply["next"], "limit": 1000})
            reply["logs"] += page["logs"]
            reply["next"] = page["next"]
        del reply["next"]
        return reply

    # -- dead-letter queue --------------------------------------------------------------------

    def dead_letters(self, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """``{"total", "offset", "entries"}``, newest first."""
        return dict(self.request("GET", "/dlq", params={"limit": limit, "offset": offset}))

    def dead_letter(self, entry_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/dlq/{quote(entry_id, safe='')}"))

    def requeue(self, entry_id: str | None = None) -> dict[str, Any]:
        """Requeue one entry's job, or with no id every requeueable entry."""
        path = "/dlq/requeue" if entry_id is None else f"/dlq/{quote(entry_id, safe='')}/requeue"
        return dict(self.request("POST", path))

    def purge(self, entry_id: str | None = None) -> int:
        """Delete one entry, or with no id all of them; returns how many went."""
        path = "/dlq" if entry_id is None else f"/dlq/{quote(entry_id, safe='')}"
        return int(self.request("DELETE", path)["purged"])

    def events(
        self, job_id: str, timeout: float | None = None, job_level: bool = False
    ) -> Iterator[Event]:
        """Pushed events of a job until it ends: ``progress`` snapshots and job events, and with
        ``job_level=False`` every task event too."""
        deadline = None if timeout is None else time.monotonic() + timeout
        parser = SSEParser()
        while True:
            streaming = False
            try:
                left = READ_TIMEOUT_S if deadline is None else deadline - time.monotonic()
                read = max(0.1, min(READ_TIMEOUT_S, left))
                response = self._open(
                    "GET",
                    f"/jobs/{job_id}/events",
                    event_params(parser.after, job_level),
                    read,
                    stream=True,
                )
                try:
                    if response.status >= 400:
                        raise_for(response.status, response.read(), self.url)
                    streaming = True
                    yield from _follow(response, parser, deadline)
                    if parser.finished:
                        return
                finally:
                    response.close()  # a stream left part-read: its connection is not reused
                    response.release_conn()
            except ReadTimeoutError:
                pass
            except TransportError as exc:
                if streaming:
                    raise stream_dropped(self.url, exc) from exc
                raise unreachable(self.url, exc, None) from exc
            if deadline is not None and time.monotonic() >= deadline:
                raise waited_too_long(job_id, timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # handles from ``Job(...).submit()`` own their client; release its sockets with it
        http = getattr(self, "_http", None)
        if http is not None:
            http.close()


class JobHandle:
    """A submitted job: ``status()``, ``wait()``, ``result()``, ``cancel()`` and observers."""

    def __init__(self, client: Client, job_id: str, final: Event | None = None) -> None:
        self.client = client
        self.id = job_id
        self._final = final  # the ended job's record, when its submit waited for it
        self._observer: threading.Thread | None = None
        self._on_event: list[Callable[[Event], None]] = []
        self._on_complete: list[Callable[[dict[str, Any]], None]] = []

    def __repr__(self) -> str:
        return f"<JobHandle {self.id}>"

    def status(self) -> dict[str, Any]:
        """The job record: ``id``, ``state``, task counts by state, timestamps, ``error``."""
        return dict(self.client.request("GET", f"/jobs/{self.id}"))

    @property
    def ended(self) -> bool:
        """Whether the submit waited for the job's end and got it: ``wait()`` and ``result()``
        then ask nothing more."""
        return self._final is not None

    def wait(
        self, timeout: float | None = None, on_event: Callable[[Event], None] | None = None
    ) -> dict[str, Any]:
        """Block until the job ends (pushed, no polling); returns its final status record.
        ``on_event`` is called with each job-level event on the way (``job.progress``
        snapshots included). A job requeued from the dead-letter queue ends again: each call
        follows it anew."""
        if self._final is not None:
            return status_record(self._final)
        final: Event = {}
        for event in self.client.events(self.id, timeout, job_level=True):
            if on_event is not None:
                on_event(event)
            final = event
        return status_record(final)

    def result(self, timeout: float | None = None) -> Any:
        """Wait, then the ordered results (``inputs``), the value (``args``) or the reduce output.

        Raises ``JobFailed`` (with the remote traceback) or ``JobTimeout`` otherwise.
        """
        view = self.wait(timeout)
        check_outcome(view)
        return send_requests(read_results(self.id, view), self.client)

    def cancel(self) -> dict[str, Any]:
        return dict(self.client.request("POST", f"/jobs/{self.id}/cancel"))

    def events(self, timeout: float | None = None, job_level: bool = False) -> Iterator[Event]:
        """Every event of the job, in order and once each (replayed from its start), until it
        ends; the last is a ``job.progress`` snapshot of the final record. ``job_level=True``
        leaves out per-task events."""
        return self.client.events(self.id, timeout, job_level)

    def on_event(self, fn: Callable[[Event], None]) -> JobHandle:
        """Call ``fn(event)`` for every pushed event, from a background thread."""
        self._on_event.append(fn)
        self._observe()
        return self

    def on_complete(self, fn: Callable[[dict[str, Any]], None]) -> JobHandle:
        """Call ``fn(status)`` once when the job ends, from a background thread."""
        self._on_complete.append(fn)
        self._observe()
        return self

    def _observe(self) -> None:
        if self._observer is not None:
            return

        def run() -> None:
            for event in self.client.events(self.id):
                for fn in list(self._on_event):
                    fn(event)
            final = self.status()
            for done in list(self._on_complete):
                done(final)

        self._observer = threading.Thread(target=run, name=f"sje-observe-{self.id}", daemon=True)
        self._observer.start()


class Job:
    """A job definition to submit: ``sje.Job({"task": ..., "inputs": [...]}).submit()``."""

    def __init__(self, job_def: Mapping[str, Any] | None = None, **options: Any) -> None:
        self.definition = {**(job_def or {}), **options}
        job_payload(self.definition)

    def submit(self, client: Client | None = None) -> JobHandle:
        return (client or Client()).submit(self.definition)

    async def submit_async(self, client: AsyncClient | None = None) -> AsyncJobHandle:
        from sje.client_async import AsyncClient

        return await (client or AsyncClient()).submit(self.definition)
