"""``sje dlq list | show | requeue | purge``: the dead-letter queue, through the master."""

from __future__ import annotations

import datetime
from typing import Any

import click
from rich.table import Table

from sje.cli.base import cli, client_for, common, json_flag, out, print_json
from sje.errors import ConfigError, SJEError


@cli.group()
def dlq() -> None:
    """Inspect, requeue and purge dead-lettered tasks."""


def _when(entry: dict[str, Any]) -> str:
    at = entry.get("at")
    if not isinstance(at, (int, float)):
        return "?"
    return datetime.datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S")


def _one_line(text: object, width: int = 90) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


@dlq.command("list")
@common
@json_flag
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--offset", type=int, default=0, show_default=True)
def list_entries(config_file: str | None, as_json: bool, limit: int, offset: int) -> None:
    """List dead-lettered tasks, newest first."""
    page = client_for(config_file).dead_letters(limit, offset)
    if as_json:
        print_json(page)
        return
    table = Table("id", "task", "state", "attempt", "when", "reason", title_justify="left")
    for e in page["entries"]:
        error = e.get("error") or {}
        table.add_row(
            e["id"],
            str(e.get("name") or "-"),
            e.get("state", "dead"),
            str(e.get("attempt", "-")),
            _when(e),
            _one_line(f"{error.get('type', '?')}: {error.get('message', '')}"),
        )
    out.print(table)
    shown = len(page["entries"])
    out.print(f"{shown} of {page['total']} entries", highlight=False)


@dlq.command()
@common
@json_flag
@click.argument("entry_id")
def show(config_file: str | None, as_json: bool, entry_id: str) -> None:
    """Show one entry: its error (with traceback), payload and job."""
    entry = client_for(config_file).dead_letter(entry_id)
    if as_json:
        print_json(entry)
        return
    error = entry.get("error") or {}
    rows = [
        ("entry", entry["id"]),
        ("job", f"{entry.get('job', '-')} ({entry.get('job_state', 'no job')})"),
        ("task", f"{entry.get('name') or '-'} #{entry.get('task', '-')}"),
        ("queue", entry.get("queue") or "-"),
        ("state", entry.get("state", "dead")),
        ("attempt", entry.get("attempt", "-")),
        ("when", _when(entry)),
        ("error", f"{error.get('type', '?')}: {error.get('message', '')}"),
    ]
    for name, value in rows:
        out.print(f"[bold]{name:>8}[/bold]  {value}", highlight=False, soft_wrap=True)
    for name in ("payload", "raw"):
        if name in entry:
            out.print(f"[bold]{name:>8}[/bold]  ", end="")
            out.out(str(entry[name]), highlight=False)
    if error.get("traceback"):
        out.print("[bold]traceback[/bold]")
        out.out(error["traceback"].rstrip(), highlight=False)


def _ids_or_all(ids: tuple[str, ...], all_: bool, verb: str) -> list[str] | None:
    if all_ and ids:
        raise ConfigError(f"Give entry ids or --all to {verb}, not both.")
    if not all_ and not ids:
        raise ConfigError(f"Give the entry ids to {verb} (see `sje dlq list`), or --all.")
    return None if all_ else list(ids)


@dlq.command()
@common
@json_flag
@click.argument("entry_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every entry whose job can run again.")
def requeue(config_file: str | None, as_json: bool, entry_ids: tuple[str, ...], all_: bool) -> None:
    """Run dead-lettered tasks again: each entry's job is reopened."""
    ids = _ids_or_all(entry_ids, all_, "requeue")
    client = client_for(config_file)
    if ids is None:
        reply = client.requeue()
    else:
        reply = {"requeued": [], "skipped": []}
        for entry_id in ids:
            try:
                reply["requeued"].append(client.requeue(entry_id))
            except SJEError as exc:
                if len(ids) == 1:
                    raise
                reply["skipped"].append({"entry": entry_id, "reason": exc.message})
    if as_json:
        print_json(reply)
    else:
        for r in reply["requeued"]:
            out.print(
                f"Requeued {r['entry']}: job {r['job']} runs again ({r['queued']} tasks queued).",
                highlight=False,
                soft_wrap=True,
            )
        for s in reply["skipped"]:
            out.print(f"Skipped {s['entry']}: {s['reason']}", highlight=False, soft_wrap=True)
    if reply["skipped"] and not reply["requeued"] and ids is not None:
        raise SJEError("Nothing was requeued.")


@dlq.command()
@common
@click.argument("entry_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Delete every entry.")
@click.option("--yes", is_flag=True, help="Do not ask before deleting everything.")
def purge(config_file: str | None, entry_ids: tuple[str, ...], all_: bool, yes: bool) -> None:
    """Delete dead-letter entries (their jobs stay as they are)."""
    ids = _ids_or_all(entry_ids, all_, "purge")
    client = client_for(config_file)
    if ids is None:
        if not yes:
            click.confirm("Delete every dead-letter entry?", abort=True)
        out.print(f"Purged {client.purge()} entries.", highlight=False)
        return
    for entry_id in ids:
        client.purge(entry_id)
    out.print(f"Purged {len(ids)} entries.", highlight=False)
