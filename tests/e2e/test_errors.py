"""Every error a user can meet: one short message saying what to do, and its exit code."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import sje
import sje.client
from tests.support import Proc, api_client, auth, free_port, run_sje, sje_env, start_master


def _submit_file(tmp_path: Path, body: str) -> str:
    path = tmp_path / "submit.yaml"
    path.write_text(body)
    return str(path)


def test_master_unreachable_says_which_url_and_how_to_fix(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = run_sje("status", "abc", env=sje_env(SJE_MASTER=url))
    assert done.returncode == 4
    assert f"Connection refused: no SJE master answers at {url}" in done.stderr
    assert "Start one with `sje master`, or set SJE_MASTER" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture
def stopped_master(master: str, procs: list[Proc]) -> Iterator[str]:
    """The test's master, stopped (SIGSTOP): it accepts connections and answers nothing."""
    procs[-1].signal(signal.SIGSTOP)
    yield master
    procs[-1].signal(signal.SIGCONT)


def test_a_master_that_does_not_answer_is_a_timeout_naming_the_seconds_waited(
    stopped_master: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sje.client, "READ_TIMEOUT_S", 0.5)
    said = f"The master at {stopped_master} did not answer within"
    client = api_client(env, stopped_master)
    with pytest.raises(sje.MasterError) as caught:
        client.health()
    assert f"{said} 0.5s" in caught.value.message
    assert "check the master's log" in caught.value.message
    with pytest.raises(sje.MasterError) as caught:  # a submit that waits gets its wait on top
        client.submit({"task": "tests.apps.sample_tasks.add", "args": [1, 2]}, wait=1)
    assert f"{said} 1.5s" in caught.value.message

    async def through_the_async_client() -> str:
        async_client = sje.AsyncClient(stopped_master, token=env["SJE_TOKEN"])
        try:
            with pytest.raises(sje.MasterError) as caught:
                await async_client.submit({"task": "tests.apps.sample_tasks.add", "args": [1]})
            return caught.value.message
        finally:
            await async_client.aclose()

    assert f"{said} 0.5s" in asyncio.run(through_the_async_client())


def test_debug_flag_shows_the_traceback() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = run_sje("--debug", "status", "abc", env=sje_env(SJE_MASTER=url))
    assert done.returncode == 4
    assert "Traceback" in done.stderr


def test_redis_unreachable_names_host_port_and_fix() -> None:
    port = free_port()
    done = run_sje(
        "master", "--port", "0", "--broker-url", f"redis://127.0.0.1:{port}/0", env=sje_env()
    )
    assert done.returncode == 3
    assert f"Cannot reach Redis at 127.0.0.1:{port}" in done.stderr
    assert "SJE_BROKER_URL" in done.stderr
    worker = run_sje(
        "worker",
        "--tasks",
        "tests.apps.sample_tasks",
        env=sje_env(SJE_BROKER_URL=f"redis://127.0.0.1:{port}/0"),
    )
    assert worker.returncode == 3
    assert f"Cannot reach Redis at 127.0.0.1:{port}" in worker.stderr


def test_queue_full_is_refused_with_429_and_exit_code_6(
    env: dict[str, str], procs: list[Proc], tmp_path: Path
) -> None:
    proc, url = start_master({**env, "SJE_MAX_QUEUE_LENGTH": "5"})
    procs.append(proc)
    job = {
        "task": "tests.apps.sample_tasks.square",
        "inputs": list(range(10)),
        "allow-unknown-task": True,
    }
    with pytest.raises(sje.QueueFull) as full:
        sje.Client(url).submit(job)
    assert full.value.message.startswith(
        "Queue full: queue 'default' holds 0 tasks and its bound is 5 (max-queue-length); "
        "this job adds 10."
    )
    submit = _submit_file(
        tmp_path,
        "job:\n  name: big\n  task-def:\n    task: tests.apps.sample_tasks.square\n"
        "    inputs: [1, 2, 3, 4, 5, 6]\n    allow-unknown-task: true\n",
    )
    done = run_sje("submit", "big", "--config", submit, env={**env, "SJE_MASTER": url})
    assert done.returncode == 6
    assert "Queue full: queue 'default'" in done.stderr
    import httpx

    reply = httpx.post(f"{url}/api/v1/jobs", json=job, headers=auth(env))
    assert reply.status_code == 429
    assert reply.headers["retry-after"] == "5"


def test_job_timeout_from_the_cli_exits_7(
    master: str, env: dict[str, str], worker: Callable[..., Proc], tmp_path: Path
) -> None:
    worker("--concurrency", "1")
    submit = _submit_file(
        tmp_path,
        "job:\n  name: slow\n  task-def:\n    task: tests.apps.sample_tasks.hang\n"
        "    inputs: [1]\n    job-timeout: 1\n",
    )
    done = run_sje("submit", "slow", "--config", submit, "--wait", env=env)
    assert done.returncode == 7
    assert "Job timeout: job " in done.stderr and "job-timeout of 1.0s" in done.stderr


def test_failed_job_from_the_cli_exits_8_with_the_remote_traceback(
    master: str, env: dict[str, str], worker: Callable[..., Proc], tmp_path: Path
) -> None:
    worker("--concurrency", "1")
    submit = _submit_file(
        tmp_path,
        "job:\n  name: bad\n  task-def:\n    task: tests.apps.sample_tasks.boom\n    inputs: [1]\n",
    )
    done = run_sje("submit", "bad", "--config", submit, "--wait", env=env)
    assert done.returncode == 8
    assert "failed in task 0 (attempt 1): ValueError: boom on 1" in done.stderr
    assert 'raise ValueError(f"boom on {x!r}")' in done.stderr


