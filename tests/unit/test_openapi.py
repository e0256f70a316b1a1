"""The OpenAPI document names exactly the master's routes and is valid OpenAPI 3.1."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from starlette.applications import Starlette
from starlette.routing import Route

from sje.broker.redis import RedisBroker
from sje.config import MasterSettings
from sje.errors import InvalidJob
from sje.master import api
from sje.master.openapi import RESULTS_LIMIT_MAX, document, job_definition_schema
from sje.models import JobSpec, parse_job
from sje.submitfile import job_from_file
from tests.support import ROOT

# HEAD is answered by Starlette for every GET route; the document lists GET only
_IMPLICIT = {"HEAD"}


@pytest.fixture
def app() -> Iterator[Starlette]:
    broker = RedisBroker("redis://127.0.0.1:1/0", "openapi-test")  # never connected
    yield api.Api(broker, MasterSettings(), b"k" * 32, api.BearerAuth("a-test-token")).app()
    asyncio.run(broker.close())


def test_document_lists_exactly_the_routes_of_the_app(app: Starlette) -> None:
    served = {
        (route.path, method.lower())
        for route in app.routes
        if isinstance(route, Route)
        for method in (route.methods or {"GET"}) - _IMPLICIT
    }
    described = {(path, method) for path, ops in document()["paths"].items() for method in ops}
    assert described - served == set(), "documented but not served"
    assert served - described == set(), "served but not documented in sje/master/openapi.py"


def test_document_is_valid_openapi() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1")
    schemathesis.openapi.from_dict(doc).validate()


def test_every_route_but_health_and_the_document_needs_the_token() -> None:
    doc = document()
    assert doc["security"] == [{"bearer": []}]
    public = {path for path, ops in doc["paths"].items() for op in ops.values() if "security" in op}
    assert public == {"/api/v1/health", "/api/v1/openapi.json"}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if path not in public:
                assert "401" in op["responses"], (method, path)


def test_document_is_served_without_a_token(app: Starlette) -> None:
    async def get(path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://master") as client:
            return await client.get(path)

    response = asyncio.run(get("/api/v1/openapi.json"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == document()
    assert asyncio.run(get("/api/v1/workers")).status_code == 401


def test_job_definition_schema_has_every_field_in_both_spellings() -> None:
    properties = job_definition_schema()["properties"]
    for field in JobSpec.model_fields:
        assert field in properties
        assert field.replace("_", "-") in properties


@pytest.mark.parametrize("name", ["primes", "one-range", "pauses"])
def test_example_jobs_match_the_schema(name: str) -> None:
    data = job_from_file(ROOT / "config" / "submit.yaml", name, {})
    jsonschema_rs.validate(job_definition_schema(), data)
    parse_job(data)


@pytest.mark.parametrize(
    "bad",
    [
        {"task": "t", "priority": 10},
        {"task": "t", "chunk-size": 0, "inputs": [1]},
        {"task": "t", "timeout": "soon"},
        {"task": "a:b"},
        {"task": "t", "inputs": []},
        {"task": "t", "unknown": 1},
        {"inputs": [1]},
        {"task": "\x1f"},
        {"task": "t", "chunk_size": 2},
        {"task": "t", "inputs": [1], "args": [1]},
        {"task": "t", "result-ttl": 1e308},
    ],
)
def test_what_the_schema_rejects_the_master_rejects_too(bad: dict[str, object]) -> None:
    assert not jsonschema_rs.is_valid(job_definition_schema(), bad)
    with pytest.raises(InvalidJob, match="job definition"):
        parse_job(bad)


def test_what_the_schema_accepts_the_master_accepts() -> None:
    """Generated job definitions that match the schema parse, but for durations written as
    strings over the limit (a pattern cannot bound them)."""
    operation = schemathesis.openapi.from_dict(document())["/api/v1/jobs"]["POST"]
    rejected: list[str] = []

    @settings(
        max_examples=200,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def parse(case: Any) -> None:
        try:
            parse_job(case.body)
        except InvalidJob as exc:
            if not re.search(r"seconds from 0 to \d+ \(10 years\) \(got '", exc.message):
                rejected.append(exc.message)

    parse()
    assert rejected == []


def test_results_page_bound_matches_the_handler() -> None:
    assert RESULTS_LIMIT_MAX == api._MAX_PAGE


def test_monitor_document_lists_exactly_the_monitor_api_routes() -> None:
    from sje.master.openapi import monitor_document
    from sje.monitor.server import build_app
    from sje.monitor.session import SessionAuth

    broker = RedisBroker("redis://127.0.0.1:1/0", "openapi-test")  # never connected
    app = build_app(broker, SessionAuth("a-test-token", b"s" * 32))
    served = {
        (route.path, method.lower())
        for route in app.routes
        if isinstance(route, Route) and route.path.startswith(("/api/", "/metrics"))
        for method in (route.methods or {"GET"}) - _IMPLICIT
    }
    doc = monitor_document()
    described = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert described == served
    assert ("/api/v1/jobs", "post") not in described, "a monitor does not accept jobs"
    schemathesis.openapi.from_dict(doc).validate()
    asyncio.run(broker.close())


def test_unknown_routes_and_methods_answer_in_the_json_error_shape(app: Starlette) -> None:
    async def call(method: str, path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://master") as client:
            return await client.request(method, path)

    missing = asyncio.run(call("GET", "/api/v1/nope"))
    assert missing.status_code == 404
    assert missing.json()["error"] == {
        "code": "not_found",
        "message": "No such route: GET /api/v1/nope. The API is described at /api/v1/openapi.json.",
    }
    wrong = asyncio.run(call("DELETE", "/api/v1/health"))
    assert wrong.status_code == 405
    assert wrong.headers["allow"]
    assert wrong.json()["error"]["message"].startswith("DELETE is not allowed on /api/v1/health.")
