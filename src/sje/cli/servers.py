"""Commands that run components: ``sje master``, ``sje worker``, ``sje up``, ``sje config``."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import click
import yaml
from pydantic import BaseModel

from sje.cli.base import _setup_logging, cli, common, err, json_flag, out, print_json, show_progress
from sje.config import (
    ClientSettings,
    MasterSettings,
    MonitorSettings,
    WorkerSettings,
    config_path,
    load_settings,
    printable,
)

BROKER_URL_HELP = (
    "redis://host:port/db, sqlite:///file.db or amqp://user:pass@host/vhost (broker-url); "
    "unset: the embedded SQLite file."
)

# -- servers ------------------------------------------------------------------------------


@cli.command()
@common
@click.option("--bind-address", default=None, help="Address to listen on (bind-address).")
@click.option("--port", type=int, default=None, help="Port to listen on (port; 0 picks one).")
@click.option("--broker-url", default=None, help=BROKER_URL_HELP)
def master(
    config_file: str | None, bind_address: str | None, port: int | None, broker_url: str | None
) -> None:
    """Run a master: the HTTP API and the scheduler."""
    from sje.master.server import Master

    flags = {"bind_address": bind_address, "port": port, "broker_url": broker_url}
    settings = load_settings(MasterSettings, config_path(config_file), flags)
    _setup_logging()

    m = Master(settings)

    def ready(url: str) -> None:
        out.print(f"SJE master listening on {url}", highlight=False, soft_wrap=True)
        for notice in m.notices:
            out.print(notice, highlight=False, soft_wrap=True)
        sys.stdout.flush()

    asyncio.run(m.serve(on_ready=ready))


@cli.command()
@common
@click.option("--bind-address", default=None, help="Address to listen on (bind-address).")
@click.option("--port", type=int, default=None, help="Port to listen on (port; 0 picks one).")
@click.option("--broker-url", default=None, help=BROKER_URL_HELP)
def monitor(
    config_file: str | None, bind_address: str | None, port: int | None, broker_url: str | None
) -> None:
    """Run the monitor: live dashboard, REST API and Prometheus /metrics."""
    from sje.monitor.server import Monitor

    flags = {"bind_address": bind_address, "port": port, "broker_url": broker_url}
    settings = load_settings(MonitorSettings, config_path(config_file), flags)
    _setup_logging()
    m = Monitor(settings)

    def ready(url: str) -> None:
        out.print(f"SJE monitor listening on {url}", highlight=False, soft_wrap=True)
        note = " (this link signs you in)" if m.signin_url != f"{url}/" else ""
        out.print(f"Dashboard: {m.signin_url}{note}", highlight=False, soft_wrap=True)
        sys.stdout.flush()

    asyncio.run(m.serve(on_ready=ready))


@cli.command()
@common
@click.option("--broker-url", default=None, help=BROKER_URL_HELP)
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
            if wk.pool.isolation is not None:
                isolation = wk.pool.isolation.describe()
                out.print(f"  isolation: {isolation}", highlight=False, soft_wrap=True)
            out.print(f"  cpus: {wk.pool.placement.describe()}", highlight=False, soft_wrap=True)
            sys.stdout.flush()

        await w.run(on_ready=ready)

    asyncio.run(run())


@cli.command()
@common
@click.option("--example", is_flag=True, help="Run the example job end to end, then stop.")
@click.option("--workers", "n_workers", type=int, default=2, show_default=True)
@click.option("--tasks", "tasks", multiple=True, help="Task modules for the workers.")
def up(config_file: str | None, example: bool, n_workers: int, tasks: tuple[str, ...]) -> None:
    """Start a master, workers and a monitor here (with --example, run the example job)."""
    from sje.launcher import run_up

    sys.exit(
        run_up(config_path(config_file), example, n_workers, list(tasks), out, err, show_progress)
    )


@cli.command("token")
@common
@click.option("--broker-url", default=None, help=BROKER_URL_HELP)
def token(config_file: str | None, broker_url: str | None) -> None:
    """Print the API token masters of this deployment use (read from the broker)."""
    from sje.broker.registry import open_broker
    from sje.security import resolve

    settings = load_settings(MasterSettings, config_path(config_file), {"broker_url": broker_url})
    if settings.token:
        out.print(settings.token, highlight=False, soft_wrap=True)
        return

    async def read() -> str:
        broker = open_broker(settings.effective_broker_url, settings.key_prefix, settings.state_url)
        try:
            value, _ = await resolve(broker, "token", None)
            return value
        finally:
            await broker.close()

    out.print(asyncio.run(read()), highlight=False, soft_wrap=True)


@cli.command("config")
@common
@json_flag
@click.argument("component", type=click.Choice(["master", "worker", "monitor", "client"]))
def show_config(config_file: str | None, as_json: bool, component: str) -> None:
    """Print the effective settings of a component (file + environment), secrets hidden."""
    models: dict[str, type[BaseModel]] = {
        "master": MasterSettings,
        "worker": WorkerSettings,
        "monitor": MonitorSettings,
        "client": ClientSettings,
    }
    settings = load_settings(models[component], config_path(config_file))
    data = printable(settings)
    if as_json:
        print_json(data)
    else:
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
