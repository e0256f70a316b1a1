"""submit.yaml: named job definitions for ``sje submit <job-name>``.

::

    master: http://127.0.0.1:7070      # optional (else SJE_MASTER)
    job:                               # one job, or `jobs:` with a list of them
      name: primes
      task-def:
        task: sje.examples.count_primes
        inputs: [[0, 1000], [1000, 2000]]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sje._validation import nearest_hint
from sje.config import read_yaml
from sje.errors import ConfigError

_TOP_KEYS = ("master", "token", "job", "jobs")


def job_from_file(path: Path | None, name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The ``task-def`` of job ``name`` (with ``name`` set and ``overrides`` applied)."""
    if path is None:
        raise ConfigError(
            f"No submit file to find job '{name}' in: give --config submit.yaml "
            "or set SJE_CONFIG_FILE."
        )
    data = read_yaml(path)
    for key in data:
        if key not in _TOP_KEYS:
            raise ConfigError(f"{path}: unknown key '{key}'{nearest_hint(key, _TOP_KEYS)}")
    entries = data.get("jobs") or ([data["job"]] if "job" in data else [])
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: no jobs defined; add a 'job:' with 'name' and 'task-def'.")
    by_name: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(entries):
        where = f"{path}: job #{i + 1}"
        if not isinstance(entry, dict) or "task-def" not in entry or "name" not in entry:
            raise ConfigError(f"{where}: each job needs 'name' and 'task-def' keys.")
        extra = set(entry) - {"name", "task-def"}
        if extra:
            bad = sorted(extra)[0]
            raise ConfigError(
                f"{where}: unknown key '{bad}'{nearest_hint(bad, ('name', 'task-def'))}"
            )
        if not isinstance(entry["task-def"], dict):
            raise ConfigError(f"{where}: 'task-def' must be a mapping of job keys.")
        by_name[str(entry["name"])] = entry["task-def"]
    if name not in by_name:
        known = ", ".join(sorted(by_name))
        raise ConfigError(f"{path}: no job named '{name}'; defined: {known}.")
    return {"name": name, **by_name[name], **overrides}
