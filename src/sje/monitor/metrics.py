"""``/metrics``: Prometheus text built from the store's counters on every scrape.

Counters and histograms are the ``P:stats`` fields the Lua scripts keep (so they survive
monitor restarts and add up across workers); gauges are read at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sje.broker.base import Snapshot
from sje.events import HISTOGRAM_BOUNDS_MS

_OUTCOMES = ("succeeded", "failed", "dead")
_JOB_STATES = ("submitted", "succeeded", "failed", "cancelled", "timed_out")


def _by_queue(stats: dict[str, int], prefix: str) -> dict[str, dict[str, int]]:
    """``prefix|<queue>|<x>`` fields as {queue: {x: n}} (queue names may contain '|')."""
    out: dict[str, dict[str, int]] = {}
    for key, n in stats.items():
        if key.startswith(prefix + "|"):
            queue, _, last = key[len(prefix) + 1 :].rpartition("|")
            out.setdefault(queue, {})[last] = n
    return out


def _histogram(name: str, doc: str, stats: dict[str, int], kind: str) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["queue"])
    for queue, counts in sorted(_by_queue(stats, kind).items()):
        running, buckets = 0, []
        for bound in HISTOGRAM_BOUNDS_MS:
            running += counts.get(str(bound), 0)
            buckets.append((repr(bound / 1000), float(running)))
        running += counts.get("+Inf", 0)
        buckets.append(("+Inf", float(running)))
        total_ms = stats.get(f"{kind}_sum|{queue}", 0)
        family.add_metric([queue], buckets, total_ms / 1000)
    return family


class SnapshotCollector(Collector):
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        snap, stats = self.snap, self.snap.stats
        tasks = _by_queue(stats, "tasks")
        total = CounterMetricFamily(
            "sje_tasks", "Tasks finished, by queue and outcome.", labels=["queue", "outcome"]
        )
        retries = CounterMetricFamily(
            "sje_task_retries", "Failed attempts scheduled for a retry.", labels=["queue"]
        )
        for queue, counts in sorted(tasks.items()):
            for outcome in _OUTCOMES:
                total.add_metric([queue, outcome], counts.get(outcome, 0))
            retries.add_metric([queue], counts.get("retried", 0))
        yield total
        yield retries
        current = GaugeMetricFamily(
            "sje_tasks_current",
            "Tasks of unfinished jobs by queue and state.",
            labels=["queue", "state"],
        )
        for queue, counts in sorted(snap.unfinished.items()):
            for state, n in counts.items():
                current.add_metric([queue, state], n)
        yield current
        yield _histogram("sje_task_duration_seconds", "Run time of task attempts.", stats, "dur")
        yield _histogram(
            "sje_task_queue_wait_seconds", "Time from ready to started.", stats, "wait"
        )
        depth = GaugeMetricFamily("sje_queue_depth", "Tasks waiting in a queue.", labels=["queue"])
        for queue, n in sorted(snap.depths.items()):
            depth.add_metric([queue], n)
        yield depth
        jobs = CounterMetricFamily(
            "sje_jobs", "Jobs submitted and finished, by state.", labels=["state"]
        )
        for state in _JOB_STATES:
            jobs.add_metric([state], stats.get(f"jobs|{state}", 0))
        yield jobs
        workers = GaugeMetricFamily("sje_workers", "Registered workers by state.", labels=["state"])
        for state in ("alive", "lost"):
            workers.add_metric([state], sum(1 for w in snap.workers if w["state"] == state))
        yield workers
        yield GaugeMetricFamily(
            "sje_dead_letters", "Entries in the dead-letter queue.", value=snap.dead_letters
        )


def render(snap: Snapshot) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snap))
    return generate_latest(registry)
