"""A few seconds of bench/compare.py for SJE alone: it runs end to end and its figures are sane.

Only SJE (the main venv): no peer's virtual environment, no network install, no chart.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT, sje_env

SMOKE_TIMEOUT_S = 120


def run_compare(tmp_path: Path, *args: str) -> tuple[int, str]:
    """Run bench/compare.py to its end; past the timeout it gets SIGTERM, so it still stops the
    processes it started, and only then SIGKILL."""
    log = tmp_path / "compare.out"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "compare.py"), *args],
            cwd=ROOT,
            env=sje_env(COLUMNS="200"),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            code = proc.wait(SMOKE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            raise AssertionError(
                f"bench/compare.py ran over {SMOKE_TIMEOUT_S}s:\n" + log.read_text(errors="replace")
            ) from None
    return code, log.read_text(errors="replace")


def test_compare_smoke_run_reports_sane_figures_for_sje(tmp_path: Path) -> None:
    result = tmp_path / "compare.json"
    code, output = run_compare(
        tmp_path,
        *("--smoke", "--systems", "sje", "--no-chart"),
        *("--json", str(result), "--log-dir", str(tmp_path / "logs")),
    )
    assert code == 0, output
    report = json.loads(result.read_text())
    sizes = report["sizes"]
    sje = report["results"]["sje"]
    assert sje["status"] == "ok", (sje.get("errors"), output)
    assert sje["errors"] == [] and sje["skipped"] == []
    (run,) = sje["reps"]
    # enqueue: both ways
    assert run["enqueue_one_n"] == sizes["enqueue_one_n_sje"] and run["enqueue_one_rate"] > 0
    assert run["enqueue_batch_n"] == sizes["drain_n"] and run["enqueue_batch_rate"] > 0
    # drain: every task completed exactly once
    n = sizes["drain_n"]
    assert run["drain_n"] == run["drain_completions"] == run["drain_distinct"] == n
    assert run["drain_rate"] > 0
    assert 0 < run["worker_pss_peak_mb"] <= run["worker_rss_peak_mb"]
    # round trips, CPU- and I/O-bound
    assert 0 < run["rt_p50_ms"] <= run["rt_p99_ms"]
    assert run["rt_n"] > 0
    assert run["cpu_n"] == sizes["cpu_n"] and 0 < run["cpu_efficiency"] <= 105
    assert run["io_n"] == sizes["io_n"] and run["io_rate"] > 0
    assert 0 < run["io_pct_ideal"] <= 105
    # recovery: a SIGKILLed worker's tasks come back after the lease; nothing is lost. Only the
    # tasks it held unacknowledged (running, or done and not yet stored) may run twice.
    assert run["rec_lost"] == 0, run
    assert run["rec_held"] >= 1, "the killed worker held at least the task it was running"
    assert run["rec_dups"] <= run["rec_held"], "only tasks it held unacknowledged ran twice"
    assert run["rec_time_s"] is not None and run["rec_time_s"] > 0
    assert report["sje_vs_best_peer"]["drain_rate"] is None  # no peer in this run
