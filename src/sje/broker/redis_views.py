"""Read-side aggregates for the monitor on Redis: overview, filtered job pages, per-task tables,
timelines, queues and the counters behind ``/metrics`` (see ``docs/monitor.md``).

Everything is bounded per call (pages, scan budgets, pipelines), so a store with 100,000 tasks
answers as fast as one with ten.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from sje.broker import views_shape as shape
from sje.broker.base import JobEnd, JobQuery, Snapshot
from sje.broker.redis_events import decode, expand_all, resume_point
from sje.events import SLOT_S
from sje.models import JobState

if TYPE_CHECKING:
    from sje.broker.redis import RedisBroker


def _s(value: bytes | None) -> str:
    return value.decode() if value is not None else ""


class RedisViews:
    def __init__(self, broker: RedisBroker) -> None:
        self._b = broker

    @property
    def _r(self) -> Any:
        return self._b.client

    def _k(self, *parts: str) -> str:
        return self._b.key(*parts)

    # -- counters ---------------------------------------------------------------------------

    async def stats(self) -> dict[str, int]:
        with self._b.guard():
            raw = await self._r.hgetall(self._k("stats"))
        return {k.decode(): int(v) for k, v in raw.items()}

    async def queue_names(self) -> list[str]:
        """Queues jobs were submitted to, and those workers serve."""
        with self._b.guard():
            pipe = self._r.pipeline(transaction=False)
            pipe.smembers(self._k("queues"))
            pipe.hvals(self._k("workers"))
            submitted, infos = await pipe.execute()
        names = {q.decode() for q in submitted}
        for info in infos:
            names.update(str(q) for q in orjson.loads(info).get("queues", []))
        return sorted(names)

    async def depths(self, queues: list[str]) -> dict[str, int]:
        with self._b.guard():
            pipe = self._r.pipeline(transaction=False)
            for q in queues:
                pipe.zcard(self._k("q", q))
            return {q: int(n) for q, n in zip(queues, await pipe.execute(), strict=True)}

    async def throughput(
        self, window_s: int, by_queue_s: int = 0
    ) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
        """Tasks succeeded and failed per slot (``SLOT_S`` seconds) over the last ``window_s``,
        oldest first, the current (partial) slot last; and by queue over the current slot and
        the ``by_queue_s`` seconds before it (one read-only script, however long the window)."""
        now = await self._b.server_time()
        last = int(now // SLOT_S)
        count = max(1, window_s // SLOT_S)
        first = last - count + 1
        full = by_queue_s // SLOT_S  # whole slots before the current one
        totals, queues = await self._b.run_script("throughput", first, count, last - full, last)
        series = [
            {
                "t": (first + i) * SLOT_S,
                "succeeded": int(totals[2 * i]),
                "failed": int(totals[2 * i + 1]),
            }
            for i in range(count)
        ]
        by_queue = {
            queues[i].decode(): {"succeeded": int(queues[i + 1]), "failed": int(queues[i + 2])}
            for i in range(0, len(queues), 3)
        }
        return series, by_queue

    async def unfinished(self) -> dict[str, dict[str, int]]:
        """Queued, running and retrying tasks of unfinished jobs, by queue (one read-only
        script over at most ``shape.ACTIVE_BUDGET`` jobs)."""
        raw = await self._b.run_script("unfinished", shape.ACTIVE_BUDGET)
        return {
            raw[i].decode(): dict(zip(shape.UNFINISHED, map(int, raw[i + 1 : i + 4]), strict=True))
            for i in range(0, len(raw), 4)
        }

    async def snapshot(self) -> Snapshot:
        queues = await self.queue_names()
        with self._b.guard():
            dead = int(await self._r.zcard(self._k("dlq")))
        return Snapshot(
            stats=await self.stats(),
            depths=await self.depths(queues),
            unfinished=await self.unfinished(),
            workers=await self._b.workers(),
            dead_letters=dead,
            queues=queues,
        )

    async def overview(self, window_s: int) -> dict[str, Any]:
        snap = await self.snapshot()
        now = await self._b.server_time()
        series, _ = await self.throughput(window_s)
        with self._b.guard():
            active = int(await self._r.zcard(self._k("active")))
        return shape.overview(snap, series, now, active)

    # -- jobs -------------------------------------------------------------------------------

    async def find_jobs(
        self, query: JobQuery, limit: int, offset: int
    ) -> tuple[list[dict[str, str]], int | None]:
        """Jobs matching ``query``, newest first, from ``offset`` in the (time-filtered) index;
        returns (rows, the offset to continue from or None at the end)."""
        if shape.is_full_id(query):
            exact = await self._b.job(str(query.id_prefix))
            if exact is not None and shape.exact_hit(query, offset, exact):
                return [{"id": str(query.id_prefix), **exact}], None
        hi = "+inf" if query.until_ms is None else str(query.until_ms)
        lo = "-inf" if query.since_ms is None else str(query.since_ms)
        next_offset, *ids = await self._b.run_script(
            "find_jobs",
            hi,
            lo,
            offset,
            limit,
            shape.SCAN_BUDGET,
            query.state or "",
            (query.name or "").lower(),
            query.id_prefix or "",
        )
        rows = await self._rows([i.decode() for i in ids])
        return rows, None if int(next_offset) < 0 else int(next_offset)

    async def _rows(self, ids: list[str]) -> list[dict[str, str]]:
        with self._b.guard():
            pipe = self._r.pipeline(transaction=False)
            for jid in ids:
                pipe.hgetall(self._k("job", jid))
            rows = await pipe.execute()
        return [
            {"id": jid, **{k.decode(): v.decode() for k, v in row.items()}}
            for jid, row in zip(ids, rows, strict=True)
            if row
        ]

    # -- one job ------------------------------------------------------------------------------

    async def tasks(
        self, job_id: str, job: dict[str, str], state: str | None, offset: int, limit: int
    ) -> tuple[int, list[dict[str, Any]]]:
        """(how many tasks match, one page of rows) of a job's per-task table."""
        n = int(job.get("n", "0"))
        total = n + (1 if job.get("reduce") else 0)
        finished = JobState(job["state"]).is_terminal
        if state:
            states = await self._task_states(job_id, state)
            every = [str(i) for i in range(n)] + (["r"] if job.get("reduce") else [])
            shown = (shape.shown_state(states.get(i, "queued"), finished) for i in every)
            indices = [i for i, st in zip(every, shown, strict=True) if st == state]
            total, page = len(indices), indices[offset : offset + limit]
        else:
            page = [str(i) if i < n else "r" for i in range(offset, min(total, offset + limit))]
        if not page:
            return total, []
        with self._b.guard():
            pipe = self._r.pipeline(transaction=False)
            for suffix in ("st", "att", "d", "w", "err"):
                pipe.hmget(self._k("job", job_id, suffix), page)
            st, att, dur, wid, err = await pipe.execute()
        rows = [
            shape.task_row(idx, _s(st[pos]), att[pos], dur[pos], _s(wid[pos]), err[pos], finished)
            for pos, idx in enumerate(page)
        ]
        return total, rows

    async def _task_states(self, job_id: str, state: str) -> dict[str, str]:
        """Stored task states; for error states only the tasks that have an error."""
        with self._b.guard():
            if state in ("failed", "dead", "retrying"):
                keys = await self._r.hkeys(self._k("job", job_id, "err"))
                if not keys:
                    return {}
                values = await self._r.hmget(self._k("job", job_id, "st"), keys)
                return {k.decode(): _s(v) or "queued" for k, v in zip(keys, values, strict=True)}
            raw = await self._r.hgetall(self._k("job", job_id, "st"))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def timeline(self, job_id: str, limit: int) -> list[tuple[str, dict[str, str]]]:
        """The newest ``limit`` events of a job, oldest first."""
        with self._b.guard():
            raw = await self._r.xrevrange(self._k("job", job_id, "ev"), count=limit)
        return expand_all(list(reversed(raw)))[-limit:] if limit > 0 else []

    async def global_events(
        self, after: str, block_ms: int | None, count: int = 1000
    ) -> list[tuple[str, dict[str, str]]]:
        after, _ = resume_point(after)  # an id within an entry of a job's stream: after it
        with self._b.guard():
            reply = await self._r.xread({self._k("events"): after}, count=count, block=block_ms)
        return [(i.decode(), decode(f)) for _stream, entries in reply or [] for i, f in entries]

    async def last_event_id(self) -> str:
        return await self._last_id("events")

    async def job_ends(self, after: str, block_ms: int) -> tuple[str, list[JobEnd]]:
        """``P:ends``: a succeeded job's entry carries its record (``rec``, the job hash as a
        JSON list of names and values) and a small value (``val``), see ``finish_job``."""
        with self._b.guard():
            reply = await self._r.xread({self._k("ends"): after}, count=1000, block=block_ms)
        entries = [entry for _stream, batch in reply or [] for entry in batch]
        if not entries:
            return after, []
        return entries[-1][0].decode(), [_job_end(fields) for _, fields in entries]

    async def last_job_end(self) -> str:
        return await self._last_id("ends")

    async def _last_id(self, stream: str) -> str:
        with self._b.guard():
            raw = await self._r.xrevrange(self._k(stream), count=1)
        return raw[0][0].decode() if raw else "0-0"

    # -- queues -------------------------------------------------------------------------------

    async def queues(self, peek: int) -> dict[str, Any]:
        names = await self.queue_names()
        now = await self._b.server_time()
        now_ms = int(now * 1000)
        _, recent = await self.throughput(SLOT_S, shape.RATE_WINDOW_S)
        span = shape.rate_span(now, shape.RATE_WINDOW_S // SLOT_S + 1)
        unfinished = await self.unfinished()
        out = []
        for name in names:
            depth, heads, peeked = await self._queue_heads(name, peek)
            ready = await self._ready_times([m for m, _ in heads + peeked])
            waits = [now_ms - ready[m] for m, _ in heads + peeked if m in ready]
            rows = await self._peek_rows(peeked, ready, now_ms)
            out.append(shape.queue_row(name, depth, unfinished, recent, span, waits, rows))
        with self._b.guard():
            dead = int(await self._r.zcard(self._k("dlq")))
        return {"queues": out, "dead_letters": dead}

    async def _queue_heads(
        self, name: str, peek: int
    ) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
        """(depth, the oldest entry of each priority band, the first ``peek`` entries)."""
        q = self._k("q", name)
        with self._b.guard():
            pipe = self._r.pipeline(transaction=False)
            pipe.zcard(q)
            pipe.zrange(q, 0, peek - 1, withscores=True)  # peek 0 would mean all: dropped
            for band in range(10):
                lo, hi = band * shape.PRIO_BAND, (band + 1) * shape.PRIO_BAND
                pipe.zrangebyscore(q, lo, f"({hi}", start=0, num=1, withscores=True)
            depth, peeked, *bands = await pipe.execute()
        heads = [(m.decode(), s) for band in bands for m, s in band]
        shown = [(m.decode(), s) for m, s in peeked] if peek > 0 else []
        return int(depth), heads, shown

    async def _ready_times(self, members: list[str]) -> dict[str, int]:
        """When each queued task became ready (ms): its ``:t`` or its job's creation."""
        pairs = [m.partition(":")[::2] for m in members if ":" in m]
        if not pairs:
            return {}
        with self._b.guard():
            pipe = self._r.pipeline(transaction=False)
            for jid, idx in pairs:
                pipe.hget(self._k("job", jid, "t"), idx)
                pipe.hget(self._k("job", jid), "created_at")
            values = await pipe.execute()
        out = {}
        for n, (jid, idx) in enumerate(pairs):
            t, created = values[2 * n], values[2 * n + 1]
            if t or created:
                out[f"{jid}:{idx}"] = int(t or created)
        return out

    async def _peek_rows(
        self, peeked: list[tuple[str, float]], ready: dict[str, int], now_ms: int
    ) -> list[dict[str, Any]]:
        jobs = sorted({m.partition(":")[0] for m, _ in peeked})
        with self._b.guard():
            pipe = self._r.pipeline(transaction=False)
            for jid in jobs:
                pipe.hmget(self._k("job", jid), "name", "task")
            names = dict(zip(jobs, await pipe.execute(), strict=True))
        rows = []
        for member, score in peeked:
            name, task = names.get(member.partition(":")[0]) or (None, None)
            label = _s(name) or _s(task)
            rows.append(shape.peek_row(member, score, ready.get(member), label, now_ms))
        return rows


def _job_end(fields: dict[bytes, bytes]) -> JobEnd:
    job_id = fields[b"job"].decode()
    try:
        pairs = orjson.loads(fields[b"rec"]) if b"rec" in fields else None
    except orjson.JSONDecodeError:  # not text: the waiting request reads the record instead
        return JobEnd(job_id)
    record = dict(zip(pairs[::2], pairs[1::2], strict=True)) if pairs else None
    return JobEnd(job_id, record, fields.get(b"val") if record is not None else None)
