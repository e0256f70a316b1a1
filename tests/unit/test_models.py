"""Job definitions, retry policy, result mapping, submit files, client helpers and tasks."""

from __future__ import annotations

import datetime
import random
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from sje.client import SSEParser, check_outcome, job_payload
from sje.errors import ConfigError, InvalidJob, JobFailed, JobTimeout, WorkerError
from sje.models import JobState, TaskMessage, parse_job
from sje.results import flatten, task_range
from sje.retry import retry_delay
from sje.submitfile import job_from_file
from sje.tasks import DEFAULT_QUEUE, Task, TaskDefaults, load_catalog, task

# -- parse_job ----------------------------------------------------------------------------------


def test_parse_job_accepts_kebab_case_keys() -> None:
    spec = parse_job(
        {
            "task": "app.work",
            "inputs": [1, 2, 3],
            "chunk-size": 2,
            "job-timeout": "5m",
            "backoff-max": 10,
            "idempotency-key": "k1",
            "result-ttl": "1h",
            "allow-unknown-task": True,
        }
    )
    assert spec.chunk_size == 2
    assert spec.job_timeout == 300.0
    assert spec.backoff_max == 10.0
    assert spec.idempotency_key == "k1"
    assert spec.result_ttl == 3600.0
    assert spec.allow_unknown_task is True


def test_parse_job_accepts_snake_case_keys_the_same_way() -> None:
    kebab = parse_job({"task": "t", "inputs": [1], "chunk-size": 1, "job-timeout": 3})
    snake = parse_job({"task": "t", "inputs": [1], "chunk_size": 1, "job_timeout": 3})
    assert kebab == snake


def test_unknown_job_key_raises_invalid_job_with_suggestion() -> None:
    with pytest.raises(InvalidJob) as info:
        parse_job({"task": "t", "inptus": [1]})
    assert str(info.value) == "job definition: unknown key 'inptus'; did you mean 'inputs'?"


def test_unknown_job_key_suggests_kebab_spelling() -> None:
    with pytest.raises(InvalidJob, match="did you mean 'job-timeout'"):
        parse_job({"task": "t", "job_timout": 5})


def test_error_location_names_where_the_job_came_from() -> None:
    with pytest.raises(InvalidJob, match=r"^submit\.yaml: job #2: unknown key 'foo'"):
        parse_job({"task": "t", "foo": 1}, where="submit.yaml: job #2")


def test_job_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(InvalidJob, match="expected a mapping of keys, got list"):
        parse_job([("task", "t")])  # type: ignore[arg-type]


def test_missing_task_is_refused() -> None:
    with pytest.raises(InvalidJob, match="'task': Field required"):
        parse_job({"inputs": [1]})


def test_inputs_and_args_together_are_refused() -> None:
    with pytest.raises(InvalidJob, match=r"give either 'inputs'.*or 'args'/'kwargs', not both"):
        parse_job({"task": "t", "inputs": [1], "args": [2]})


def test_inputs_and_kwargs_together_are_refused() -> None:
    with pytest.raises(InvalidJob, match="not both"):
        parse_job({"task": "t", "inputs": [1], "kwargs": {"a": 1}})


def test_empty_inputs_are_refused() -> None:
    with pytest.raises(InvalidJob, match="'inputs' is empty"):
        parse_job({"task": "t", "inputs": []})


def test_chunk_size_without_inputs_is_refused() -> None:
    with pytest.raises(InvalidJob, match="'chunk-size' needs 'inputs'"):
        parse_job({"task": "t", "args": [1], "chunk-size": 5})


def test_chunk_size_zero_is_refused() -> None:
    with pytest.raises(InvalidJob, match="'chunk-size' must be >= 1"):
        parse_job({"task": "t", "inputs": [1], "chunk-size": 0})


@pytest.mark.parametrize("priority", [-1, 10])
def test_priority_out_of_range_names_the_range(priority: int) -> None:
    with pytest.raises(InvalidJob) as info:
        parse_job({"task": "t", "priority": priority})
    message = str(info.value)
    assert "'priority': must be between 0 (lowest) and 9 (highest)" in message
    assert f"(got {priority})" in message


def test_priority_bounds_are_accepted() -> None:
    assert parse_job({"task": "t", "priority": 0}).priority == 0
    assert parse_job({"task": "t", "priority": 9}).priority == 9


