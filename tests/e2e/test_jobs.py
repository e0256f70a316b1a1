"""End to end: real master and worker processes on a real Redis, jobs from Python and the CLI."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import redis

import sje
from tests.support import Proc, events_of, run_sje


def test_ten_thousand_inputs_across_two_workers_come_back_complete_and_in_order(
    master: str, worker: Callable[..., Proc], r: redis.Redis, prefix: str
) -> None:
    worker("--concurrency", "1", "--name", "w1")
    worker("--concurrency", "1", "--name", "w2")
    inputs = list(range(10_000))
    handle = sje.Job(task="tests.apps.sample_tasks.square", inputs=inputs).submit(
        sje.Client(master)
    )
    assert handle.result(timeout=120) == [x * x for x in inputs]
    status = handle.status()
    assert status["state"] == "succeeded"
    assert status["tasks"]["succeeded"] == 10_000
    done_by = Counter(
        e["worker"].rsplit("-", 1)[0]
        for e in events_of(r, prefix, handle.id)
        if e["type"] == "task.succeeded"
    )
    assert set(done_by) == {"w1", "w2"}, done_by


def test_burst_worker_drains_the_queue_then_exits_on_its_own(
    master: str, worker: Callable[..., Proc]
) -> None:
    handle = sje.Client(master).submit(
        {
            "task": "tests.apps.sample_tasks.square",
            "inputs": list(range(500)),
            "allow-unknown-task": True,
        }
    )
    burst = worker("--concurrency", "2", "--burst")
    assert burst.wait(60) == 0, burst.output()
    assert handle.status()["tasks"]["succeeded"] == 500
    empty = worker("--concurrency", "1", "--burst")
    assert empty.wait(30) == 0, "nothing to do: it exits at once"


def test_reduce_receives_every_result_in_input_order(
    master: str, worker: Callable[..., Proc]
) -> None:
    worker("--concurrency", "2")
    client = sje.Client(master)
    handle = client.submit(
        {
            "task": "tests.apps.sample_tasks.square",
            "inputs": list(range(100)),
            "reduce": "tests.total",
            "chunk-size": 7,
        }
    )
    assert handle.result(timeout=60) == sum(x * x for x in range(100))
    assert handle.status()["tasks"]["total"] == 16  # 15 chunks + the reduce step
    # the stream's final event carries the value: waiting costs no extra request
    assert handle.wait(10)["result"] == sum(x * x for x in range(100))


def test_chunked_job_results_are_flattened_in_input_order(
    master: str, worker: Callable[..., Proc]
) -> None:
    worker("--concurrency", "2")
    handle = sje.Client(master).submit(
        {"task": "tests.apps.sample_tasks.square", "inputs": list(range(25)), "chunk_size": 4}
    )
    assert handle.result(timeout=60) == [x * x for x in range(25)]
    assert handle.status()["tasks"]["total"] == 7


def test_args_job_returns_the_single_value(master: str, worker: Callable[..., Proc]) -> None:
    worker("--concurrency", "1")
    handle = sje.Client(master).submit(
        {"task": "tests.apps.sample_tasks.add", "args": [2, 3], "kwargs": {"scale": 10}}
    )
    assert handle.result(timeout=60) == 50
    assert handle.wait(10)["result"] == 50  # in the final event of the stream


def test_async_tasks_run_concurrently_inside_one_child_process(
    master: str, worker: Callable[..., Proc]
) -> None:
    worker("--concurrency", "1")
    # every call blocks until 20 are in flight at once: only concurrent execution can finish
    handle = sje.Client(master).submit(
        {"task": "tests.apps.sample_tasks.rendezvous", "inputs": [20] * 20}
    )
    results = handle.result(timeout=60)
    assert len({row["pid"] for row in results}) == 1
    assert all(row["arrived"] >= 20 for row in results)


def test_async_client_submits_waits_and_observes(master: str, worker: Callable[..., Proc]) -> None:
    worker("--concurrency", "1")

    async def scenario() -> tuple[list[int], dict[str, object], list[str]]:
        client = sje.AsyncClient(master)
        handle = await client.submit(
            {"task": "tests.apps.sample_tasks.async_square", "inputs": [1, 2, 3]}
        )
        seen: list[str] = []
        finished: list[dict[str, object]] = []
        watcher = handle.on_event(lambda e: seen.append(e["type"]))
        completion = handle.on_complete(finished.append)
        result = await handle.result(timeout=60)
        await asyncio.wait_for(asyncio.gather(watcher, completion), 30)
        await client.aclose()
        return result, finished[0], seen

    result, final, seen = asyncio.run(scenario())
    assert result == [1, 4, 9]
    assert final["state"] == "succeeded"
    assert "task.succeeded" in seen


def test_observer_callbacks_are_pushed_on_completion(
    master: str, worker: Callable[..., Proc]
) -> None:
    worker("--concurrency", "1")
    handle = sje.Client(master).submit({"task": "tests.apps.sample_tasks.square", "inputs": [3]})
    done = threading.Event()
    states: list[str] = []
    events: list[str] = []
    handle.on_event(lambda e: events.append(e["type"]))

    def completed(status: dict[str, object]) -> None:
        states.append(str(status["state"]))
        done.set()

    handle.on_complete(completed)
    assert done.wait(60)
    assert states == ["succeeded"]
    assert "task.started" in events and "task.succeeded" in events


def test_cli_submit_wait_prints_result_and_status_json_has_counts(
    master: str, worker: Callable[..., Proc], env: dict[str, str], tmp_path: Path
) -> None:
    worker("--concurrency", "1")
    submit = tmp_path / "submit.yaml"
    submit.write_text(
        "job:\n  name: squares\n  task-def:\n    task: tests.apps.sample_tasks.square\n"
        "    inputs: [1, 2, 3]\n"
    )
    done = run_sje(
        "submit",
        "squares",
        "--config",
        str(submit),
        "--set",
        "inputs=[4,5]",
        "--wait",
        "--json",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["result"] == [16, 25]
    status = run_sje("status", payload["id"], "--json", env=env)
    view = json.loads(status.stdout)
    assert view["id"] == payload["id"]
    assert view["state"] == "succeeded"
    assert view["tasks"]["succeeded"] == 2 and view["tasks"]["queued"] == 0
    result = run_sje("result", payload["id"], env=env)
    assert json.loads(result.stdout) == [16, 25]
    listing = run_sje("jobs", "--json", env=env)
    assert payload["id"] in [j["id"] for j in json.loads(listing.stdout)["jobs"]]
    workers = run_sje("workers", "--json", env=env)
    assert json.loads(workers.stdout)["workers"][0]["alive"] is True


def test_cli_submit_wait_of_a_quick_job_prints_its_result_from_the_submit_alone(
    master: str, worker: Callable[..., Proc], env: dict[str, str], tmp_path: Path
) -> None:
    """A job that ends within the submit's own wait (1 s; this one takes milliseconds on a
    warm worker) is answered by that request: no "Submitted job" line, no progress bar."""
    worker("--concurrency", "1")
    submit = tmp_path / "submit.yaml"
    submit.write_text("job:\n  name: one\n  task-def: {task: tests.apps.sample_tasks.square}\n")
    warm = run_sje("submit", "one", "--config", str(submit), "--set", "args=[2]", "--wait", env=env)
    assert warm.returncode == 0, warm.stderr
    done = run_sje("submit", "one", "--config", str(submit), "--set", "args=[7]", "--wait", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == 49
    assert "Submitted job" not in done.stderr, done.stderr


def test_cli_submit_wait_of_a_longer_job_shows_progress_then_prints_its_result(
    master: str, worker: Callable[..., Proc], env: dict[str, str], tmp_path: Path
) -> None:
    """A job still running when the submit's wait ends: the id and a progress bar on stderr,
    then the result on stdout once the job ends."""
    worker("--concurrency", "1")
    release = tmp_path / "release"
    item = {"value": 5, "started": str(tmp_path / "started"), "release": str(release)}
    submit = tmp_path / "submit.yaml"
    submit.write_text(
        "job:\n  name: gated\n  task-def:\n    task: tests.apps.sample_tasks.started_then_wait\n"
        f"    args: [{json.dumps(item)}]\n"
    )
    cli = Proc(["submit", "gated", "--config", str(submit), "--wait"], env, "Submitted job")
    try:
        release.touch()  # only now can the job end: "Submitted job" came first for sure
        assert cli.wait(60) == 0, cli.output()
        assert cli.lines[-1] == "5", cli.output()
    finally:
        cli.stop()


def test_cli_submit_wait_gives_up_after_its_timeout_and_names_it(
    master: str, worker: Callable[..., Proc], env: dict[str, str], tmp_path: Path
) -> None:
    worker("--concurrency", "1")
    item = {"value": 1, "started": str(tmp_path / "started"), "release": str(tmp_path / "never")}
    submit = tmp_path / "submit.yaml"
    submit.write_text(
        "job:\n  name: gated\n  task-def:\n    task: tests.apps.sample_tasks.started_then_wait\n"
        f"    args: [{json.dumps(item)}]\n"
    )
    for timeout, json_flag in (("0.5", []), ("1.5", []), ("1.5", ["--json"])):
        done = run_sje(
            "submit",
            "gated",
            "--config",
            str(submit),
            "--wait",
            "--timeout",
            timeout,
            *json_flag,
            env=env,
        )
        assert done.returncode == 7, done.stderr
        assert f"did not finish within {float(timeout)}s of waiting" in done.stderr, done.stderr


def test_job_handle_wait_reports_each_event_on_the_way(
    master: str, worker: Callable[..., Proc]
) -> None:
    worker("--concurrency", "1")
    client = sje.Client(master)
    handle = client.submit({"task": "tests.apps.sample_tasks.square", "inputs": [1, 2, 3]})
    seen: list[dict[str, object]] = []
    view = handle.wait(60, on_event=seen.append)
    assert view["state"] == "succeeded"
    assert seen[-1]["type"] == "job.progress" and seen[-1]["state"] == "succeeded"
    assert {e["type"] for e in seen} >= {"job.started", "job.succeeded"}
    assert not handle.ended  # its end was followed, not carried by the submit's reply
    waited = client.submit({"task": "tests.apps.sample_tasks.square", "args": [4]}, wait=30)
    assert waited.ended and waited.result() == 16


def test_cli_submit_without_wait_prints_only_the_job_id(
    master: str, env: dict[str, str], tmp_path: Path, worker: Callable[..., Proc]
) -> None:
    worker("--concurrency", "1")
    submit = tmp_path / "submit.yaml"
    submit.write_text(
        "jobs:\n  - name: one\n    task-def: {task: tests.apps.sample_tasks.square, args: [7]}\n"
    )
    done = run_sje("submit", "one", env={**env, "SJE_CONFIG_FILE": str(submit)})
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    assert len(job_id) == 32
    assert sje.Client(master).job(job_id).result(timeout=60) == 49


def test_idempotency_key_returns_the_same_job_and_conflicts_on_other_payload(
    master: str, env: dict[str, str]
) -> None:
    client = sje.Client(master)
    job = {
        "task": "tests.apps.sample_tasks.square",
        "inputs": [1],
        "idempotency-key": "k-1",
        "allow-unknown-task": True,
    }
    first = client.submit(job)
    second = client.submit(job)
    assert first.id == second.id
    try:
        client.submit({**job, "inputs": [2]})
    except sje.IdempotencyConflict as exc:
        assert "k-1" in exc.message and first.id in exc.message
    else:
        raise AssertionError("a different payload under the same key must conflict")


def test_workers_serve_only_their_queues(
    master: str, worker: Callable[..., Proc], tmp_path: Path
) -> None:
    worker("--concurrency", "1", "--queues", "default")
    client = sje.Client(master)
    log = tmp_path / "runs.log"
    handle = client.submit(
        {
            "task": "tests.apps.sample_tasks.record",
            "queue": "reports",
            "inputs": [{"value": 1, "log": str(log)}],
        }
    )
    # a probe job on the default queue finishing proves the worker was polling all along
    assert (
        client.submit({"task": "tests.apps.sample_tasks.square", "args": [2]}).result(timeout=30)
        == 4
    )
    assert handle.status()["state"] == "pending" and not log.exists()
    worker("--concurrency", "1", "--queues", "reports,default")
    assert handle.result(timeout=30) == [1]


def test_children_are_recycled_after_max_tasks_per_child(
    master: str, env: dict[str, str], worker: Callable[..., Proc], tmp_path: Path
) -> None:
    env["SJE_MAX_TASKS_PER_CHILD"] = "2"
    worker("--concurrency", "1")
    log = tmp_path / "runs.log"
    handle = sje.Client(master).submit(
        {
            "task": "tests.apps.sample_tasks.record",
            "inputs": [{"value": i, "log": str(log)} for i in range(6)],
        }
    )
    assert handle.result(timeout=60) == list(range(6))
    pids = [line.split()[1] for line in log.read_text().splitlines()]
    assert len(pids) == 6
    assert len(set(pids)) == 3, pids
