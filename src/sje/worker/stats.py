"""What a worker reports with each heartbeat: busy slots, tasks done and failed, CPU and memory
of itself and its child processes (psutil)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import psutil


@dataclass
class WorkerStats:
    slots: int
    done: int = 0
    failed: int = 0
    _procs: dict[int, psutil.Process] = field(default_factory=dict)

    def snapshot(self, busy: int, child_pids: list[int]) -> dict[str, Any]:
        """The stats as stored in ``P:wstat``; CPU % is since the previous snapshot, summed over
        the worker and its children (100 = one core)."""
        cpu, rss = 0.0, 0
        wanted = [psutil.Process().pid, *child_pids]
        for pid in list(self._procs):
            if pid not in wanted:
                del self._procs[pid]
        for pid in wanted:
            with contextlib.suppress(psutil.Error):
                proc = self._procs.get(pid)
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                cpu += proc.cpu_percent(None)
                rss += proc.memory_info().rss
        return {
            "busy": busy,
            "slots": self.slots,
            "done": self.done,
            "failed": self.failed,
            "cpu_percent": round(cpu, 1),
            "rss_mb": round(rss / 2**20, 1),
        }