def test_task_name_with_colon_is_refused() -> None:
    with pytest.raises(InvalidJob, match=r"'task': must be a non-empty name.*without ':'"):
        parse_job({"task": "bad:name"})


def test_negative_retries_are_refused() -> None:
    with pytest.raises(InvalidJob, match="'retries': must be >= 0"):
        parse_job({"task": "t", "retries": -1})


def test_datetime_nested_in_inputs_is_refused_with_its_path() -> None:
    when = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    with pytest.raises(InvalidJob) as info:
        parse_job({"task": "t", "inputs": [1, {"at": [0, when]}]})
    message = str(info.value)
    assert "not JSON: inputs[1].at[1]: datetime is not JSON" in message


def test_set_in_inputs_is_refused_with_its_path() -> None:
    with pytest.raises(InvalidJob, match=r"inputs\[0\]: set is not JSON"):
        parse_job({"task": "t", "inputs": [{1, 2}]})


def test_non_json_kwargs_value_is_refused_with_its_path() -> None:
    with pytest.raises(InvalidJob, match=r"kwargs\.blob: bytes is not JSON"):
        parse_job({"task": "t", "kwargs": {"blob": b"raw"}})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_floats_are_refused(value: float) -> None:
    with pytest.raises(InvalidJob, match=r"inputs\[1\]: .* is not valid JSON"):
        parse_job({"task": "t", "inputs": [1.5, value]})


def test_nan_in_args_is_refused() -> None:
    with pytest.raises(InvalidJob, match=r"args\[0\]: nan is not valid JSON"):
        parse_job({"task": "t", "args": [float("nan")]})


def test_task_count_and_payloads_one_task_per_input() -> None:
    spec = parse_job({"task": "t", "inputs": [1, "two", {"three": 3}]})
    assert spec.kind == "item"
    assert spec.task_count == 3
    assert spec.task_payloads() == [b"1", b'"two"', b'{"three":3}']


def test_task_count_and_payloads_with_chunk_size() -> None:
    spec = parse_job({"task": "t", "inputs": [1, 2, 3, 4, 5], "chunk-size": 2})
    assert spec.kind == "chunk"
    assert spec.task_count == 3
    assert spec.task_payloads() == [b"[1,2]", b"[3,4]", b"[5]"]


def test_chunk_size_larger_than_inputs_makes_one_task() -> None:
    spec = parse_job({"task": "t", "inputs": [1, 2], "chunk-size": 10})
    assert spec.task_count == 1
    assert spec.task_payloads() == [b"[1,2]"]


def test_call_job_is_one_task_with_args_and_kwargs() -> None:
    spec = parse_job({"task": "t", "args": [1, 2], "kwargs": {"k": "v"}})
    assert spec.kind == "call"
    assert spec.task_count == 1
    assert orjson.loads(spec.task_payloads()[0]) == {"args": [1, 2], "kwargs": {"k": "v"}}


def test_job_without_inputs_or_args_is_a_call_with_empty_arguments() -> None:
    spec = parse_job({"task": "t"})
    assert spec.kind == "call"
    assert spec.task_payloads() == [b'{"args":[],"kwargs":{}}']


def test_job_spec_is_frozen() -> None:
    spec = parse_job({"task": "t"})
    with pytest.raises(ValueError, match="frozen"):
        spec.task = "other"


def test_job_state_terminal_flags() -> None:
    assert not JobState.PENDING.is_terminal
    assert not JobState.RUNNING.is_terminal
    assert all(
        s.is_terminal
        for s in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT)
    )


def test_task_message_is_reduce_only_for_reduce_kind() -> None:
    fields: dict[str, Any] = {
        "id": "j:r",
        "job_id": "j",
        "index": "r",
        "task": "t",
        "payload": None,
        "attempt": 1,
        "retries": 0,
        "backoff": 1.0,
        "backoff_max": 2.0,
        "timeout": None,
    }
    assert TaskMessage(**fields, kind="reduce").is_reduce
    assert not TaskMessage(**fields, kind="item").is_reduce


# -- retry_delay --------------------------------------------------------------------------------


def test_retry_delay_is_none_after_the_last_attempt() -> None:
    assert retry_delay(1, 0, 1.0, 10.0) is None
    assert retry_delay(4, 3, 1.0, 10.0) is None


