"""The security layer with real processes: tokens by default, refused open binds, signed
tasks across masters and workers, and start-up warnings about a Redis that could lose work."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

import sje
from tests.support import (
    Proc,
    auth,
    free_port,
    redis_reachable,
    run_sje,
    start_master,
    wait_until,
)

SQUARE = "tests.apps.sample_tasks.square"


def _without(env: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in names}


def test_a_master_without_a_token_generates_one_prints_it_once_and_requires_it(
    env: dict[str, str], procs: list[Proc], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    env = {**_without(env, "SJE_TOKEN"), "SJE_STATE_DIR": str(state)}
    first, url = start_master(env)
    procs.append(first)
    line = wait_until(lambda: first.find("Generated the API token"), 10, "the token notice")
    assert line is not None
    token = line.split("Generated the API token ", 1)[1].split(" ", 1)[0]
    assert len(token) >= 32

    # no token: refused, except health
    assert httpx.get(f"{url}/api/v1/jobs").status_code == 401
    assert httpx.get(f"{url}/api/v1/health").status_code == 200
    assert httpx.get(f"{url}/api/v1/jobs", headers={"Authorization": f"Bearer {token}"}).is_success
    # a client on this host finds it through the state file; others must set SJE_TOKEN
    assert run_sje("jobs", env={**env, "SJE_MASTER": url}).returncode == 0
    elsewhere = run_sje("jobs", env={**env, "SJE_MASTER": url, "SJE_STATE_DIR": str(tmp_path)})
    assert elsewhere.returncode == 4
    assert elsewhere.stderr.strip() == (
        "Error: Missing or wrong API token: set SJE_TOKEN to the token the master printed at "
        "its first start (`sje token` prints it)."
    )
    assert run_sje("token", env=env).stdout.strip() == token

    second, url2 = start_master(env)
    procs.append(second)
    assert second.find("Generated the API token") is None, "printed only on first start"
    assert token not in second.output()
    assert sje.Client(url2, token=token).jobs() == []


def test_auth_none_is_refused_on_a_non_loopback_address(env: dict[str, str]) -> None:
    done = run_sje(
        "master", "--bind-address", "0.0.0.0", "--port", "0", env={**env, "SJE_AUTH": "none"}
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "Error: Refusing to listen on 0.0.0.0 with auth: none (anyone who can reach it could "
        "run tasks): remove auth: none, or bind to 127.0.0.1."
    )


def test_auth_none_on_loopback_needs_no_token(env: dict[str, str], procs: list[Proc]) -> None:
    proc, url = start_master({**_without(env, "SJE_TOKEN"), "SJE_AUTH": "none"})
    procs.append(proc)
    assert httpx.get(f"{url}/api/v1/jobs").json() == {"jobs": [], "next": None}


def test_tasks_signed_with_another_secret_are_dead_lettered_then_requeued(
    master: str, env: dict[str, str], worker: Callable[..., Proc], procs: list[Proc]
) -> None:
    original = env["SJE_SECRET"]
    env["SJE_SECRET"] = "another-secret-entirely"
    stranger = worker("--concurrency", "1", "--name", "stranger")
    env["SJE_SECRET"] = original
    handle = sje.Client(master).submit({"task": SQUARE, "inputs": [1, 2, 3]})
    with pytest.raises(sje.JobFailed, match="BadSignature: signature missing or wrong"):
        handle.result(timeout=30)
    listed = run_sje("dlq", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [e["error"]["type"] for e in orjson.loads(listed.stdout)["entries"]] == ["BadSignature"]
    stranger.stop()

    worker("--concurrency", "2", "--name", "trusted")
    again = run_sje("dlq", "requeue", "--all", env=env)
    assert again.returncode == 0, again.stderr
    assert f"job {handle.id} runs again" in again.stdout
    assert handle.result(timeout=30) == [1, 4, 9]
    assert orjson.loads(run_sje("dlq", "list", "--json", env=env).stdout)["total"] == 0


def test_without_a_configured_secret_masters_and_workers_share_a_generated_one(
    env: dict[str, str], procs: list[Proc], worker: Callable[..., Proc]
) -> None:
    env.pop("SJE_SECRET")
    proc, url = start_master(env)
    procs.append(proc)
    env["SJE_MASTER"] = url
    worker("--concurrency", "1")
    assert sje.Client(url).submit({"task": SQUARE, "inputs": [5]}).result(timeout=30) == [25]


@pytest.fixture
def careless_redis(tmp_path: Path) -> Iterator[str]:
    """A Redis that could lose work: no AOF, evicts any key under memory pressure."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is installed by scripts/bootstrap.sh"
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir"]
    args += [str(tmp_path), "--appendonly", "no", "--maxmemory", "64mb"]
    args += ["--maxmemory-policy", "allkeys-lru"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    wait_until(lambda: redis_reachable(url), 20, "the careless Redis")
    yield url
    proc.terminate()
    proc.wait(10)


def test_master_and_worker_warn_at_start_when_redis_could_lose_work(
    env: dict[str, str], careless_redis: str, procs: list[Proc], worker: Callable[..., Proc]
) -> None:
    env["SJE_BROKER_URL"] = careless_redis
    proc, _ = start_master(env)
    procs.append(proc)
    port = careless_redis.rsplit(":", 1)[1].split("/")[0]
    for p in (proc, worker("--concurrency", "1")):
        assert p.find(
            f"Redis at 127.0.0.1:{port} has appendonly off: a Redis restart loses accepted jobs."
        )
        assert p.find("maxmemory-policy allkeys-lru): queued jobs can vanish")


def test_dlq_commands_explain_bad_input(master: str, env: dict[str, str]) -> None:
    missing = "Error: No dead-letter entry 'nope'. List them with `sje dlq list`."
    for args in (("requeue", "nope"), ("show", "nope"), ("purge", "nope")):
        done = run_sje("dlq", *args, env=env)
        assert (done.returncode, done.stderr.strip()) == (5, missing)
    done = run_sje("dlq", "purge", env=env)
    assert done.returncode == 2
    assert (
        done.stderr.strip() == "Error: Give the entry ids to purge (see `sje dlq list`), or --all."
    )
    done = run_sje("dlq", "requeue", "x", "--all", env=env)
    assert (done.returncode, done.stderr.strip()) == (
        2,
        "Error: Give entry ids or --all to requeue, not both.",
    )
    done = run_sje("dlq", "purge", "--all", "--yes", env=env)
    assert (done.returncode, done.stdout.strip()) == (0, "Purged 0 entries.")


def test_payload_limits_on_submit(env: dict[str, str], procs: list[Proc]) -> None:
    proc, url = start_master({**env, "SJE_MAX_REQUEST_MB": "0.01", "SJE_MAX_MESSAGE_KB": "1"})
    procs.append(proc)
    client = sje.Client(url)
    job = {"task": SQUARE, "inputs": ["x" * 2048], "allow-unknown-task": True}
    with pytest.raises(sje.InvalidJob) as big_input:
        client.submit(job)
    assert big_input.value.message == (
        "Task 0's input is 2 KiB, over max-message-kb=1: pass a reference (a path or URL) "
        "instead, or raise max-message-kb on masters and workers alike."
    )
    too_large = (
        "Request body over max-request-mb=0.01: split the job into smaller ones, or raise "
        "max-request-mb on the master."
    )
    with pytest.raises(sje.RequestTooLarge) as big_body:
        client.submit({**job, "inputs": ["x" * 100] * 200})
    assert big_body.value.message == too_large

    def chunks() -> Iterator[bytes]:  # no Content-Length: the master counts as it reads
        yield b'{"task": "t", "inputs": ['
        for _ in range(2000):
            yield b'"xxxxxxxxxx",'
        yield b'"x"]}'

    reply = httpx.post(f"{url}/api/v1/jobs", content=chunks(), headers=auth(env))
    assert reply.status_code == 413
    assert reply.json()["error"] == {"code": "too_large", "message": too_large}
    assert client.jobs() == []
