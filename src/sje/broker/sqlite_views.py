"""The monitor's read side on SQLite: overview, filtered job pages, per-task tables,
timelines, queues and the counters behind ``/metrics`` (``docs/monitor.md``), with the shapes,
orders and bounds of ``redis_views``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import orjson

from sje.broker import redis_views as shared
from sje.broker.base import JobQuery, Snapshot
from sje.broker.sqlite_tx import (
    JOB_COLUMNS,
    LIVE,
    Tx,
    event_id,
    index_text,
    job_record,
    parse_event_id,
)
from sje.events import SLOT_S
from sje.models import JobState

if TYPE_CHECKING:
    from sje.broker.sqlite import SQLiteBroker

_UNFINISHED = ("queued", "running", "retrying")
_ACTIVE = "state IN ('pending', 'running')"
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class SQLiteViews:
    def __init__(self, broker: SQLiteBroker) -> None:
        self._b = broker

    # -- counters ---------------------------------------------------------------------------

    async def stats(self) -> dict[str, int]:
        return dict(await self._b.read(lambda tx: tx.all("SELECT field, value FROM stats")))

    async def queue_names(self) -> list[str]:
        """Queues jobs were submitted to, and those workers serve."""

        def read(tx: Tx) -> tuple[list[Any], list[Any]]:
            submitted = tx.all("SELECT name FROM queues")
            return submitted, tx.all("SELECT info FROM workers WHERE info IS NOT NULL")

        submitted, infos = await self._b.read(read)
        names = {str(row[0]) for row in submitted}
        for (info,) in infos:
            names.update(str(q) for q in orjson.loads(info).get("queues", []))
        return sorted(names)

    async def depths(self, queues: list[str]) -> dict[str, int]:
        rows = dict(await self._b.read(lambda tx: tx.all("SELECT name, depth FROM queues")))
        return {q: int(rows.get(q, 0)) for q in queues}

    async def throughput(
        self, window_s: int, by_queue_s: int = 0
    ) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
        """Tasks succeeded and failed per slot (``SLOT_S`` seconds) over the last ``window_s``,
        oldest first, the current (partial) slot last; and by queue over the current slot and
        the ``by_queue_s`` seconds before it."""
        now = await self._b.server_time()
        last = int(now // SLOT_S)
        count = max(1, window_s // SLOT_S)
        first = last - count + 1
        qfrom = last - by_queue_s // SLOT_S
        rows = await self._b.read(
            lambda tx: tx.all(
                "SELECT slot, field, value FROM throughput WHERE slot >= ? AND slot <= ?",
                min(first, qfrom),
                last,
            )
        )
        totals = {slot: [0, 0] for slot in range(first, last + 1)}
        by_queue: dict[str, dict[str, int]] = {}
        for slot, field, n in rows:
            queue, _, kind = str(field).rpartition("|")
            outcome = "succeeded" if kind == "s" else "failed"
            if slot in totals:
                totals[slot][kind != "s"] += n
            if slot >= qfrom:
                sums = by_queue.setdefault(queue, {"succeeded": 0, "failed": 0})
                sums[outcome] += n
        series = [
            {"t": slot * SLOT_S, "succeeded": s, "failed": f} for slot, (s, f) in totals.items()
        ]
        return series, by_queue

    async def unfinished(self) -> dict[str, dict[str, int]]:
        """Queued, running and retrying tasks of unfinished jobs (the oldest
        ``ACTIVE_BUDGET``), by queue."""
        rows = await self._b.read(
            lambda tx: tx.all(
                f"SELECT queue, c_queued, c_running, c_retrying FROM jobs WHERE {_ACTIVE} "
                "ORDER BY created_at, id LIMIT ?",
                shared.ACTIVE_BUDGET,
            )
        )
        out: dict[str, dict[str, int]] = {}
        for queue, *counts in rows:
            sums = out.setdefault(queue, dict.fromkeys(_UNFINISHED, 0))
            for name, n in zip(_UNFINISHED, counts, strict=True):
                sums[name] += n
        return out

    async def _dead_letters(self) -> int:
        return int((await self._b.read(lambda tx: tx.one("SELECT count(*) FROM dead_letters")))[0])

    async def snapshot(self) -> Snapshot:
        queues = await self.queue_names()
        return Snapshot(
            stats=await self.stats(),
            depths=await self.depths(queues),
            unfinished=await self.unfinished(),
            workers=await self._b.workers(),
            dead_letters=await self._dead_letters(),
            queues=queues,
        )

    async def overview(self, window_s: int) -> dict[str, Any]:
        snap = await self.snapshot()
        now = await self._b.server_time()
        series, _ = await self.throughput(window_s)
        recent = series[-(shared.RATE_WINDOW_S // SLOT_S + 1) :]
        span = shared.rate_span(now, len(recent))
        totals = dict.fromkeys(("succeeded", "failed", "dead", "retried"), 0)
        for key, n in snap.stats.items():
            kind, _, outcome = key.rpartition("|")
            if kind.startswith("tasks|") and outcome in totals:
                totals[outcome] += n
        (active,) = await self._b.read(
            lambda tx: tx.one(f"SELECT count(*) FROM jobs WHERE {_ACTIVE}")
        )
        jobs = {
            s: snap.stats.get(f"jobs|{s}", 0)
            for s in ("submitted", "succeeded", "failed", "cancelled", "timed_out")
        }
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

    # -- jobs -------------------------------------------------------------------------------

    async def find_jobs(
        self, query: JobQuery, limit: int, offset: int
    ) -> tuple[list[dict[str, str]], int | None]:
        """Jobs matching ``query``, newest first, from ``offset`` in the (time-filtered) index
        of at most ``SCAN_BUDGET`` ids per call; returns (rows, the offset to continue from or
        None at the end). Expired jobs not yet pruned count as scanned, as on Redis."""
        if query.id_prefix and len(query.id_prefix) == 32 and offset == 0:
            exact = await self._b.job(query.id_prefix)
            created = int((exact or {}).get("created_at") or 0)
            in_range = (query.since_ms or 0) <= created <= (query.until_ms or created)
            if exact is not None and in_range and shared.RedisViews._matches(query, exact):
                return [{"id": query.id_prefix, **exact}], None
        return await self._b.read(_find_jobs, query, limit, offset, shared.SCAN_BUDGET)

    # -- one job ------------------------------------------------------------------------------

    async def tasks(
        self, job_id: str, job: dict[str, str], state: str | None, offset: int, limit: int
    ) -> tuple[int, list[dict[str, Any]]]:
        """(how many tasks match, one page of rows) of a job's per-task table."""
        return await self._b.read(_tasks, job_id, job, state, offset, limit)

    async def timeline(self, job_id: str, limit: int) -> list[tuple[str, dict[str, str]]]:
        """The newest ``limit`` events of a job, oldest first."""
        rows = await self._b.read(
            lambda tx: tx.all(
                "SELECT e.eid, e.fields FROM job_events e JOIN jobs j ON j.id = e.job "
                "WHERE e.job = ? AND e.ev = 1 AND (j.expires_at IS NULL OR j.expires_at > ?) "
                "ORDER BY e.eid DESC LIMIT ?",
                job_id,
                tx.now,
                limit,
            )
        )
        return [(event_id(eid), orjson.loads(fields)) for eid, fields in reversed(rows)]

    async def global_events(
        self, after: str, block_ms: int | None, count: int = 1000
    ) -> list[tuple[str, dict[str, str]]]:
        start = parse_event_id(after)

        def read(tx: Tx) -> list[tuple[str, dict[str, str]]]:
            rows = tx.all(
                "SELECT eid, fields FROM global_events WHERE eid > ? ORDER BY eid LIMIT ?",
                start,
                count,
            )
            return [(event_id(eid), orjson.loads(fields)) for eid, fields in rows]

        return await self._b.poll(read, block_ms)

    async def last_event_id(self) -> str:
        (eid,) = await self._b.read(lambda tx: tx.one("SELECT max(eid) FROM global_events"))
        return "0-0" if eid is None else event_id(eid)

    # -- queues -------------------------------------------------------------------------------

    async def queues(self, peek: int) -> dict[str, Any]:
        names = await self.queue_names()
        now = await self._b.server_time()
        _, recent = await self.throughput(SLOT_S, shared.RATE_WINDOW_S)
        span = shared.rate_span(now, shared.RATE_WINDOW_S // SLOT_S + 1)
        unfinished = await self.unfinished()
        heads = await self._b.read(_queue_heads, names, peek)
        now_ms = int(now * 1000)
        out = []
        for name in names:
            depth, peeked, ready = heads[name]
            waits = [now_ms - t for t in ready]
            counts = unfinished.get(name, {})
            done = recent.get(name, {})
            out.append(
                {
                    "name": name,
                    "depth": depth,
                    "running": counts.get("running", 0),
                    "retrying": counts.get("retrying", 0),
                    "succeeded_per_s": round(done.get("succeeded", 0) / span, 3),
                    "failed_per_s": round(done.get("failed", 0) / span, 3),
                    "oldest_wait_s": round(max(waits) / 1000, 3) if waits else None,
                    "peek": [_peek_row(row, now_ms) for row in peeked],
                }
            )
        return {"queues": out, "dead_letters": await self._dead_letters()}


def _find_jobs(
    tx: Tx, query: JobQuery, limit: int, offset: int, budget: int
) -> tuple[list[dict[str, str]], int | None]:
    hi = 2**63 - 1 if query.until_ms is None else query.until_ms
    lo = -(2**63) if query.since_ms is None else query.since_ms
    rows = tx.db.execute(
        f"SELECT id, state, name, {LIVE} FROM jobs WHERE created_at >= ? AND created_at <= ? "
        "ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
        (tx.now, lo, hi, budget, offset),
    )
    name = (query.name or "").lower()
    ids: list[str] = []
    scanned, following = 0, None
    for jid, state, job_name, live in rows:
        scanned += 1  # noqa: SIM113 (the count must survive the loop)
        ok = not query.id_prefix or jid.startswith(query.id_prefix)
        if ok and (query.state or name):
            ok = bool(live) and (not query.state or state == query.state)
            ok = ok and (not name or name in str(job_name).translate(_ASCII_LOWER))
        if ok:
            ids.append(jid)
            if len(ids) == limit:
                following = offset + scanned
                break
    else:
        following = None if scanned < budget else offset + scanned
    rows.close()
    found = []
    for jid in ids:
        row = tx.one(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ? AND {LIVE}", jid, tx.now)
        if row is not None:
            found.append({"id": jid, **job_record(row)})
    return found, following


def _tasks(
    tx: Tx, job_id: str, job: dict[str, str], state: str | None, offset: int, limit: int
) -> tuple[int, list[dict[str, Any]]]:
    n = int(job.get("n", "0"))
    every = [str(i) for i in range(n)] + (["r"] if job.get("reduce") else [])
    finished = JobState(job["state"]).is_terminal
    live = tx.one(f"SELECT 1 FROM jobs WHERE id = ? AND {LIVE}", job_id, tx.now) is not None
    if state:
        # as on Redis, an error state is looked up among the tasks that have an error only
        errors_only = state in ("failed", "dead", "retrying")
        rows = tx.all("SELECT idx, state, error IS NULL FROM tasks WHERE job = ?", job_id)
        states = {
            index_text(idx): st
            for idx, st, no_error in (rows if live else [])
            if not (errors_only and no_error)
        }
        indices = [i for i in every if _shown_state(states.get(i, "queued"), finished) == state]
        total, page = len(indices), indices[offset : offset + limit]
    else:
        total, page = len(every), every[offset : offset + limit]
    stored: dict[str, tuple[Any, ...]] = {}
    if live and page:
        marks = ", ".join("?" * len(page))
        for idx, *values in tx.all(
            "SELECT idx, state, attempts, duration, worker, error FROM tasks "
            f"WHERE job = ? AND idx IN ({marks})",
            job_id,
            *(-1 if i == "r" else int(i) for i in page),
        ):
            stored[index_text(idx)] = tuple(values)
    return total, [_task_row(i, stored.get(i), finished) for i in page]


def _task_row(index: str, values: tuple[Any, ...] | None, finished: bool) -> dict[str, Any]:
    st, att, dur, wid, err = values or ("queued", 0, None, None, None)
    error = orjson.loads(err) if err else None
    return {
        "index": index,
        "state": _shown_state(st or "queued", finished),
        "attempts": int(att or 0),
        "duration_s": int(dur) / 1000 if dur is not None else None,
        "worker": wid or None,
        "error": {"type": error.get("type"), "message": error.get("message")}
        if isinstance(error, dict)
        else None,
    }


def _shown_state(stored: str, job_finished: bool) -> str:
    """A task's state as shown: unfinished tasks of a finished job were cancelled."""
    return "cancelled" if job_finished and stored in _UNFINISHED else stored


_HEAD = (
    "SELECT r.member, r.score, coalesce(t.t, j.created_at), j.name, j.task "
    "FROM ready r JOIN tasks t ON t.job = r.job AND t.idx = r.idx JOIN jobs j ON j.id = r.job "
    "WHERE r.queue = ? AND r.score >= ? AND r.score < ? ORDER BY r.score, r.member LIMIT ?"
)


def _queue_heads(
    tx: Tx, names: list[str], peek: int
) -> dict[str, tuple[int, list[Any], list[int]]]:
    """Per queue: (depth, the first ``peek`` entries, when the first entry of each priority
    and each peeked one became ready)."""
    band = 10**13
    out = {}
    for name in names:
        row = tx.one("SELECT depth FROM queues WHERE name = ?", name)
        peeked = tx.all(_HEAD, name, 0, 10 * band, peek) if peek > 0 else []
        heads = [r for b in range(10) for r in tx.all(_HEAD, name, b * band, (b + 1) * band, 1)]
        out[name] = (0 if row is None else int(row[0]), peeked, [r[2] for r in heads + peeked])
    return out


def _peek_row(row: Any, now_ms: int) -> dict[str, Any]:
    member, score, ready, name, task = row
    jid, _, idx = str(member).partition(":")
    return {
        "task": member,
        "job": jid,
        "index": idx,
        "name": name or task or None,
        "priority": 9 - math.floor(score / 10**13),
        "waiting_s": round((now_ms - ready) / 1000, 3),
    }
