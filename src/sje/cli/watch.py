"""``sje watch``: follow a job live in the terminal, with a progress bar and what happens."""

from __future__ import annotations

from typing import Any

import click
from rich.text import Text

from sje.cli.base import (
    SECONDS,
    advance,
    cli,
    client_for,
    common,
    err,
    json_flag,
    out,
    print_json,
    progress_bar,
)

#: events worth a line of their own (every other event only moves the bar)
_NARRATED = {
    "job.started",
    "job.reducing",
    "job.requeued",
    "task.retrying",
    "task.failed",
    "task.dead",
    "task.queued",
}


def describe(event: dict[str, Any]) -> str | None:
    """One line for a notable event, or None."""
    kind = str(event["type"])
    quiet_requeue = kind == "task.queued" and event.get("reason") in ("retry", "reduce")
    if kind not in _NARRATED or quiet_requeue:
        return None
    task, attempt, worker = event.get("task"), event.get("attempt"), event.get("worker")
    if kind == "task.retrying":
        delay = int(event.get("delay_ms", 0)) / 1000
        return f"task {task} attempt {attempt} failed on {worker}; retrying in {delay:g}s"
    if kind in ("task.failed", "task.dead"):
        return f"task {task} {kind.split('.')[1]} after attempt {attempt} on {worker}"
    if kind == "task.queued":
        return f"task {task} queued again ({event.get('reason')}; it was on {worker})"
    return kind.replace(".", " ")


@cli.command()
@common
@json_flag
@click.argument("job_id")
@click.option("--timeout", type=SECONDS, default=None, help="Give up after this many seconds.")
def watch(config_file: str | None, as_json: bool, job_id: str, timeout: float | None) -> None:
    """Follow a job live: progress, retries and failures, until it ends.

    Exits 0 when the job succeeded, else with the failure's exit code. With --json, prints each
    event as one JSON line.
    """
    from sje.client import check_outcome, status_record  # httpx: not in `sje worker`

    handle = client_for(config_file).job(job_id)
    handle.status()  # an unknown job is an error before anything is drawn
    final: dict[str, Any] = {}
    if as_json:
        for event in handle.events(timeout):
            print_json(event, one_line=True)
            final = event
    else:
        with progress_bar() as bar:
            row = bar.add_task(job_id[:12], total=None, detail="")
            for event in handle.events(timeout):
                final = event
                advance(bar, row, event)
                line = describe(event)
                if line:
                    err.print(line, highlight=False, markup=False)
    view = status_record(final)
    if not as_json:
        out.print(Text.assemble("Job ", job_id, " ", (view["state"], "bold")), highlight=False)
    check_outcome(view)
