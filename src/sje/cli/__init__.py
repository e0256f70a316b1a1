"""The ``sje`` command: parse arguments, load settings, call a component, map errors to exits.

Terminal output happens only in this package, through rich.
"""

from sje.cli import dlq, jobs, logs, servers, watch
from sje.cli.base import cli, main

__all__ = ["cli", "dlq", "jobs", "logs", "main", "servers", "watch"]
