"""What the monitor's views compute the same way on every store: the bounds, the rules and the
shapes of overview, queue and task rows (``docs/monitor.md``). Each store's views only read."""

from __future__ import annotations

import math
from typing import Any

import orjson

from sje.broker.base import JobQuery, Snapshot
from sje.events import SLOT_S

#: job ids a jobs query looks at per call before it returns a ``next`` offset (one script call
#: that blocks Redis for a few milliseconds at most)
SCAN_BUDGET = 10_000
#: unfinished jobs whose counters the per-queue gauges sum, at most
ACTIVE_BUDGET = 5_000
#: rates are measured over this many seconds of full throughput slots
RATE_WINDOW_S = 60
#: a queue entry's score is (9 - priority) * PRIO_BAND + its sequence
PRIO_BAND = 10**13
UNFINISHED = ("queued", "running", "retrying")
_JOB_COUNTERS = ("submitted", "succeeded", "failed", "cancelled", "timed_out")
_TASK_TOTALS = ("succeeded", "failed", "dead", "retried")


def rate_span(now: float, slots: int) -> float:
    """Seconds covered by the last ``slots`` throughput slots, the current partial one included."""
    return max(1.0, (slots - 1) * SLOT_S + now % SLOT_S)


def shown_state(stored: str, job_finished: bool) -> str:
    """A task's state as shown: unfinished tasks of a finished job were cancelled."""
    return "cancelled" if job_finished and stored in UNFINISHED else stored


def job_matches(query: JobQuery, job: dict[str, str]) -> bool:
    """Whether a job record passes the query's state and name filters."""
    if query.state and job.get("state") != query.state:
        return False
    return not query.name or query.name.lower() in (job.get("name") or "").lower()


def exact_hit(query: JobQuery, offset: int, job: dict[str, str] | None) -> bool:
    """Whether ``job``, looked up by a full 32-character id in ``query``, is the whole answer
    of the first page (no scan needed)."""
    if job is None or offset != 0:
        return False
    created = int(job.get("created_at") or 0)
    in_range = (query.since_ms or 0) <= created <= (query.until_ms or created)
    return in_range and job_matches(query, job)


def is_full_id(query: JobQuery) -> bool:
    return bool(query.id_prefix) and len(query.id_prefix or "") == 32


def task_row(
    index: str,
    stored_state: str | None,
    attempts: Any,
    duration_ms: Any,
    worker: str | None,
    error_json: bytes | str | None,
    job_finished: bool,
) -> dict[str, Any]:
    """One row of a job's per-task table."""
    error = orjson.loads(error_json) if error_json else None
    return {
        "index": index,
        "state": shown_state(stored_state or "queued", job_finished),
        "attempts": int(attempts or 0),
        "duration_s": int(duration_ms) / 1000 if duration_ms not in (None, b"", "") else None,
        "worker": worker or None,
        "error": {"type": error.get("type"), "message": error.get("message")}
        if isinstance(error, dict)
        else None,
    }


def peek_row(
    member: str, score: float, ready_ms: int | None, name: str | None, now_ms: int
) -> dict[str, Any]:
    """One queued task as a queue's peek shows it."""
    job_id, _, index = member.partition(":")
    return {
        "task": member,
        "job": job_id,
        "index": index,
        "name": name or None,
        "priority": 9 - math.floor(score / PRIO_BAND),
        "waiting_s": round((now_ms - ready_ms) / 1000, 3) if ready_ms is not None else None,
    }


def queue_row(
    name: str,
    depth: int,
    unfinished: dict[str, dict[str, int]],
    recent: dict[str, dict[str, int]],
    span_s: float,
    waits_ms: list[int],
    peek: list[dict[str, Any]],
) -> dict[str, Any]:
    """One queue of the queues page; ``waits_ms`` are the waits of its first task of each
    priority and of the peeked ones (the oldest of them is the queue's oldest wait)."""
    counts, done = unfinished.get(name, {}), recent.get(name, {})
    return {
        "name": name,
        "depth": depth,
        "running": counts.get("running", 0),
        "retrying": counts.get("retrying", 0),
        "succeeded_per_s": round(done.get("succeeded", 0) / span_s, 3),
        "failed_per_s": round(done.get("failed", 0) / span_s, 3),
        "oldest_wait_s": round(max(waits_ms) / 1000, 3) if waits_ms else None,
        "peek": peek,
    }


def overview(
    snap: Snapshot, series: list[dict[str, Any]], now: float, active: int
) -> dict[str, Any]:
    """The overview page from a snapshot, the throughput series and the unfinished job count."""
    recent = series[-(RATE_WINDOW_S // SLOT_S + 1) :]
    span = rate_span(now, len(recent))
    totals = dict.fromkeys(_TASK_TOTALS, 0)
    for key, n in snap.stats.items():
        kind, _, outcome = key.rpartition("|")
        if kind.startswith("tasks|") and outcome in totals:
            totals[outcome] += n
    jobs = {s: snap.stats.get(f"jobs|{s}", 0) for s in _JOB_COUNTERS}
    alive = [w for w in snap.workers if w["state"] == "alive"]
    return {
        "jobs": {**jobs, "active": active},
        "tasks": totals,
        "rates": {
            "succeeded_per_s": round(sum(s["succeeded"] for s in recent) / span, 3),
            "failed_per_s": round(sum(s["failed"] for s in recent) / span, 3),
        },
        "series": series,
        "queues": [{"name": q, "depth": snap.depths[q]} for q in snap.queues],
        "workers": {
            "alive": len(alive),
            "lost": len(snap.workers) - len(alive),
            "busy": sum(int(w.get("busy", w.get("running", 0))) for w in alive),
            "slots": sum(int(w.get("concurrency", 0)) for w in alive),
        },
        "dead_letters": snap.dead_letters,
    }
