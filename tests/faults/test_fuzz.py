"""Fuzzing the master's HTTP API from its own OpenAPI document (schemathesis).

A real master and worker serve the API. Every operation of ``/api/v1/openapi.json`` gets
generated requests, valid and invalid: no response may be a server error (5xx), and each must
conform to the document (status, content type, headers, body), invalid requests must be
refused and routes that need the token must refuse requests without it. Routes with a job or
dead-letter id are fuzzed twice: with generated ids (which name nothing) and with the ids of
real finished jobs, so their parameters reach the code behind the lookup (an event stream
stays open until its job ends: only finished jobs' streams are read).

The master's bounds are kept small (``LIMITS``), so accepted jobs stay small. Their tasks name
no registered task (the generator does not guess one): they are dead-lettered at once by the
worker, or wait on a queue no worker serves.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import schemathesis
import schemathesis.checks as st_checks
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup

from tests.support import Proc, wait_until

#: generated requests per operation, mode (valid / invalid) and kind of id
EXAMPLES = 50
REQUEST_TIMEOUT_S = 10
LIMITS = {"SJE_MAX_QUEUE_LENGTH": "100", "SJE_MAX_REQUEST_MB": "0.25"}
CHECKS = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_headers_conformance,
    st_checks.response_schema_conformance,
    st_checks.negative_data_rejection,
    st_checks.ignored_auth,
    st_checks.positive_data_acceptance,
]
#: a valid job definition is still refused when no worker has registered its task (422)
NOT_CHECKED = {"POST /api/v1/jobs": [st_checks.positive_data_acceptance]}
#: streams that never end by themselves (each request would just time out): their parameter
#: checks are tested directly in test_inputs_that_broke_the_master_get_a_4xx_saying_what_to_do
ENDLESS = {"GET /api/v1/events"}
TASKS = "tests.apps.sample_tasks"
SEED_JOBS = {
    "item": {"task": f"{TASKS}.square", "inputs": [1, 2, 3]},
    "chunk": {"task": "tests.total", "inputs": [1, 2, 3], "chunk-size": 2},
    "call": {"task": f"{TASKS}.add", "args": [1, 2]},
    "reduce": {"task": f"{TASKS}.square", "inputs": [1, 2], "reduce": "tests.total"},
    "failed": {"task": f"{TASKS}.boom", "inputs": [1]},
}


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    env.update(LIMITS)
    return env


@pytest.fixture
def api(master: str, env: dict[str, str]) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {env['SJE_TOKEN']}"}
    with httpx.Client(
        base_url=f"{master}/api/v1", headers=headers, timeout=REQUEST_TIMEOUT_S
    ) as client:
        yield client


def _seed_jobs(api: httpx.Client) -> dict[str, str]:
    """One finished job of each kind (item, chunk, call, reduce, failed): their ids by kind."""
    ids = {}
    for kind, definition in SEED_JOBS.items():
        reply = api.post("/jobs", json=definition)
        assert reply.status_code == 201, reply.text
        ids[kind] = reply.json()["id"]

    def ended() -> bool:
        states = {api.get(f"/jobs/{i}").json()["state"] for i in ids.values()}
        return not states & {"pending", "running"}

    wait_until(ended, 30, "the seed jobs to end")
    return ids


@dataclass
class Run:
    headers: dict[str, str]
    failures: list[str] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)

    def fuzz(self, operation: Any, mode: Any, real_id: tuple[str, list[str]] | None) -> None:
        """Send ``EXAMPLES`` generated requests to ``operation``; with ``real_id`` (a path
        parameter and its values), that parameter takes one of the values."""
        if real_id is None:
            strategy = operation.as_strategy(mode)
            label = f"{operation.label} {mode}"
        else:
            name, values = real_id
            strategy = st.sampled_from(values).flatmap(
                lambda value: operation.as_strategy(mode, path_parameters={name: value})
            )
            label = f"{operation.label} real {name} {mode}"
        self.sent[label] = 0
        excluded = NOT_CHECKED.get(operation.label, [])

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case: Any) -> None:
            self.sent[label] += 1
            try:
                case.call_and_validate(
                    headers=self.headers,
                    checks=CHECKS,
                    excluded_checks=excluded,
                    timeout=REQUEST_TIMEOUT_S,
                )
            except FailureGroup as group:
                self._record(label, group)
            except Exception as exc:  # e.g. a connection the master broke off
                self.failures.append(f"{label}: {type(exc).__name__}: {exc}")

        try:
            run()
        except Unsatisfiable:  # nothing of the request can be made invalid
            assert mode == GenerationMode.NEGATIVE, label

    def _record(self, label: str, group: FailureGroup) -> None:
        curl = next((ln.strip() for ln in str(group).splitlines() if "curl " in ln), "")
        for failure in group.exceptions:
            lines = str(getattr(failure, "message", failure)).strip().splitlines()[:4]
            what = " / ".join(ln.strip() for ln in lines if ln.strip())
            self.failures.append(f"{label}: {getattr(failure, 'title', '')}: {what}\n  {curl}")


def test_no_request_gets_a_server_error_or_an_answer_the_document_does_not_describe(
    master: str, worker: Callable[..., Proc], api: httpx.Client, env: dict[str, str]
) -> None:
    worker("--concurrency", "1")
    jobs = _seed_jobs(api)
    real_ids = {
        "job_id": [jobs[k] for k in ("item", "chunk", "call", "reduce", "failed")],
        "entry_id": [f"{jobs['failed']}:0"],
    }
    schema = schemathesis.openapi.from_url(f"{master}/api/v1/openapi.json")
    # the API ignores query parameters it does not define, as HTTP APIs commonly do
    schema.config.generation.update(allow_extra_parameters=False)
    run = Run({"Authorization": f"Bearer {env['SJE_TOKEN']}"})
    started = time.monotonic()
    operations = [
        (path, method) for path, methods in schema.raw_schema["paths"].items() for method in methods
    ]
    # deletes last, so the other routes still find the dead-letter entry
    for path, method in sorted(operations, key=lambda op: op[1] == "delete"):
        if f"{method.upper()} {path}" in ENDLESS:
            continue
        operation = schema[path][method.upper()]
        ids = [p.name for p in operation.path_parameters if p.name in real_ids]
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run.fuzz(operation, mode, None)
            for name in ids:
                run.fuzz(operation, mode, (name, real_ids[name]))
    elapsed = time.monotonic() - started
    print(f"\n{sum(run.sent.values())} requests to {len(run.sent)} cases in {elapsed:.0f}s")
    assert not run.failures, "\n".join(run.failures)


def test_inputs_that_broke_the_master_get_a_4xx_saying_what_to_do(api: httpx.Client) -> None:
    """Requests that answered 500 or 503, broke the event stream off, or were silently
    ignored: each is now refused with one line saying what is expected."""
    pending = {"task": "no.such.task", "args": [1], "queue": "nobody", "allow-unknown-task": True}
    reply = api.post("/jobs", json=pending)
    assert reply.status_code == 201, reply.text
    job = reply.json()["id"]
    big = "100000000000000000000"
    cases: list[tuple[str, str, dict[str, Any], int, str]] = [
        # was 500: seconds * 1000 overflowed to infinity
        ("POST", "/jobs", {"json": {**pending, "job-timeout": 1.7e308}}, 422, "10 years"),
        ("POST", "/jobs", {"json": {**pending, "result-ttl": 1.2e308}}, 422, "10 years"),
        # was 503: Redis refuses a range start past 64 bits
        ("GET", "/jobs", {"params": {"offset": big}}, 400, "from 0 to 1000000000000"),
        ("GET", "/dlq", {"params": {"offset": big}}, 400, "from 0 to 1000000000000"),
        # was 200 with a stream Redis broke off at once
        ("GET", f"/jobs/{job}/events", {"params": {"after": "x"}}, 400, "'after=x': expected"),
        ("GET", f"/jobs/{job}/events", {"params": {"after": ""}}, 400, "'after=': expected"),
        (
            "GET",
            f"/jobs/{job}/events",
            {"headers": {"Last-Event-ID": "x"}},
            400,
            "Header 'Last-Event-ID: x': expected",
        ),
        # was 500 and 503: a ':' in the id named another key of the job
        ("GET", f"/jobs/{job}:in/results", {}, 404, f"No job '{job}:in'"),
        ("GET", f"/jobs/{job}:ev", {}, 404, f"No job '{job}:ev'"),
        # were ignored
        ("GET", f"/jobs/{job}/results", {"params": {"limit": "lots"}}, 400, "from 1 to 10000"),
        ("GET", f"/jobs/{job}", {"params": {"errors": "yes"}}, 400, "one of 0, 1"),
        ("GET", "/jobs", {"params": {"state": "done"}}, 400, "one of pending, running"),
        ("GET", f"/jobs/{job}/events", {"params": {"scope": "jobs"}}, 400, "one of all, job"),
        ("GET", "/events", {"params": {"after": "x"}}, 400, "'after=x': expected"),
        ("GET", "/events", {"headers": {"Last-Event-ID": "1-x"}}, 400, "'Last-Event-ID: 1-x'"),
    ]
    for method, path, request, status, message in cases:
        reply = api.request(method, path, **request)
        where = f"{method} {path} {request}"
        assert reply.status_code == status, f"{where}: {reply.status_code} {reply.text}"
        error = reply.json()["error"]
        assert message in error["message"], f"{where}: {error}"
        assert "\n" not in error["message"], where
