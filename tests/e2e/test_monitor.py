"""The monitor end to end: real master, worker and ``sje monitor`` processes on a real Redis.

Every route of docs/monitor.md answers with its documented shape and the numbers of what ran;
/metrics parses as Prometheus text and counts the same; bad input is refused with a clear
message; sign-in, cookies, CSRF and security headers; a restart loses nothing; a failed job
is retried; a killed worker is shown lost.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from sje.broker.redis_events import expand_all
from sje.client import SSEParser
from tests.support import Proc, api_client, auth, run_sje, start_monitor, wait_until

TASKS = "tests.apps.monitor_tasks"
SQUARE = "tests.apps.sample_tasks.square"
BOOM = "tests.apps.sample_tasks.boom"
FAIL_FIRST = "tests.apps.monitor_tasks.fail_first"
GATED = "tests.apps.monitor_tasks.gated"
TIMEOUT = httpx.Timeout(30.0, connect=5.0)
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def monitor(env: dict[str, str], procs: list[Proc]) -> str:
    """URL of a real ``sje monitor`` for this test's store and token."""
    proc, url = start_monitor(env)
    procs.append(proc)
    return url


@pytest.fixture
def api(env: dict[str, str], monitor: str) -> Iterator[httpx.Client]:
    """An HTTP client of the monitor with the test's Bearer token."""
    with httpx.Client(base_url=monitor, headers=auth(env), timeout=TIMEOUT) as client:
        yield client


def get(api: httpx.Client, path: str, **params: Any) -> Any:
    response = api.get(path, params=params)
    assert response.status_code == 200, (path, response.text)
    return response.json()


def error_of(response: httpx.Response, status: int) -> dict[str, str]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return dict(body["error"])


@dataclass(frozen=True)
class Ran:
    """The jobs of ``run_jobs``: alpha (5 squares), beta (2 tasks, one retried once), gamma
    (fails: 1 task raises), delta (4 tasks parked on a queue no worker serves)."""

    alpha: str
    beta: str
    gamma: str
    delta: str
    worker: Proc

    @property
    def ids(self) -> list[str]:
        return [self.alpha, self.beta, self.gamma, self.delta]


def run_jobs(env: dict[str, str], worker: Callable[..., Proc], tmp_path: Path) -> Ran:
    proc = worker("--tasks", TASKS, "--concurrency", "2", "--name", "solo")
    flaky = [
        {"value": i, "marker": str(tmp_path / f"calls-{i}"), "fail_times": 1 - i} for i in range(2)
    ]
    jobs: list[dict[str, Any]] = [
        {"task": SQUARE, "name": "alpha-squares", "inputs": [1, 2, 3, 4, 5]},
        {"task": FAIL_FIRST, "name": "beta-Flaky", "inputs": flaky, "retries": 2, "backoff": 0.05},
        {"task": BOOM, "name": "gamma-boom", "inputs": ["x"]},
        {"task": SQUARE, "name": "delta-parked", "inputs": [1, 2, 3, 4], "queue": "parked"},
    ]
    with api_client(env) as client:
        handles = [client.submit(job) for job in jobs]
        assert handles[0].result(timeout=60) == [1, 4, 9, 16, 25]
        assert handles[1].result(timeout=60) == [0, 1]
        assert handles[2].wait(timeout=60)["state"] == "failed"
    alpha, beta, gamma, delta = (h.id for h in handles)
    return Ran(alpha, beta, gamma, delta, worker=proc)


def metric_samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def stable(overview: dict[str, Any]) -> dict[str, Any]:
    """An overview without what moves with the clock (rates and the time series)."""
    return {k: v for k, v in overview.items() if k not in ("rates", "series")}


def read_events(
    api: httpx.Client, until: Callable[[dict[str, Any]], bool], timeout: float = 30, **params: str
) -> list[dict[str, Any]]:
    """The global SSE stream, read until ``until(event)`` (keepalives every 5 s let the
    deadline be checked)."""
    parser, out = SSEParser(), []
    deadline = wait_deadline(timeout)
    with api.stream("GET", "/api/v1/events", params=params) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            event = parser.feed(line)
            if event is not None:
                out.append(event)
                if until(event):
                    return out
            if deadline():
                break
    raise AssertionError(f"no matching event within {timeout}s; got {out}")


def wait_deadline(timeout: float) -> Callable[[], bool]:
    end = time.monotonic() + timeout
    return lambda: time.monotonic() > end


