"""Submit and wait in one request (``POST /jobs?wait=S``, ``client.submit(job, wait=S)``):
real master and worker processes on a real Redis."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

import sje
from tests.support import Proc, api_client, start_master

SQUARE = "tests.apps.sample_tasks.square"
WAIT = "tests.apps.sample_tasks.started_then_wait"


def _gated(tmp_path: Path, value: int) -> dict[str, object]:
    return {"value": value, "started": str(tmp_path / "started"), "release": str(tmp_path / "go")}


def test_the_reply_carries_the_outcome_so_result_needs_no_further_request(
    env: dict[str, str], procs: list[Proc], worker: Callable[..., Proc]
) -> None:
    master, url = start_master(env)
    procs.append(master)
    worker("--concurrency", "1")
    with api_client(env, url) as client:
        call = client.submit({"task": "tests.apps.sample_tasks.add", "args": [2, 3]}, wait=30)
        mapped = client.submit({"task": SQUARE, "inputs": [1, 2, 3]}, wait=30)
        reduced = client.submit(
            {"task": SQUARE, "inputs": [1, 2, 3], "reduce": "tests.total"}, wait=30
        )
        master.stop()  # whatever follows must come from the replies alone
        assert call.result() == 5
        assert call.wait()["state"] == "succeeded"
        assert reduced.result() == 14
        assert mapped.wait()["tasks"]["succeeded"] == 3
        with pytest.raises(sje.MasterError, match="Connection refused"):
            mapped.result()  # an inputs job's results are paged from the master


def test_a_failed_job_raises_with_the_remote_traceback_from_the_reply(
    master: str, env: dict[str, str], worker: Callable[..., Proc]
) -> None:
    worker("--concurrency", "1")
    with api_client(env, master) as client:
        handle = client.submit({"task": "tests.apps.sample_tasks.boom", "args": [7]}, wait=30)
        assert handle.wait()["state"] == "failed"
        with pytest.raises(sje.JobFailed, match="ValueError: boom on 7") as failure:
            handle.result()
    assert "raise ValueError" in failure.value.traceback  # type: ignore[attr-defined]


def test_a_job_that_outlasts_the_wait_is_accepted_and_followed_as_before(
    master: str, env: dict[str, str], worker: Callable[..., Proc], tmp_path: Path
) -> None:
    worker("--concurrency", "1")
    with api_client(env, master) as client:
        reply = client.request(
            "POST",
            "/jobs",
            params={"wait": "0.3"},
            json={"task": WAIT, "args": [_gated(tmp_path, 4)]},
        )
        assert "job" not in reply and reply["tasks"] == 1
        assert client.job(reply["id"]).status()["state"] in ("pending", "running")
        (tmp_path / "go").touch()
        assert client.job(reply["id"]).result(timeout=30) == 4


def test_a_duplicate_submit_waits_for_the_first_job_and_gets_its_outcome(
    master: str, env: dict[str, str], worker: Callable[..., Proc]
) -> None:
    worker("--concurrency", "1")
    job = {"task": "tests.apps.sample_tasks.add", "args": [20, 22], "idempotency-key": "k-42"}
    with api_client(env, master) as client:
        first = client.submit(job, wait=30)
        assert first.result() == 42
        again = client.request("POST", "/jobs", params={"wait": "30"}, json=job)
        assert again["duplicate"] is True and again["id"] == first.id
        assert again["job"]["state"] == "succeeded" and again["job"]["result"] == 42


def test_many_requests_waiting_at_once_each_get_their_own_outcome(
    master: str, env: dict[str, str], worker: Callable[..., Proc]
) -> None:
    worker("--concurrency", "2")
    got: dict[int, object] = {}

    def one(i: int) -> None:
        with api_client(env, master) as client:
            got[i] = client.submit({"task": SQUARE, "args": [i]}, wait=30).result()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got == {i: i * i for i in range(40)}


@pytest.mark.parametrize("wait", ["-1", "61", "soon", "nan"])
def test_a_bad_wait_is_refused_and_stores_nothing(
    master: str, env: dict[str, str], wait: str
) -> None:
    with api_client(env, master) as client:
        before = len(client.jobs(limit=1000))
        response = httpx.post(
            f"{master}/api/v1/jobs",
            params={"wait": wait},
            json={"task": SQUARE, "args": [1], "allow-unknown-task": True},
            headers={"Authorization": f"Bearer {env['SJE_TOKEN']}"} if "SJE_TOKEN" in env else {},
        )
        assert response.status_code == 400
        message = response.json()["error"]["message"]
        assert f"'wait={wait}'" in message and "seconds from 0 to 60" in message
        assert len(client.jobs(limit=1000)) == before


def test_the_client_refuses_a_wait_beyond_the_masters_bound_before_any_request(
    master: str, env: dict[str, str]
) -> None:
    with api_client(env, master) as client:
        with pytest.raises(ValueError, match="expected seconds from 0 to 60"):
            client.submit({"task": SQUARE, "args": [1], "allow-unknown-task": True}, wait=61)
        assert client.jobs() == []


def test_the_async_client_gets_the_outcome_from_the_reply(
    master: str, env: dict[str, str], worker: Callable[..., Proc]
) -> None:
    worker("--concurrency", "1")

    async def run() -> object:
        client = sje.AsyncClient(master, token=env.get("SJE_TOKEN"))
        try:
            handle = await client.submit(
                {"task": "tests.apps.sample_tasks.add", "args": [1, 2]}, wait=30
            )
            assert (await handle.wait())["state"] == "succeeded"
            return await handle.result()
        finally:
            await client.aclose()

    assert asyncio.run(run()) == 3
