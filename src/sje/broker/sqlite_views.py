"""The monitor's read side on SQLite: overview, filtered job pages, per-task tables,
timelines, queues and the counters behind ``/metrics`` (``docs/monitor.md``), with the shapes,
orders and bounds of ``redis_views``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from sje.broker import views_shape as shape
from sje.broker.base import JobEnd, JobQuery, Snapshot
from sje.broker.sqlite_tx import (
    JOB_COLUMNS,
    LIVE,
    Tx,
    event_id,
    index_text,
    job_record,
    parse_event_id,
)
from sje.events import JOB_FINISHED, SLOT_S
from sje.models import JobState

if TYPE_CHECKING:
    from sje.broker.sqlite import SQLiteBroker

_ACTIVE = "state IN ('pending', 'running')"
_JOB_ENDS = frozenset(JOB_FINISHED.values())
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
                shape.ACTIVE_BUDGET,
            )
        )
        out: dict[str, dict[str, int]] = {}
        for queue, *counts in rows:
            sums = out.setdefault(queue, dict.fromkeys(shape.UNFINISHED, 0))
            for name, n in zip(shape.UNFINISHED, counts, strict=True):
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
        (active,) = await self._b.read(
            lambda tx: tx.one(f"SELECT count(*) FROM jobs WHERE {_ACTIVE}")
        )
        return shape.overview(snap, series, now, int(active))

    # -- jobs -------------------------------------------------------------------------------

    async def find_jobs(
        self, query: JobQuery, limit: int, offset: int
    ) -> tuple[list[dict[str, str]], int | None]:
        """Jobs matching ``query``, newest first, from ``offset`` in the (time-filtered) index
        of at most ``SCAN_BUDGET`` ids per call; returns (rows, the offset to continue from or
        None at the end). Expired jobs not yet pruned count as scanned, as on Redis."""
        if shape.is_full_id(query):
            exact = await self._b.job(str(query.id_prefix))
            if exact is not None and shape.exact_hit(query, offset, exact):
                return [{"id": str(query.id_prefix), **exact}], None
        return await self._b.read(_find_jobs, query, limit, offset, shape.SCAN_BUDGET)

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

    async def job_ends(self, after: str, block_ms: int) -> tuple[str, list[JobEnd]]:
        """The job ends among the global events (in a file, one more stream would cost a
        write per job and save no read; a waiting request reads the record it needs)."""
        events = await self.global_events(after, block_ms)
        if not events:
            return after, []
        ended = [JobEnd(f["job"]) for _, f in events if f.get("type") in _JOB_ENDS]
        return events[-1][0], ended

    async def last_job_end(self) -> str:
        return await self.last_event_id()

    # -- queues -------------------------------------------------------------------------------

    async def queues(self, peek: int) -> dict[str, Any]:
        names = await self.queue_names()
        now = await self._b.server_time()
        _, recent = await self.throughput(SLOT_S, shape.RATE_WINDOW_S)
        span = shape.rate_span(now, shape.RATE_WINDOW_S // SLOT_S + 1)
        unfinished = await self.unfinished()
        heads = await self._b.read(_queue_heads, names, peek)
        now_ms = int(now * 1000)
        out = []
        for name in names:
            depth, peeked, ready = heads[name]
            waits = [now_ms - t for t in ready]
            rows = [shape.peek_row(m, sc, t, nm or tk, now_ms) for m, sc, t, nm, tk in peeked]
            out.append(shape.queue_row(name, depth, unfinished, recent, span, waits, rows))
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
        shown = (shape.shown_state(states.get(i, "queued"), finished) for i in every)
        indices = [i for i, st in zip(every, shown, strict=True) if st == state]
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
    rows = []
    for i in page:
        st, att, dur, wid, err = stored.get(i, ("queued", 0, None, None, None))
        rows.append(shape.task_row(i, st, att, dur, wid, err, finished))
    return total, rows


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
    band = shape.PRIO_BAND
    out = {}
    for name in names:
        row = tx.one("SELECT depth FROM queues WHERE name = ?", name)
        peeked = tx.all(_HEAD, name, 0, 10 * band, peek) if peek > 0 else []
        heads = [r for b in range(10) for r in tx.all(_HEAD, name, b * band, (b + 1) * band, 1)]
        out[name] = (0 if row is None else int(row[0]), peeked, [r[2] for r in heads + peeked])
    return out