# -- routes -----------------------------------------------------------------------------------


def test_every_route_answers_with_its_documented_shape_and_the_numbers_of_what_ran(
    master: str,
    env: dict[str, str],
    worker: Callable[..., Proc],
    api: httpx.Client,
    r: redis.Redis,
    prefix: str,
    tmp_path: Path,
) -> None:
    ran = run_jobs(env, worker, tmp_path)
    wait_until(
        lambda: get(api, "/api/v1/workers")["workers"][0].get("done") == 7,
        15,
        "the worker's heartbeat to report 7 tasks done",
    )

    overview = get(api, "/api/v1/overview")
    assert set(overview) == {
        "jobs",
        "tasks",
        "rates",
        "series",
        "queues",
        "workers",
        "dead_letters",
    }
    assert overview["jobs"] == {
        "submitted": 4,
        "succeeded": 2,
        "failed": 1,
        "cancelled": 0,
        "timed_out": 0,
        "active": 1,
    }
    assert overview["tasks"] == {"succeeded": 7, "failed": 1, "dead": 0, "retried": 1}
    assert overview["queues"] == [{"name": "default", "depth": 0}, {"name": "parked", "depth": 4}]
    assert overview["workers"] == {"alive": 1, "lost": 0, "busy": 0, "slots": 2}
    assert overview["dead_letters"] == 1
    assert set(overview["rates"]) == {"succeeded_per_s", "failed_per_s"}
    assert len(overview["series"]) == 360 and set(overview["series"][0]) == {
        "t",
        "succeeded",
        "failed",
    }
    assert sum(s["succeeded"] for s in overview["series"]) == 7
    assert sum(s["failed"] for s in overview["series"]) == 1
    assert len(get(api, "/api/v1/overview", window=60)["series"]) == 6

    check_jobs_page(api, ran)
    check_one_job(api, ran, r, prefix)
    check_queues_workers_and_dead_letters(api, ran)
    session = get(api, "/api/v1/session")
    assert session["auth"] == "token" and len(session["csrf"]) == 64

    # the global stream pushes what happens after a client connects, and only that
    parser, received = SSEParser(), []
    with api_client(env) as client, api.stream("GET", "/api/v1/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        assert next(lines) == ": connected"
        epsilon = client.submit({"task": SQUARE, "inputs": [7], "queue": "parked"}).id
        for line in lines:
            event = parser.feed(line)
            if event is not None:
                received.append(event)
                if event["type"] == "job.submitted":
                    break
    submitted = [e for e in received if e["type"] == "job.submitted"]
    assert [(e["job"], e["tasks"], e["id"]) for e in submitted] == [(epsilon, 1, parser.after)]
    assert {e["type"] for e in received} <= {"job.submitted", "worker.heartbeat"}


def check_jobs_page(api: httpx.Client, ran: Ran) -> None:
    page = get(api, "/api/v1/jobs")
    created = {j["id"]: j["created_at"] for j in page["jobs"]}
    newest_first = sorted(ran.ids, key=lambda j: (created[j], j), reverse=True)
    assert [j["id"] for j in page["jobs"]] == newest_first
    assert page["next"] is None
    by_id = {j["id"]: j for j in page["jobs"]}
    assert by_id[ran.alpha]["tasks"] == {
        "total": 5,
        "queued": 0,
        "running": 0,
        "retrying": 0,
        "succeeded": 5,
        "failed": 0,
        "dead": 0,
        "cancelled": 0,
    }
    assert (by_id[ran.delta]["state"], by_id[ran.delta]["queue"]) == ("pending", "parked")

    def ids(**params: Any) -> list[str]:
        return [j["id"] for j in get(api, "/api/v1/jobs", **params)["jobs"]]

    assert ids(state="failed") == [ran.gamma]
    assert ids(state="pending") == [ran.delta]
    assert ids(state="succeeded") == [j for j in newest_first if j in (ran.alpha, ran.beta)]
    assert ids(state="cancelled") == []
    assert ids(name="FLAKY") == [ran.beta]
    assert ids(name="SQUARES", state="succeeded") == [ran.alpha]
    assert ids(name="squares", state="failed") == []
    assert ids(q=ran.gamma[:8]) == [j for j in newest_first if j.startswith(ran.gamma[:8])]
    assert ids(q=ran.gamma) == [ran.gamma]
    since = created[ran.beta]
    assert ids(since=since) == [j for j in newest_first if created[j] >= since]
    assert ids(until=created[ran.alpha]) == [
        j for j in newest_first if created[j] <= created[ran.alpha]
    ]
    paged, offset = [], 0
    for _ in range(5):
        page = get(api, "/api/v1/jobs", limit=3, offset=offset)
        assert len(page["jobs"]) <= 3
        paged += [j["id"] for j in page["jobs"]]
        if page["next"] is None:
            break
        offset = page["next"]
    assert paged == newest_first


def check_one_job(api: httpx.Client, ran: Ran, r: redis.Redis, prefix: str) -> None:
    gamma = get(api, f"/api/v1/jobs/{ran.gamma}")
    assert (gamma["id"], gamma["state"], gamma["name"]) == (ran.gamma, "failed", "gamma-boom")
    (error,) = gamma["task_errors"].values()
    assert (error["type"], error["message"]) == ("ValueError", "boom on 'x'")
    assert "Traceback" in error["traceback"]
    alpha = get(api, f"/api/v1/jobs/{ran.alpha}")
    assert alpha["state"] == "succeeded" and "task_errors" not in alpha
    assert get(api, f"/api/v1/jobs/{ran.alpha}", errors=1)["task_errors"] == {}
    beta_errors = get(api, f"/api/v1/jobs/{ran.beta}", errors=1)["task_errors"]
    assert [(k, e["message"]) for k, e in beta_errors.items()] == [
        ("0", "planned failure #1 of task 0")
    ]

    tasks = get(api, f"/api/v1/jobs/{ran.beta}/tasks")
    assert (tasks["total"], tasks["offset"]) == (2, 0)
    rows = tasks["tasks"]
    assert all(
        set(t) == {"index", "state", "attempts", "duration_s", "worker", "error"} for t in rows
    )
    assert [(t["index"], t["state"], t["attempts"]) for t in rows] == [
        ("0", "succeeded", 2),
        ("1", "succeeded", 1),
    ]
    assert all(t["worker"].startswith("solo") and t["duration_s"] >= 0 for t in rows)
    assert rows[0]["error"] == {"type": "RuntimeError", "message": "planned failure #1 of task 0"}
    failed = get(api, f"/api/v1/jobs/{ran.gamma}/tasks", state="failed")
    assert failed["total"] == 1
    assert failed["tasks"][0]["error"] == {"type": "ValueError", "message": "boom on 'x'"}
    parked = get(api, f"/api/v1/jobs/{ran.delta}/tasks", state="queued", offset=1, limit=2)
    assert (parked["total"], [t["index"] for t in parked["tasks"]]) == (4, ["1", "2"])

    raw: Any = r.xrange(f"{prefix}:job:{ran.alpha}:ev")
    stored = [i for i, _f in expand_all(raw)]  # one per task of an entry of several
    assert len(stored) == 2 + 2 * 5 + 1  # submitted, started, 5 x (started, succeeded), done
    timeline = get(api, f"/api/v1/jobs/{ran.alpha}/timeline")["events"]
    assert [e["id"] for e in timeline] == stored
    assert timeline[0]["type"] == "job.submitted" and timeline[0]["tasks"] == 5
    last3 = get(api, f"/api/v1/jobs/{ran.alpha}/timeline", limit=3)["events"]
    assert [e["id"] for e in last3] == stored[-3:]
    assert [e["type"] for e in last3][-2:] == ["task.succeeded", "job.succeeded"]
    assert all(isinstance(e["at"], float) for e in last3)
    logs = get(api, f"/api/v1/jobs/{ran.gamma}/logs", task=0)
    assert isinstance(logs["logs"], list)


def check_queues_workers_and_dead_letters(api: httpx.Client, ran: Ran) -> None:
    queues = get(api, "/api/v1/queues")
    default, parked = queues["queues"]
    assert (default["name"], default["depth"], default["peek"]) == ("default", 0, [])
    assert default["oldest_wait_s"] is None
    assert (parked["name"], parked["depth"], parked["running"], parked["retrying"]) == (
        "parked",
        4,
        0,
        0,
    )
    peek = parked["peek"]
    assert [(p["job"], p["task"], p["name"], p["priority"]) for p in peek] == [
        (ran.delta, f"{ran.delta}:{i}", "delta-parked", 0) for i in range(4)
    ]
    assert parked["oldest_wait_s"] == max(p["waiting_s"] for p in peek) > 0
    assert queues["dead_letters"] == 1

    (w,) = get(api, "/api/v1/workers")["workers"]
    documented = {"id", "name", "host", "pid", "queues", "concurrency", "busy", "done"}
    documented |= {"failed", "cpu_percent", "rss_mb", "last_seen_s", "state"}
    assert documented <= set(w)
    assert (w["name"], w["pid"], w["queues"], w["concurrency"]) == (
        "solo",
        ran.worker.pid,
        ["default"],
        2,
    )
    assert (w["state"], w["busy"], w["done"], w["failed"]) == ("alive", 0, 7, 2)
    assert w["rss_mb"] > 0 and w["cpu_percent"] >= 0 and 0 <= w["last_seen_s"] < 5

    dlq = get(api, "/api/v1/dlq")
    assert dlq["total"] == 1
    (entry,) = dlq["entries"]
    assert (entry["job"], entry["state"], entry["error"]["type"]) == (
        ran.gamma,
        "failed",
        "ValueError",
    )
    assert get(api, f"/api/v1/dlq/{entry['id']}")["job_state"] == "failed"


# -- metrics and restarts ---------------------------------------------------------------------


def test_metrics_count_what_ran_and_a_restarted_monitor_shows_the_same(
    master: str,
    env: dict[str, str],
    worker: Callable[..., Proc],
    procs: list[Proc],
    tmp_path: Path,
) -> None:
    run_jobs(env, worker, tmp_path)
    first, url = start_monitor(env)
    procs.append(first)
    with httpx.Client(base_url=url, headers=auth(env), timeout=TIMEOUT) as api:
        response = api.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        before = metric_samples(response.text)
        overview = get(api, "/api/v1/overview")
        jobs = get(api, "/api/v1/jobs")

    q = {"queue": "default"}
    assert sample(before, "sje_tasks_total", outcome="succeeded", **q) == 7
    assert sample(before, "sje_tasks_total", outcome="failed", **q) == 1
    assert sample(before, "sje_tasks_total", outcome="dead", **q) == 0
    assert sample(before, "sje_task_retries_total", **q) == 1
    attempts = 5 + 3 + 1  # alpha, beta (one retried), gamma
    for histogram in ("sje_task_duration_seconds", "sje_task_queue_wait_seconds"):
        assert sample(before, f"{histogram}_count", **q) == attempts
        assert sample(before, f"{histogram}_bucket", le="+Inf", **q) == attempts
        buckets = [
            v
            for (n, labels), v in before.items()
            if n == f"{histogram}_bucket" and ("queue", "default") in labels
        ]
        assert buckets == sorted(buckets)  # cumulative
        assert sample(before, f"{histogram}_sum", **q) >= 0
    assert sample(before, "sje_queue_depth", queue="parked") == 4
    assert sample(before, "sje_queue_depth", **q) == 0
    assert sample(before, "sje_tasks_current", queue="parked", state="queued") == 4
    assert sample(before, "sje_tasks_current", queue="parked", state="running") == 0
    expected_jobs = {"submitted": 4, "succeeded": 2, "failed": 1, "cancelled": 0, "timed_out": 0}
    for state, n in expected_jobs.items():
        assert sample(before, "sje_jobs_total", state=state) == n
    assert sample(before, "sje_workers", state="alive") == 1
    assert sample(before, "sje_workers", state="lost") == 0
    assert sample(before, "sje_dead_letters") == 1

    first.stop()
    second, url2 = start_monitor(env)
    procs.append(second)
    assert first.popen.poll() is not None  # the first one is gone
    with httpx.Client(base_url=url2, headers=auth(env), timeout=TIMEOUT) as api:
        assert metric_samples(api.get("/metrics").text) == before
        assert stable(get(api, "/api/v1/overview")) == stable(overview)
        assert get(api, "/api/v1/jobs") == jobs


# -- bad input --------------------------------------------------------------------------------


def test_bad_queries_answer_400_saying_what_is_allowed_and_unknown_jobs_404(
    master: str, env: dict[str, str], api: httpx.Client
) -> None:
    with api_client(env) as client:
        job = client.submit(
            {"task": SQUARE, "inputs": [1], "queue": "parked", "allow-unknown-task": True}
        ).id
    cases = {
        "/api/v1/jobs?state=bogus": "Query parameter 'state=bogus': expected one of pending, "
        "running, succeeded, failed, cancelled, timed_out.",
        "/api/v1/jobs?since=abc": "Query parameter 'since=abc': expected a time in seconds since "
        "1970 (like 1735689600).",
        "/api/v1/jobs?until=-5": "Query parameter 'until=-5': expected a time in seconds since "
        "1970 (like 1735689600).",
        "/api/v1/jobs?limit=0": "Query parameter 'limit=0': expected a whole number from 1 to "
        "1000.",
        "/api/v1/jobs?limit=5000": "Query parameter 'limit=5000': expected a whole number from 1 "
        "to 1000.",
        "/api/v1/jobs?offset=-1": "Query parameter 'offset=-1': expected a whole number from 0 to "
        "1000000000000.",
        f"/api/v1/jobs?q={'a' * 65}": "Query parameter 'q': 65 characters; at most 64 are allowed.",
        f"/api/v1/jobs?name={'n' * 201}": "Query parameter 'name': 201 characters; at most 200 "
        "are allowed.",
        "/api/v1/overview?window=5": "Query parameter 'window=5': expected a whole number from 60 "
        "to 7200.",
        f"/api/v1/jobs/{job}/tasks?state=bogus": "Query parameter 'state=bogus': expected one of "
        "queued, running, succeeded, failed, retrying, dead, cancelled.",
        f"/api/v1/jobs/{job}/tasks?limit=1001": "Query parameter 'limit=1001': expected a whole "
        "number from 1 to 1000.",
        f"/api/v1/jobs/{job}/timeline?limit=0": "Query parameter 'limit=0': expected a whole "
        "number from 1 to 10000.",
        "/api/v1/queues?peek=101": "Query parameter 'peek=101': expected a whole number from 0 "
        "to 100.",
    }
    for path, message in cases.items():
        assert error_of(api.get(path), 400) == {"code": "invalid_request", "message": message}, path
    bad_resume = api.get("/api/v1/events", headers={"Last-Event-ID": "yesterday"})
    assert error_of(bad_resume, 400)["message"].startswith("Header 'Last-Event-ID: yesterday'")

    missing = "0" * 32
    not_found = {
        "code": "not_found",
        "message": f"No job '{missing}': it never existed or its results expired (result-ttl). "
        "List jobs with `sje jobs`.",
    }
    for path in ("", "/tasks", "/timeline", "/events", "/logs"):
        assert error_of(api.get(f"/api/v1/jobs/{missing}{path}"), 404) == not_found, path
    for action in ("retry", "cancel"):
        assert error_of(api.post(f"/api/v1/jobs/{missing}/{action}"), 404) == not_found, action
    # the monitor serves every master route but submit
    assert api.post("/api/v1/jobs", json={"task": SQUARE, "inputs": [1]}).status_code == 405


# -- sign-in, sessions, CSRF, headers ---------------------------------------------------------


def session_cookie(response: httpx.Response) -> str:
    """The ``sje_session`` value a sign-in set, after checking its attributes."""
    (header,) = response.headers.get_list("set-cookie")
    attributes = [part.strip().lower() for part in header.split(";")]
    name, _, value = header.split(";", 1)[0].partition("=")
    assert name == "sje_session" and len(value) == 64
    assert "httponly" in attributes and "samesite=strict" in attributes and "path=/" in attributes
    return value


def test_sign_in_sessions_csrf_and_security_headers(
    master: str, env: dict[str, str], monitor: str
) -> None:
    token = env["SJE_TOKEN"]
    with api_client(env) as client:
        parked = [
            client.submit(
                {"task": SQUARE, "inputs": [i], "queue": "parked", "allow-unknown-task": True}
            ).id
            for i in range(3)
        ]
    with httpx.Client(base_url=monitor, timeout=TIMEOUT) as http:
        # no credentials: refused everywhere but health, the OpenAPI document and the page
        for path in ("/api/v1/overview", "/api/v1/jobs", "/metrics", "/api/v1/session"):
            assert error_of(http.get(path), 401)["code"] == "unauthorized", path
        assert http.get("/api/v1/health").json() == {"status": "ok", "broker": "ok"}
        assert http.get("/api/v1/openapi.json").status_code == 200
        page = http.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        for response in (page, http.get("/api/v1/jobs")):
            assert response.headers["content-security-policy"].startswith("default-src 'self'")
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["referrer-policy"] == "no-referrer"
        wrong = {"Authorization": "Bearer not-the-token"}
        assert http.get("/api/v1/jobs", headers=wrong).status_code == 401
        bearer = {"Authorization": f"Bearer {token}"}
        assert http.get("/api/v1/jobs", headers=bearer).status_code == 200

        # signing in with a wrong token: back to the page, no cookie
        failed = http.get("/", params={"token": "not-the-token"})
        assert (failed.status_code, failed.headers["location"]) == (303, "/?signin=failed")
        assert "set-cookie" not in failed.headers
        form = http.post("/signin", data={"token": "nope"})
        assert (form.status_code, form.headers["location"]) == (303, "/?signin=failed")

        # the printed link signs in: an HttpOnly, SameSite=Strict cookie that is not the token
        signed = http.get("/", params={"token": token})
        assert (signed.status_code, signed.headers["location"]) == (303, "/")
        cookie = session_cookie(signed)
        assert token not in signed.headers["set-cookie"]
        assert session_cookie(http.post("/signin", data={"token": token})) == cookie
        http.cookies.clear()  # from here on the cookie is sent only where a test says so
        browser = {"Cookie": f"sje_session={cookie}"}
        assert http.get("/api/v1/overview", headers=browser).status_code == 200
        assert (
            http.get("/api/v1/overview", headers={"Cookie": "sje_session=forged"}).status_code
            == 401
        )
        csrf = http.get("/api/v1/session", headers=browser).json()["csrf"]

        # actions with only the cookie need the CSRF header
        refused = http.post(f"/api/v1/jobs/{parked[0]}/cancel", headers=browser)
        assert error_of(refused, 403)["code"] == "csrf"
        assert "X-SJE-CSRF" in refused.json()["error"]["message"]
        forged = http.post(
            f"/api/v1/jobs/{parked[0]}/cancel", headers={**browser, "X-SJE-CSRF": "f" * 64}
        )
        assert forged.status_code == 403
        done = http.post(
            f"/api/v1/jobs/{parked[0]}/cancel", headers={**browser, "X-SJE-CSRF": csrf}
        )
        assert done.status_code == 200, done.text
        assert (done.json()["state"], done.json()["cancelled"]) == ("cancelled", True)
        # the CSRF value alone, without the session, is not enough
        assert (
            http.post(f"/api/v1/jobs/{parked[1]}/cancel", headers={"X-SJE-CSRF": csrf}).status_code
            == 401
        )
        # programs with the token need no CSRF header
        by_program = http.post(f"/api/v1/jobs/{parked[1]}/cancel", headers=bearer)
        assert by_program.status_code == 200 and by_program.json()["cancelled"] is True
        # no CORS grant for another origin's preflight
        preflight = http.options(
            f"/api/v1/jobs/{parked[2]}/cancel",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in preflight.headers
        out = http.post("/signout", headers=browser)
        assert out.status_code == 303 and 'sje_session=""' in out.headers["set-cookie"]
    with api_client(env) as client:
        assert client.job(parked[2]).status()["state"] == "pending"


def test_auth_none_is_refused_off_loopback_and_still_needs_csrf_on_loopback(
    env: dict[str, str], procs: list[Proc]
) -> None:
    done = run_sje(
        "monitor",
        "--bind-address",
        "0.0.0.0",
        "--port",
        "0",
        "--broker-url",
        env["SJE_BROKER_URL"],
        env={**env, "SJE_AUTH": "none"},
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "Error: Refusing to serve the dashboard on 0.0.0.0 with auth: none (anyone who can reach "
        "it could cancel jobs): remove auth: none, or bind to 127.0.0.1."
    )

    open_env = {k: v for k, v in env.items() if k != "SJE_TOKEN"} | {"SJE_AUTH": "none"}
    proc, url = start_monitor(open_env)
    procs.append(proc)
    wait_until(lambda: proc.find("Dashboard: "), 10, "the dashboard line")
    assert proc.find("?token=") is None  # no token, no sign-in link
    with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
        assert http.get("/api/v1/overview").status_code == 200
        session = http.get("/api/v1/session").json()
        assert session["auth"] == "none"
        missing = "0" * 32
        assert error_of(http.post(f"/api/v1/jobs/{missing}/cancel"), 403)["code"] == "csrf"
        with_csrf = http.post(
            f"/api/v1/jobs/{missing}/cancel", headers={"X-SJE-CSRF": session["csrf"]}
        )
        assert with_csrf.status_code == 404


def test_a_monitor_with_a_token_prints_the_link_that_signs_in(
    env: dict[str, str], monitor: str, procs: list[Proc]
) -> None:
    proc = procs[-1]
    assert proc.find(f"SJE monitor listening on {monitor}") is not None
    link = f"{monitor}/?token={env['SJE_TOKEN']}"
    wait_until(lambda: proc.find(link), 10, "the sign-in link to be printed")
    with httpx.Client(timeout=TIMEOUT) as http:
        signed = http.get(link)
        assert (signed.status_code, signed.headers["location"]) == (303, "/")
        session_cookie(signed)


# -- actions ------------------------------------------------------------------------------------


def test_retry_requeues_a_failed_job_until_it_succeeds_and_refuses_a_succeeded_one(
    master: str,
    env: dict[str, str],
    worker: Callable[..., Proc],
    api: httpx.Client,
    tmp_path: Path,
) -> None:
    worker("--tasks", TASKS, "--concurrency", "1")
    gate = tmp_path / "gate"
    items = [{"gate": str(gate), "value": i} for i in range(3)]
    with api_client(env) as client:
        handle = client.submit({"task": GATED, "name": "gated", "inputs": items})
        assert handle.wait(timeout=60)["state"] == "failed"
        assert get(api, "/api/v1/dlq")["total"] == 1
        gate.touch()
        reply = api.post(f"/api/v1/jobs/{handle.id}/retry")
        assert reply.status_code == 200, reply.text
        assert reply.json() == {"id": handle.id, "requeued": 3}
        assert handle.result(timeout=60) == [0, 1, 2]
    job = get(api, f"/api/v1/jobs/{handle.id}")
    assert job["state"] == "succeeded" and job["tasks"]["succeeded"] == 3
    assert get(api, "/api/v1/dlq")["total"] == 0
    timeline = [e["type"] for e in get(api, f"/api/v1/jobs/{handle.id}/timeline")["events"]]
    assert timeline.count("job.requeued") == 1 and timeline[-1] == "job.succeeded"
    assert timeline.index("job.failed") < timeline.index("job.requeued")

    again = api.post(f"/api/v1/jobs/{handle.id}/retry")
    assert error_of(again, 409) == {
        "code": "not_requeueable",
        "message": f"Cannot retry job {handle.id}: it is succeeded, not failed; only failed jobs "
        "can be retried.",
    }


# -- workers ----------------------------------------------------------------------------------


def test_a_killed_worker_is_shown_lost_while_the_other_stays_alive(
    master: str,
    env: dict[str, str],
    worker: Callable[..., Proc],
    api: httpx.Client,
    r: redis.Redis,
    prefix: str,
) -> None:
    assert env["SJE_HEARTBEAT_INTERVAL"] == "0.5"  # lost after max(3 x 0.5 s, 5 s)
    worker("--concurrency", "1", "--name", "keeper")
    victim = worker("--concurrency", "1", "--name", "victim")

    def states() -> dict[str, str]:
        return {w["name"]: w["state"] for w in get(api, "/api/v1/workers")["workers"]}

    assert states() == {"keeper": "alive", "victim": "alive"}
    victim_id = next(
        w["id"] for w in get(api, "/api/v1/workers")["workers"] if w["name"] == "victim"
    )
    victim.signal(signal.SIGKILL)
    victim.wait(10)
    wait_until(lambda: states() == {"keeper": "alive", "victim": "lost"}, 30, "victim shown lost")
    events = read_events(
        api, lambda e: e["type"] == "worker.lost" and e["worker"] == victim_id, after="0"
    )
    assert [e["type"] for e in events if e.get("worker") == victim_id][:1] == ["worker.joined"]
    raw: Any = r.xrange(f"{prefix}:events")
    lost = [f[b"worker"].decode() for _i, f in raw if f[b"type"] == b"worker.lost"]
    assert lost == [victim_id]  # once, and only the victim
    assert get(api, "/api/v1/overview")["workers"] == {"alive": 1, "lost": 1, "busy": 0, "slots": 1}
    wait_until(lambda: states()["keeper"] == "alive", 5, "the keeper to stay alive")
    with api_client(env) as client:
        assert client.submit({"task": SQUARE, "inputs": [3]}).result(timeout=30) == [9]
    assert states() == {"keeper": "alive", "victim": "lost"}
