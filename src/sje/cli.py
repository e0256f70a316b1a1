"""The ``sje`` command: parse arguments, load settings, call a component, map errors to exits.

Exit codes: 0 ok, 1 unexpected, 2 configuration/usage, 3 broker, 4 master, 5 job definition,
6 queue full, 7 job timeout, 8 job failed or cancelled, 9 worker start-up, 130 interrupted.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
import orjson
import yaml
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from sje.client import Client, JobHandle, check_outcome
from sje.config import (
    ClientSettings,
    MasterSettings,
    WorkerSettings,
    config_path,
    load_settings,
    printable,
    read_yaml,
)
from sje.errors import ConfigError, SJEError
from sje.models import parse_job
from sje.submitfile import job_from_file

out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

_debug = False


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    global _debug
    _debug = _debug or value


def common(fn: F) -> F:
    """``--config`` and ``--debug`` on every command."""
    fn = click.option(
        "--debug", is_flag=True, expose_value=False, callback=_set_debug, help="Show tracebacks."
    )(fn)
    return click.option(
        "--config",
        "config_file",
        type=str,
        default=None,
        help="YAML settings file (else SJE_CONFIG_FILE).",
    )(fn)


def json_flag(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(fn)


def print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def client_for(config_file: str | None) -> Client:
    path = config_path(config_file)
    data: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml(path)
        data = {k: v for k, v in raw.items() if k in ("master", "token")}
    settings = load_settings(ClientSettings, path, file_data=data)
    return Client(settings.master, settings.token)


def _setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--debug",
    is_flag=True,
    expose_value=False,
    callback=_set_debug,
    is_eager=True,
    help="Show tracebacks.",
)
@click.version_option(package_name="sparkjobexecutor", prog_name="sje")
def cli() -> None:
    """SJE: run heavy work as distributed jobs. Start `sje master`, `sje worker`, then submit."""


# -- servers ------------------------------------------------------------------------------


@cli.command()
@common
@click.option("--bind-address", default=None, help="Address to listen on (bind-address).")
@click.option("--port", type=int, default=None, help="Port to listen on (port; 0 picks one).")
@click.option("--broker-url", default=None, help="redis://host:port/db (broker-url).")
def master(
    config_file: str | None, bind_address: str | None, port: int | None, broker_url: str | None
) -> None:
    """Run a master: the HTTP API and the scheduler."""
    from sje.master.server import Master

    flags = {"bind_address": bind_address, "port": port, "broker_url": broker_url}
    settings = load_settings(MasterSettings, config_path(config_file), flags)
    _setup_logging()

    def ready(url: str) -> None:
        out.print(f"SJE master listening on {url}", highlight=False, soft_wrap=True)
        sys.stdout.flush()

    asyncio.run(Master(settings).serve(on_ready=ready))


@cli.command()
@common
@click.option("--broker-url", default=None, help="redis://host:port/db (broker-url).")
@click.option("--tasks", "tasks", multiple=True, help="Module defining @sje.task functions.")
@click.option("--queues", default=None, help="Comma-separated queues to serve (queues).")
@click.option("--concurrency", type=int, default=None, help="Child processes (default: cores).")
@click.option("--name", "worker_name", default=None, help="Worker name (worker-name).")
@click.option("--burst", is_flag=True, help="Exit once the queues are empty (drain mode).")
def worker(
    config_file: str | None,
    broker_url: str | None,
    tasks: tuple[str, ...],
    queues: str | None,
    concurrency: int | None,
    worker_name: str | None,
    burst: bool,
) -> None:
    """Run a worker: fetch tasks and run them in child processes."""
    from sje.worker.runner import Worker

    flags: dict[str, Any] = {
        "broker_url": broker_url,
        "tasks": list(tasks) or None,
        "queues": queues,
        "concurrency": concurrency,
        "worker_name": worker_name,
    }
    settings = load_settings(WorkerSettings, config_path(config_file), flags)
    _setup_logging()
    w = Worker(settings, burst=burst)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, w.request_stop)

        def ready(wk: Worker) -> None:
            out.print(
                f"SJE worker {wk.name} ready: {settings.concurrency} processes, queues "
                f"{','.join(settings.queues)}, tasks {', '.join(sorted(wk.catalog))}",
                highlight=False,
                soft_wrap=True,
            )
            sys.stdout.flush()

        await w.run(on_ready=ready)

    asyncio.run(run())


@cli.command()
@common
@click.option("--example", is_flag=True, help="Run the example job end to end, then stop.")
@click.option("--workers", "n_workers", type=int, default=2, show_default=True)
@click.option("--tasks", "tasks", multiple=True, help="Task modules for the workers.")
def up(config_file: str | None, example: bool, n_workers: int, tasks: tuple[str, ...]) -> None:
    """Start a master and workers here (and with --example, run the example job)."""
    from sje.launcher import run_up

    sys.exit(
        run_up(config_path(config_file), example, n_workers, list(tasks), out, err, _show_progress)
    )


@cli.command("config")
@common
@json_flag
@click.argument("component", type=click.Choice(["master", "worker", "client"]))
def show_config(config_file: str | None, as_json: bool, component: str) -> None:
    """Print the effective settings of a component (file + environment), secrets hidden."""
    models: dict[str, type[BaseModel]] = {
        "master": MasterSettings,
        "worker": WorkerSettings,
        "client": ClientSettings,
    }
    settings = load_settings(models[component], config_path(config_file))
    data = printable(settings)
    if as_json:
        print_json(data)
    else:
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))


# -- client commands ----------------------------------------------------------------------


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
@click.option("--timeout", type=float, default=None, help="With --wait: give up after seconds.")
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
    handle = client.submit(job_def)
    if not wait:
        if as_json:
            print_json({"id": handle.id})
        else:
            out.print(handle.id, highlight=False)
        return
    if not as_json:
        err.print(f"Submitted job {handle.id}", highlight=False)
        _show_progress(handle, timeout)
    view = handle.wait(timeout)
    _print_outcome(handle, view, as_json)


def _show_progress(handle: JobHandle, timeout: float | None) -> None:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=False) as bar:
        task_id = bar.add_task(handle.id[:12], total=None, detail="")
        for event in handle.client.events(handle.id, timeout, job_level=True):
            if event["type"] != "progress":
                continue
            t = event["tasks"]
            done = t["succeeded"] + t["failed"] + t["cancelled"]
            detail = f"running {t['running']}  retrying {t['retrying']}  failed {t['failed']}"
            bar.update(task_id, total=t["total"], completed=done, detail=detail)


def _print_outcome(handle: JobHandle, view: dict[str, Any], as_json: bool) -> None:
    try:
        check_outcome(view)
    except SJEError as exc:
        if as_json:
            print_json(view)
        tb = getattr(exc, "traceback", "")
        if tb and not as_json:
            err.print(tb.rstrip(), highlight=False, markup=False, soft_wrap=True)
        raise
    value = handle._fetch_results(view)
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
@click.option("--timeout", type=float, default=None, help="Wait at most this many seconds.")
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
        table.add_row(
            r["id"], r["name"], r["state"], str(t["succeeded"]), str(t["failed"]), str(t["total"])
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


def main() -> None:
    """Entry point: run the CLI, turning ``SJEError`` into one line and its exit code."""
    try:
        cli.main(standalone_mode=False)
    except SJEError as exc:
        if _debug:
            err.print_exception()
        err.print(Text.assemble(("Error: ", "red"), exc.message), highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception:
        if _debug:
            raise
        err.print_exception(max_frames=5)
        err.print(
            "[red]Unexpected error (a bug in SJE); please report it with the traceback above."
        )
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
