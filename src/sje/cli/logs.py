"""``sje logs``: what a job's tasks printed and logged, attempt by attempt."""

from __future__ import annotations

import sys

import click
from rich.text import Text

from sje.cli.base import cli, client_for, common, err, json_flag, out, print_json


@cli.command()
@common
@json_flag
@click.argument("job_id")
@click.option("--task", default=None, help="Only this task: its index, or r for the reduce step.")
def logs(config_file: str | None, as_json: bool, job_id: str, task: str | None) -> None:
    """Show what a job's tasks printed (stdout, stderr) and logged, per attempt."""
    reply = client_for(config_file).logs(job_id, task)
    if as_json:
        print_json(reply)
        return
    if not reply["logs"]:
        who = f"task {task} of job {job_id}" if task is not None else f"the tasks of job {job_id}"
        note = f"Nothing stored: {who} printed nothing and logged nothing at INFO or above."
        out.print(note, highlight=False, soft_wrap=True)
    for entry in reply["logs"]:
        cut = " · truncated: first and last 32 KiB" if entry["truncated"] else ""
        header = f"── task {entry['task']} · attempt {entry['attempt']}{cut} ──"
        out.print(Text(header, "bold"), soft_wrap=True)
        text = entry["text"]
        # verbatim: task output is never read as markup
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
    if reply.get("dropped"):
        err.print(
            f"{reply['dropped']} more log(s) of this job were not kept: a job keeps at most "
            "10,000 logs and 32 MiB of them.",
            highlight=False,
        )
