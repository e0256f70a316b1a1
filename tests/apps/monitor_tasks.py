"""Task functions for the monitor, dashboard and event tests (imported by real worker
processes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sje

# -- used by tests/browser/test_dashboard.py -----------------------------------------------


def _check_ledger(account: str) -> None:
    raise ValueError(f"ledger of {account} does not balance: off by 12.50")


@sje.task
def reconcile(account: str) -> str:
    """Always fails with a ValueError raised one call deeper (a traceback with two frames)."""
    _check_ledger(account)
    return account


@sje.task
def report(item: dict[str, Any]) -> int:
    """Prints two lines about ``item["name"]`` and returns ``item["rows"]``."""
    name, rows = item["name"], int(item["rows"])
    print(f"report {name}: reading {rows} rows")
    print(f"report {name}: {rows // 2} rows look late")
    return rows


# -- used by tests/e2e/test_monitor.py and tests/integration/test_events_order.py -----------


@sje.task
def gated(item: dict[str, Any]) -> int:
    """Fails while the file ``item["gate"]`` does not exist, then returns ``item["value"]``:
    a job of it fails until the test opens the gate, and succeeds when retried after."""
    gate = Path(item["gate"])
    if not gate.exists():
        raise RuntimeError(f"gate {gate.name} is closed")
    return int(item["value"])


@sje.task
def fail_first(item: dict[str, Any]) -> int:
    """Fails on the first ``item["fail_times"]`` calls for its marker file, then returns
    ``item["value"]`` (a task that is retried, then succeeds)."""
    marker = Path(item["marker"])
    calls = int(marker.read_text()) + 1 if marker.exists() else 1
    marker.write_text(str(calls))
    if calls <= int(item.get("fail_times", 0)):
        raise RuntimeError(f"planned failure #{calls} of task {item['value']}")
    return int(item["value"])
