"""A few seconds of the open-loop load test (bench/load.py): it runs end to end and passes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT, sje_env

SMOKE_TIMEOUT_S = 90


def run_load_test(tmp_path: Path, *args: str) -> tuple[int, str]:
    """Run bench/load.py to its end; past the timeout it gets SIGTERM, so it still stops the
    processes it started, and only then SIGKILL."""
    log = tmp_path / "load.out"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "load.py"), *args],
            cwd=ROOT,
            env=sje_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            code = proc.wait(SMOKE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(45)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            raise AssertionError(
                f"bench/load.py ran over {SMOKE_TIMEOUT_S}s:\n" + log.read_text(errors="replace")
            ) from None
    return code, log.read_text(errors="replace")


def test_load_test_smoke_run_executes_every_job_once_without_errors(tmp_path: Path) -> None:
    result = tmp_path / "load.json"
    code, output = run_load_test(
        tmp_path,
        *("--duration", "5", "--saturation-jobs", "200", "--result-ttl", "2"),
        *("--json", str(result), "--log-dir", str(tmp_path / "logs")),
    )
    assert code == 0, output
    res = json.loads(result.read_text())
    counts = res["open_loop"]
    assert counts["planned"] > 0
    assert counts["submit_errors"] == counts["unsent"] == counts["not_succeeded"] == 0, counts
    assert res["executions"] == counts["acknowledged"] == counts["planned"]
    assert res["redis"]["after"]["job_keys"] == res["redis"]["baseline"]["job_keys"]
    assert all(c["passed"] for c in res["criteria"]), res["criteria"]