def test_retries_n_means_n_plus_one_attempts() -> None:
    rng = random.Random(1)
    delays = [retry_delay(attempt, 3, 1.0, 100.0, rng) for attempt in range(1, 6)]
    assert [d is not None for d in delays] == [True, True, True, False, False]


def test_retry_delay_grows_exponentially_and_is_capped_by_backoff_max() -> None:
    rng, twin = random.Random(42), random.Random(42)
    ceilings = [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    for attempt, ceiling in enumerate(ceilings, 1):
        delay = retry_delay(attempt, 10, 0.5, 3.0, rng)
        assert delay == pytest.approx(ceiling * twin.uniform(0.5, 1.0))


@pytest.mark.parametrize("seed", range(20))
def test_retry_delay_jitter_stays_in_upper_half_of_the_ceiling(seed: int) -> None:
    rng = random.Random(seed)
    for attempt in range(1, 8):
        ceiling = min(20.0, 2.0 * 2 ** (attempt - 1))
        delay = retry_delay(attempt, 10, 2.0, 20.0, rng)
        assert delay is not None
        assert 0.5 * ceiling <= delay <= ceiling


def test_retry_delay_is_reproducible_with_a_seeded_rng() -> None:
    first = [retry_delay(a, 5, 1.0, 60.0, random.Random(9)) for a in range(1, 6)]
    second = [retry_delay(a, 5, 1.0, 60.0, random.Random(9)) for a in range(1, 6)]
    assert first == second


# -- results ------------------------------------------------------------------------------------


def test_flatten_without_chunks_maps_missing_to_null() -> None:
    assert flatten([b"1", None, b'"x"'], 0, 0, 0, 3) == [b"1", b"null", b'"x"']


def test_flatten_chunks_returns_only_the_requested_inputs() -> None:
    # inputs 0..4 in chunks of 2: tasks [10, 11], [12, 13], [14]
    first, last = task_range(2, 1, 4)
    assert (first, last) == (0, 2)
    values: list[bytes | None] = [b"[10,11]", b"[12,13]"]
    assert flatten(values, 2, first, 1, 4) == [b"11", b"12", b"13"]


def test_flatten_chunks_from_a_later_task_and_short_last_chunk() -> None:
    first, last = task_range(2, 3, 5)
    assert (first, last) == (1, 3)
    assert flatten([b"[12,13]", b"[14]"], 2, first, 3, 5) == [b"13", b"14"]


def test_flatten_missing_chunk_gives_nulls_for_its_inputs() -> None:
    assert flatten([b"[0,1]", None], 2, 0, 0, 4) == [b"0", b"1", b"null", b"null"]


def test_task_range_without_chunks_is_the_input_range() -> None:
    assert task_range(0, 3, 7) == (3, 7)


def test_task_range_with_chunks_covers_partial_chunks() -> None:
    assert task_range(10, 0, 10) == (0, 1)
    assert task_range(10, 5, 25) == (0, 3)
    assert task_range(10, 10, 11) == (1, 2)


# -- submit files -------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "submit.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_job_from_file_single_job_form(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "master: http://m:7070\njob:\n  name: primes\n  task-def:\n"
        "    task: app.count\n    inputs: [[0, 10], [10, 20]]\n",
    )
    job = job_from_file(path, "primes", {})
    assert job == {"name": "primes", "task": "app.count", "inputs": [[0, 10], [10, 20]]}
    assert parse_job(job).task_count == 2


def test_job_from_file_jobs_list_form_picks_by_name(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "jobs:\n"
        "  - name: a\n    task-def: {task: app.a, args: [1]}\n"
        "  - name: b\n    task-def: {task: app.b, inputs: [1, 2], priority: 3}\n",
    )
    job = job_from_file(path, "b", {})
    assert job == {"name": "b", "task": "app.b", "inputs": [1, 2], "priority": 3}


def test_job_from_file_unknown_name_lists_defined_jobs(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "jobs:\n  - {name: zeta, task-def: {task: t}}\n  - {name: alpha, task-def: {task: t}}\n",
    )
    with pytest.raises(ConfigError) as info:
        job_from_file(path, "gamma", {})
    assert str(info.value) == f"{path}: no job named 'gamma'; defined: alpha, zeta."


def test_job_from_file_unknown_top_key_suggests_nearest(tmp_path: Path) -> None:
    path = write(tmp_path, "mastr: http://m:1\njob: {name: a, task-def: {task: t}}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'mastr'; did you mean 'master'\?"):
        job_from_file(path, "a", {})


