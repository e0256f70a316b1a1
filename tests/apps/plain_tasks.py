"""A task module that imports nothing beyond ``sje``: what a child loads to run plain tasks."""

from __future__ import annotations

import sys

import sje


@sje.task
def loaded(names: list[str]) -> list[str]:
    """Which of the modules ``names`` this child process has imported."""
    return [name for name in names if name in sys.modules]