def test_unknown_task_at_submit_suggests_the_nearest_name(
    master: str, env: dict[str, str], worker: Callable[..., Proc], tmp_path: Path
) -> None:
    worker("--concurrency", "1")
    submit = _submit_file(
        tmp_path,
        "job:\n  name: typo\n  task-def:\n    task: tests.apps.sample_tasks.sqare\n"
        "    inputs: [1]\n",
    )
    done = run_sje("submit", "typo", "--config", submit, env=env)
    assert done.returncode == 5
    assert (
        "Unknown task 'tests.apps.sample_tasks.sqare': no worker has registered it" in done.stderr
    )
    assert "Did you mean 'tests.apps.sample_tasks.square'?" in done.stderr


def test_bad_job_definition_names_the_file_job_and_key(tmp_path: Path) -> None:
    submit = _submit_file(
        tmp_path,
        "job:\n  name: j\n  task-def:\n    task: t\n    inputs: [1]\n    priority: 99\n",
    )
    done = run_sje("submit", "j", "--config", submit, env=sje_env())
    assert done.returncode == 5
    assert (
        f"{submit}: job 'j' task-def: 'priority': must be between 0 (lowest) and 9" in done.stderr
    )
    typo = _submit_file(tmp_path, "job:\n  name: j\n  task-def:\n    task: t\n    retires: 2\n")
    done = run_sje("submit", "j", "--config", typo, env=sje_env())
    assert done.returncode == 5
    assert "unknown key 'retires'; did you mean 'retries'?" in done.stderr


def test_bad_yaml_gives_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "master.yaml"
    path.write_text("port: 7070\nbind-address: [oops\n")
    done = run_sje("master", "--config", str(path), env=sje_env())
    assert done.returncode == 2
    assert f"{path}: bad YAML at line" in done.stderr


def test_unknown_config_key_suggests_the_nearest_valid_key(tmp_path: Path) -> None:
    path = tmp_path / "master.yaml"
    path.write_text("prot: 7070\n")
    done = run_sje("master", "--config", str(path), env=sje_env())
    assert done.returncode == 2
    assert f"{path}: unknown key 'prot'; did you mean 'port'?" in done.stderr


def test_wrong_type_in_environment_names_the_variable() -> None:
    done = run_sje("worker", "--tasks", "x", env=sje_env(SJE_CONCURRENCY="many"))
    assert done.returncode == 2
    assert "environment variable SJE_CONCURRENCY: 'concurrency'" in done.stderr
    assert "'many'" in done.stderr


@pytest.mark.parametrize(
    "command", [["submit", "x", "--wait"], ["result", "abc"], ["watch", "abc"]], ids=str
)
@pytest.mark.parametrize("timeout", ["0", "-3"])
def test_a_timeout_that_is_not_positive_is_refused_before_anything_is_sent(
    command: list[str], timeout: str
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: a request would fail with 4
    done = run_sje(*command, "--timeout", timeout, env=sje_env(SJE_MASTER=url))
    assert done.returncode == 2, done.stderr
    assert f"Invalid value for '--timeout': {float(timeout)} is not in the range x>0" in done.stderr


def test_unknown_job_id_is_not_found(master: str, env: dict[str, str]) -> None:
    done = run_sje("status", "nope", env=env)
    assert done.returncode == 5
    assert "No job 'nope'" in done.stderr


def test_missing_task_module_stops_the_worker_with_a_clear_error(env: dict[str, str]) -> None:
    done = run_sje("worker", "--tasks", "no_such_module_xyz", env=env)
    assert done.returncode == 9
    assert "Cannot import task module 'no_such_module_xyz'" in done.stderr


def test_port_in_use_is_a_clear_error(env: dict[str, str], procs: list[Proc]) -> None:
    proc, url = start_master(env)
    procs.append(proc)
    port = url.rsplit(":", 1)[-1]
    done = run_sje("master", "--port", port, env=env)
    assert done.returncode == 2
    assert f"Cannot listen on 127.0.0.1:{port}" in done.stderr


def test_non_json_input_is_refused_before_sending() -> None:
    with pytest.raises(sje.InvalidJob, match=r"not JSON: inputs\[1\]: set is not JSON"):
        sje.Job(task="t", inputs=[1, {2}])


def test_wrong_token_is_refused(env: dict[str, str], procs: list[Proc]) -> None:
    proc, url = start_master({**env, "SJE_TOKEN": "s3cret-token"})
    procs.append(proc)
    with pytest.raises(sje.MasterError, match="Missing or wrong API token"):
        sje.Client(url, token="wrong").jobs()
    assert sje.Client(url, token="s3cret-token").jobs() == []


def test_bad_query_parameter_is_a_400_with_the_allowed_range(
    master: str, env: dict[str, str]
) -> None:
    import httpx

    reply = httpx.get(f"{master}/api/v1/jobs", params={"limit": "lots"}, headers=auth(env))
    assert reply.status_code == 400
    assert reply.json()["error"] == {
        "code": "invalid_request",
        "message": "Query parameter 'limit=lots': expected a whole number from 1 to 1000.",
    }