def test_job_from_file_unknown_job_entry_key_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "job:\n  name: a\n  taskdef: {task: t}\n  task-def: {task: t}\n")
    with pytest.raises(ConfigError, match=r"job #1: unknown key 'taskdef'; did you mean"):
        job_from_file(path, "a", {})


def test_job_from_file_overrides_are_applied_last(tmp_path: Path) -> None:
    path = write(tmp_path, "job:\n  name: a\n  task-def: {task: t, priority: 1, retries: 2}\n")
    job = job_from_file(path, "a", {"priority": 8, "queue": "fast"})
    assert job["priority"] == 8
    assert job["queue"] == "fast"
    assert job["retries"] == 2


def test_job_from_file_without_jobs_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "master: http://m:7070\n")
    with pytest.raises(ConfigError, match="no jobs defined"):
        job_from_file(path, "a", {})


def test_job_from_file_entry_without_task_def_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "job:\n  name: a\n")
    with pytest.raises(ConfigError, match="job #1: each job needs 'name' and 'task-def'"):
        job_from_file(path, "a", {})


def test_job_from_file_without_a_path_says_how_to_give_one() -> None:
    with pytest.raises(ConfigError, match=r"give --config submit\.yaml or set SJE_CONFIG_FILE"):
        job_from_file(None, "a", {})


# -- client helpers -----------------------------------------------------------------------------


def feed_all(parser: SSEParser, lines: list[str]) -> list[dict[str, Any]]:
    return [e for e in (parser.feed(line) for line in lines) if e is not None]


def test_sse_parser_builds_events_from_multi_line_feed() -> None:
    parser = SSEParser()
    events = feed_all(
        parser,
        [
            "id: 1-0",
            "event: task.succeeded",
            'data: {"job": "j1", "task": "3"}',
            "",
            "id: 2-0",
            "event: job.succeeded",
            'data: {"job": "j1", "state": "succeeded"}',
            "",
        ],
    )
    assert events == [
        {"job": "j1", "task": "3", "type": "task.succeeded", "id": "1-0"},
        {"job": "j1", "state": "succeeded", "type": "job.succeeded", "id": "2-0"},
    ]
    assert parser.after == "2-0"
    assert not parser.finished


def test_sse_parser_ignores_comments_and_empty_blocks() -> None:
    parser = SSEParser(after="5-0")
    events = feed_all(parser, [": keepalive", "", "", ':{"not": "data"}', ""])
    assert events == []
    assert parser.after == "5-0"


def test_sse_parser_default_type_is_message_and_id_is_optional() -> None:
    parser = SSEParser()
    assert feed_all(parser, ['data:{"a":1}', ""]) == [{"a": 1, "type": "message"}]
    assert parser.after == "0"


def test_sse_parser_finishes_on_terminal_progress_snapshot() -> None:
    parser = SSEParser()
    feed_all(parser, ["event: job.progress", 'data: {"id": "j", "state": "running"}', ""])
    assert not parser.finished
    feed_all(parser, ["event: job.progress", 'data: {"id": "j", "state": "failed"}', ""])
    assert parser.finished


def test_check_outcome_passes_for_succeeded() -> None:
    check_outcome({"id": "j1", "state": "succeeded", "error": None})


def test_check_outcome_failed_names_task_attempt_type_and_message() -> None:
    view = {
        "id": "j1",
        "state": "failed",
        "error": {
            "task": "7",
            "error": {
                "type": "ValueError",
                "message": "bad input 13",
                "attempt": 3,
                "traceback": "Traceback (most recent call last): ...",
            },
        },
    }
    with pytest.raises(JobFailed) as info:
        check_outcome(view)
    assert str(info.value) == "Job j1 failed in task 7 (attempt 3): ValueError: bad input 13"
    assert info.value.traceback.startswith("Traceback")  # type: ignore[attr-defined]


def test_check_outcome_timed_out_raises_job_timeout_with_reason() -> None:
    view = {"id": "j2", "state": "timed_out", "error": {"message": "Job timeout: j2 ran 5s"}}
    with pytest.raises(JobTimeout, match="Job timeout: j2 ran 5s"):
        check_outcome(view)


def test_check_outcome_timed_out_without_message_names_the_job() -> None:
    with pytest.raises(JobTimeout, match="job j3 timed out"):
        check_outcome({"id": "j3", "state": "timed_out", "error": None})


