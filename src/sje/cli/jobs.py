"""Client commands: ``sje submit``, ``status``, ``result``, ``cancel``, ``jobs``, ``workers``."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

import click
import orjson
import yaml
from rich.table import Table

from sje.cli.base import (
    SECONDS,
    cli,
    client_for,
    common,
    err,
    json_flag,
    out,
    print_json,
    show_progress,
)
from sje.config import (
    config_path,
)
from sje.errors import ConfigError, JobTimeout, SJEError
from sje.models import parse_job
from sje.submitfile import job_from_file

if TYPE_CHECKING:
    from sje.client import JobHandle

# -- client commands ----------------------------------------------------------------------

#: ``sje submit --wait``: the submit itself waits this long (s), so a job done by then prints
#: its result from that one reply, with no progress bar
_FIRST_WAIT_S = 1.0


def _parse_set(values: tuple[str, ...]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set '{item}': expected key=value, e.g. --set retries=3")
        try:
            overrides[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            overrides[key.strip()] = raw
    return overrides


@cli.command()
@common
@json_flag
@click.argument("job_name")
@click.option("--set", "sets", multiple=True, help="Override a task-def key: key=value (YAML).")
@click.option("--wait", is_flag=True, help="Show progress, then print the result.")
@click.option("--timeout", type=SECONDS, default=None, help="With --wait: give up after seconds.")
def submit(
    config_file: str | None,
    as_json: bool,
    job_name: str,
    sets: tuple[str, ...],
    wait: bool,
    timeout: float | None,
) -> None:
    """Submit the job JOB_NAME defined in submit.yaml; prints its id."""
    path = config_path(config_file)
    job_def = job_from_file(path, job_name, _parse_set(sets))
    parse_job(job_def, where=f"{path}: job '{job_name}' task-def")
    client = client_for(config_file)
    if not wait:
        handle = client.submit(job_def)
        if as_json:
            print_json({"id": handle.id})
        else:
            out.print(handle.id, highlight=False)
        return
    from sje.client import waited_too_long

    started = time.monotonic()
    first = _FIRST_WAIT_S if timeout is None else min(timeout, _FIRST_WAIT_S)
    handle = client.submit(job_def, wait=first)
    if handle.ended:
        view = handle.wait()
    else:
        left = None if timeout is None else timeout - (time.monotonic() - started)
        if left is not None and left <= 0:
            raise waited_too_long(handle.id, timeout)
        try:
            if as_json:
                view = handle.wait(left)
            else:
                err.print(f"Submitted job {handle.id}", highlight=False)
                view = show_progress(handle, left)
        except JobTimeout:  # say the timeout that was asked for, not what was left of it
            raise waited_too_long(handle.id, timeout) from None
    _print_outcome(handle, view, as_json)


def _print_outcome(handle: JobHandle, view: dict[str, Any], as_json: bool) -> None:
    from sje.client import check_outcome, read_results, send_requests  # httpx: client only

    try:
        check_outcome(view)
    except SJEError as exc:
        if as_json:
            print_json(view)
        tb = getattr(exc, "traceback", "")
        if tb and not as_json:
            err.print(tb.rstrip(), highlight=False, markup=False, soft_wrap=True)
        raise
    value = send_requests(read_results(handle.id, view), handle.client)
    if as_json:
        print_json({"id": handle.id, "state": view["state"], "result": value})
    else:
        sys.stdout.write(orjson.dumps(value).decode() + "\n")


@cli.command()
@common
@json_flag
@click.argument("job_id")
def status(config_file: str | None, as_json: bool, job_id: str) -> None:
    """Show a job's state and task counts."""
    view = client_for(config_file).job(job_id).status()
    if as_json:
        print_json(view)
        return
    t = view["tasks"]
    table = Table(show_header=False, box=None)
    for key, value in (
        ("id", view["id"]),
        ("name", view["name"]),
        ("task", view["task"]),
        ("state", view["state"]),
        ("queue", view["queue"]),
        ("tasks", "  ".join(f"{k} {v}" for k, v in t.items())),
    ):
        table.add_row(f"[bold]{key}", str(value))
    if view.get("error"):
        table.add_row("[bold]error", _error_line(view))
    out.print(table)


