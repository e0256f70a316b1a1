"""The ``sje`` group, shared options, consoles and the entry point that maps errors to exits.

Exit codes: 0 ok, 1 unexpected, 2 configuration/usage, 3 broker, 4 master, 5 job definition,
6 queue full, 7 job timeout, 8 job failed or cancelled, 9 worker start-up, 130 interrupted.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click
import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from sje.config import (
    ClientSettings,
    config_path,
    load_settings,
    read_yaml,
)
from sje.errors import SJEError
from sje.events import JOB_PROGRESS

if TYPE_CHECKING:
    # the HTTP client loads only for commands that talk to a master, keeping `sje worker` lean
    from sje.client import Client, JobHandle

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


#: a ``--timeout`` value: seconds, more than 0
SECONDS = click.FloatRange(min=0, min_open=True)


def json_flag(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(fn)


def print_json(data: Any, one_line: bool = False) -> None:
    """JSON for scripts: indented, or ``one_line`` (one record per line, for streams)."""
    option = 0 if one_line else orjson.OPT_INDENT_2
    sys.stdout.write(orjson.dumps(data, option=option).decode() + "\n")
    if one_line:
        sys.stdout.flush()  # a reader of the stream sees each event as it happens


def client_for(config_file: str | None) -> Client:
    path = config_path(config_file)
    data: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml(path)
        data = {k: v for k, v in raw.items() if k in ("master", "token")}
    settings = load_settings(ClientSettings, path, file_data=data)
    from sje.client import Client

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


def progress_bar() -> Progress:
    """The one progress bar style: job id, bar, done/total, counts, elapsed time."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    return Progress(*columns, console=err, transient=False)


def advance(bar: Progress, row: TaskID, event: dict[str, Any]) -> None:
    """Move the bar to a ``job.progress`` snapshot (other events leave it)."""
    if event["type"] != JOB_PROGRESS:
        return
    t = event["tasks"]
    failed = t["failed"] + t["dead"]
    done = t["succeeded"] + failed + t["cancelled"]
    detail = f"running {t['running']}  retrying {t['retrying']}  failed {failed}"
    bar.update(row, total=t["total"], completed=done, detail=detail)


def show_progress(handle: JobHandle, timeout: float | None) -> dict[str, Any]:
    """Wait for the job with a progress bar; its final status record."""
    with progress_bar() as bar:
        row = bar.add_task(handle.id[:12], total=None, detail="")
        return handle.wait(timeout, on_event=lambda event: advance(bar, row, event))


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