def test_check_outcome_cancelled_raises_job_failed() -> None:
    with pytest.raises(JobFailed, match="Job j4 was cancelled"):
        check_outcome({"id": "j4", "state": "cancelled", "error": {"message": "Cancelled"}})


def test_job_payload_turns_task_objects_into_names_and_drops_defaults() -> None:
    @task(name="app.square")
    def square(x: int) -> int:
        return x * x

    payload = job_payload({"task": square, "inputs": [1, 2], "reduce": square, "timeout": "2s"})
    assert payload == {"task": "app.square", "inputs": [1, 2], "reduce": "app.square", "timeout": 2}


def test_job_payload_validates_before_sending() -> None:
    with pytest.raises(InvalidJob, match="'inputs' is empty"):
        job_payload({"task": "t", "inputs": []})


# -- tasks --------------------------------------------------------------------------------------


@task
def plain_task(x: int) -> int:
    return x + 1


@task(
    name="custom.name", queue="gpu", retries=4, backoff=0.5, backoff_max=8, timeout=30, priority=7
)
async def async_task(x: int) -> int:
    return x


def test_task_default_name_is_module_dot_function() -> None:
    assert isinstance(plain_task, Task)
    assert plain_task.name == f"{__name__}.plain_task"
    assert plain_task.defaults == TaskDefaults()
    assert plain_task.defaults.queue == DEFAULT_QUEUE
    assert not plain_task.is_async
    assert plain_task(1) == 2


def test_task_custom_name_and_options_become_defaults() -> None:
    assert async_task.name == "custom.name"
    assert async_task.defaults == TaskDefaults(
        queue="gpu", priority=7, retries=4, backoff=0.5, backoff_max=8, timeout=30
    )
    assert async_task.is_async


def test_task_defaults_json_round_trip_ignores_unknown_keys() -> None:
    defaults = TaskDefaults(queue="q", priority=2, retries=1, backoff=0.1, backoff_max=1.0)
    data = defaults.to_json() | {"future_option": True}
    assert TaskDefaults.from_json(data) == defaults


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path for throw-away task modules; they are unloaded afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def make_module(directory: Path, body: str) -> str:
    name = f"sje_test_mod_{uuid.uuid4().hex[:10]}"
    (directory / f"{name}.py").write_text(body, encoding="utf-8")
    return name


def test_load_catalog_finds_task_objects_in_a_module(module_dir: Path) -> None:
    name = make_module(
        module_dir,
        "import sje\n\n"
        "@sje.task\ndef one(x):\n    return x\n\n"
        "@sje.task(name='named.two', retries=2)\nasync def two(x):\n    return x\n\n"
        "def not_a_task():\n    pass\n",
    )
    catalog = load_catalog([name])
    assert sorted(catalog) == sorted([f"{name}.one", "named.two"])
    assert catalog["named.two"].defaults.retries == 2
    assert catalog["named.two"].is_async


def test_load_catalog_import_error_names_the_module(module_dir: Path) -> None:
    name = make_module(module_dir, "raise RuntimeError('boom at import')\n")
    with pytest.raises(WorkerError) as info:
        load_catalog([name])
    message = str(info.value)
    assert f"Cannot import task module '{name}'" in message
    assert "RuntimeError: boom at import" in message


def test_load_catalog_missing_module_names_the_module(module_dir: Path) -> None:
    with pytest.raises(WorkerError, match="Cannot import task module 'no_such_mod_xyz'"):
        load_catalog(["no_such_mod_xyz"])


def test_load_catalog_refuses_two_tasks_with_one_name(module_dir: Path) -> None:
    body = "import sje\n\n@sje.task(name='dup.task')\ndef f(x):\n    return x\n"
    first, second = make_module(module_dir, body), make_module(module_dir, body)
    with pytest.raises(WorkerError, match=f"Two tasks are named 'dup.task' \\(in '{second}'\\)"):
        load_catalog([first, second])


def test_load_catalog_same_task_imported_twice_is_fine(module_dir: Path) -> None:
    first = make_module(
        module_dir, "import sje\n\n@sje.task(name='x.y')\ndef f(x):\n    return x\n"
    )
    second = make_module(module_dir, f"from {first} import f\n")
    assert list(load_catalog([first, second])) == ["x.y"]