def _error_line(view: dict[str, Any]) -> str:
    e = view.get("error") or {}
    inner = e.get("error") or {}
    if inner:
        return f"task {e.get('task')}: {inner.get('type')}: {inner.get('message')}"
    return str(e.get("message", e))


@cli.command()
@common
@json_flag
@click.argument("job_id")
@click.option("--timeout", type=SECONDS, default=None, help="Wait at most this many seconds.")
def result(config_file: str | None, as_json: bool, job_id: str, timeout: float | None) -> None:
    """Wait for a job and print its result (JSON)."""
    handle = client_for(config_file).job(job_id)
    _print_outcome(handle, handle.wait(timeout), as_json)


@cli.command()
@common
@json_flag
@click.argument("job_id")
def cancel(config_file: str | None, as_json: bool, job_id: str) -> None:
    """Cancel a job: queued tasks are dropped, running ones stopped."""
    view = client_for(config_file).job(job_id).cancel()
    if as_json:
        print_json(view)
    elif view["cancelled"]:
        out.print(f"Cancelled job {job_id}.", highlight=False)
    else:
        out.print(f"Job {job_id} had already ended ({view['state']}).", highlight=False)


@cli.command()
@common
@json_flag
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--state", default=None, help="Only jobs in this state.")
def jobs(config_file: str | None, as_json: bool, limit: int, state: str | None) -> None:
    """List recent jobs, newest first."""
    rows = client_for(config_file).jobs(limit, state)
    if as_json:
        print_json({"jobs": rows})
        return
    table = Table("id", "name", "state", "done", "failed", "total")
    for r in rows:
        t = r["tasks"]
        failed = t["failed"] + t["dead"]
        table.add_row(
            r["id"], r["name"], r["state"], str(t["succeeded"]), str(failed), str(t["total"])
        )
    out.print(table)


@cli.command()
@common
@json_flag
def workers(config_file: str | None, as_json: bool) -> None:
    """List workers with their queues, processes and running tasks."""
    rows = client_for(config_file).workers()
    if as_json:
        print_json({"workers": rows})
        return
    table = Table("name", "host", "pid", "alive", "queues", "procs", "running", "seen")
    for r in rows:
        table.add_row(
            r["name"],
            r["host"],
            str(r["pid"]),
            "yes" if r["alive"] else "no",
            ",".join(r["queues"]),
            str(r["concurrency"]),
            str(r["running"]),
            f"{r['last_seen_s']:.1f}s ago",
        )
    out.print(table)


@cli.command()
@common
@json_flag
@click.option("--peek", type=int, default=5, show_default=True, help="Queued tasks to show.")
def queues(config_file: str | None, as_json: bool, peek: int) -> None:
    """List queues: depth, running, rates, oldest waiting task, and what is next."""
    reply = client_for(config_file).queues(peek)
    if as_json:
        print_json(reply)
        return
    table = Table("queue", "depth", "running", "retrying", "done/s", "failed/s", "oldest wait")
    for q in reply["queues"]:
        wait = q["oldest_wait_s"]
        table.add_row(
            q["name"],
            str(q["depth"]),
            str(q["running"]),
            str(q["retrying"]),
            f"{q['succeeded_per_s']:g}",
            f"{q['failed_per_s']:g}",
            "—" if wait is None else f"{wait:.1f}s",
        )
    out.print(table)
    for q in reply["queues"]:
        for item in q["peek"]:
            out.print(
                f"  {q['name']}: {item['task']} {item['name'] or ''} priority {item['priority']}",
                highlight=False,
                markup=False,
            )
    out.print(f"Dead letters: {reply['dead_letters']} (sje dlq list)", highlight=False)
