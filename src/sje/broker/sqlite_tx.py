"""One open SQLite transaction (``Tx``) and the steps transitions share: events, counters,
finishing and failing jobs, the dead-letter queue. The counterpart of ``lua/common.lua``; the
tables are in ``sqlite_schema.sql``.

A ``Tx`` lives on the broker's database thread between ``BEGIN IMMEDIATE`` (a transition; reads
use a plain ``BEGIN``) and ``COMMIT``: its ``now`` is read once the write lock is held, so
times follow commit order across processes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from sje.events import HISTOGRAM_BOUNDS_MS, SLOT_S

TERMINAL = frozenset(("succeeded", "failed", "cancelled", "timed_out"))
#: the reduce step's index in the tasks table ("r" in task ids)
REDUCE = -1
#: an event id "<ms>-<n>" is stored as ms * EID_SEQ + n
EID_SEQ = 1_000_000
_EID_MAX = 2**63 - 1
DLQ_MAX = 100_000
_SLOT_MS = SLOT_S * 1000
_PRIO_BAND = 10**13
_COUNTERS = ("queued", "running", "retrying", "succeeded", "failed", "dead", "cancelled")
#: a job row that has not expired (bind the current time in ms)
LIVE = "(expires_at IS NULL OR expires_at > ?)"
#: the columns ``job_record`` turns into the job record (the spec last)
JOB_COLUMNS = (
    "state, created_at, started_at, finished_at, error, remaining, c_queued, c_running, "
    "c_retrying, c_succeeded, c_failed, c_dead, c_cancelled, spec"
)
_JOB_NAMES = [name.strip() for name in JOB_COLUMNS.split(",")][:-1]


def job_record(row: Any) -> dict[str, str]:
    """A job row (``JOB_COLUMNS``) as the job hash Redis keeps: every value a string, unset
    ones absent."""
    out: dict[str, str] = orjson.loads(row[-1])
    for name, value in zip(_JOB_NAMES, row[:-1], strict=True):
        if value is not None:
            out[name] = str(value)
    return out


def index_text(idx: int) -> str:
    return "r" if idx == REDUCE else str(idx)


def parse_index(text: str) -> int | None:
    """A task index as stored, from its text ("r" or a number written the canonical way)."""
    if text == "r":
        return REDUCE
    if text.isascii() and text.isdigit() and str(int(text)) == text:
        return int(text)
    return None


def parse_task_id(task_id: str) -> tuple[str, int] | None:
    """(job id, index) of ``<job>:<index>``; None for anything else."""
    jid, sep, idx = task_id.partition(":")
    index = parse_index(idx) if sep and jid else None
    return None if index is None else (jid, index)


def score(priority: int, seq: int) -> int:
    """Queue order: higher priority first, then lower sequence (older) first."""
    return (9 - priority) * _PRIO_BAND + seq


def event_id(eid: int) -> str:
    return f"{eid // EID_SEQ}-{eid % EID_SEQ}"


def parse_event_id(text: str) -> int:
    """The stored form of an event id ``<ms>`` or ``<ms>-<n>`` (as Redis reads it: ``<ms>``
    means ``<ms>-0``); reads return events strictly after it."""
    ms, _, n = text.partition("-")
    n = n.partition("-")[0]  # a Redis backend's id within an entry: its entry's
    try:
        value = int(ms) * EID_SEQ + min(int(n or 0), EID_SEQ - 1)
    except ValueError:
        return 0
    return max(0, min(value, _EID_MAX))


@dataclass(slots=True)
class Job:
    """What transitions need of a job row; ``state`` is kept current by ``Tx``."""

    id: str
    state: str
    queue: str
    priority: int
    n: int
    reduce: str
    task: str
    created_at: int
    result_ttl_ms: int
    spec: dict[str, str]


def _job(jid: str, row: Any) -> Job:
    state, queue, priority, n, reduce, task, created_at, ttl, spec = row
    return Job(jid, state, queue, priority, n, reduce, task, created_at, ttl, orjson.loads(spec))


class Tx:
    """An open transaction: statements, the shared counters (``meta``), and the stats,
    throughput slots and event counts a transition accumulates until ``flush``."""

    def __init__(self, db: sqlite3.Connection, now: int) -> None:
        self.db = db
        self.now = now
        self._meta: dict[str, int] | None = None
        self._dirty: set[str] = set()
        self._jobs: dict[str, Job | None] = {}
        self._stats: dict[str, int] = {}
        self._slots: dict[tuple[int, str], int] = {}
        self._ev_counts: dict[str, int] = {}

    # -- statements -----------------------------------------------------------------------

    def one(self, sql: str, *args: Any) -> Any:
        return self.db.execute(sql, args).fetchone()

    def all(self, sql: str, *args: Any) -> list[Any]:
        return self.db.execute(sql, args).fetchall()

    def run(self, sql: str, *args: Any) -> int:
        return self.db.execute(sql, args).rowcount

    def _meta_values(self) -> dict[str, int]:
        """The rows of ``meta``, read once per transaction."""
        if self._meta is None:
            self._meta = dict(self.all("SELECT name, value FROM meta"))
        return self._meta

    def counter(self, name: str, add: int = 0) -> int:
        """A shared counter of ``meta`` after adding ``add`` (read once per transaction)."""
        meta = self._meta_values()
        if add:
            meta[name] += add
            self._dirty.add(name)
        return meta[name]

    def _set_counter(self, name: str, value: int) -> None:
        self.counter(name, value - self.counter(name))

    def flush(self) -> None:
        """Write what was accumulated; called once, just before COMMIT."""
        if self._meta is not None and self._dirty:
            rows = [(self._meta[name], name) for name in self._dirty]
            self.db.executemany("UPDATE meta SET value = ? WHERE name = ?", rows)
        self.db.executemany(
            "INSERT INTO stats (field, value) VALUES (?, ?) "
            "ON CONFLICT (field) DO UPDATE SET value = value + excluded.value",
            list(self._stats.items()),
        )
        self.db.executemany(
            "INSERT INTO throughput (slot, field, value) VALUES (?, ?, ?) "
            "ON CONFLICT (slot, field) DO UPDATE SET value = value + excluded.value",
            [(slot, field, n) for (slot, field), n in self._slots.items()],
        )
        self.db.executemany(
            "UPDATE jobs SET ev_count = ev_count + ? WHERE id = ?",
            [(n, jid) for jid, n in self._ev_counts.items()],
        )

    # -- jobs and tasks -----------------------------------------------------------------------

    def job(self, jid: str) -> Job | None:
        """The job unless it is missing or expired (cached for the transaction)."""
        if jid not in self._jobs:
            row = self.one(
                "SELECT state, queue, priority, n, reduce, task, created_at, result_ttl_ms, spec "
                f"FROM jobs WHERE id = ? AND {LIVE}",
                jid,
                self.now,
            )
            self._jobs[jid] = None if row is None else _job(jid, row)
        return self._jobs[jid]

    def forget(self, jid: str) -> None:
        self._jobs.pop(jid, None)

    def bump(self, jid: str, deltas: dict[str, int]) -> None:
        """Add to the job's task counters (``c_<state>``)."""
        sets = ", ".join(f"c_{name} = c_{name} + ?" for name in deltas if name in _COUNTERS)
        values = [n for name, n in deltas.items() if name in _COUNTERS]
        self.run(f"UPDATE jobs SET {sets} WHERE id = ?", *values, jid)

    def task(self, jid: str, idx: int) -> Any:
        """(state, attempts, t, worker) of a task, or None."""
        return self.one(
            "SELECT state, attempts, t, worker FROM tasks WHERE job = ? AND idx = ?", jid, idx
        )

    def owner(self, jid: str, idx: int) -> str | None:
        row = self.one("SELECT worker FROM leases WHERE job = ? AND idx = ?", jid, idx)
        return None if row is None else str(row[0])

    def drop_lease(self, jid: str, idx: int) -> None:
        self.run("DELETE FROM leases WHERE job = ? AND idx = ?", jid, idx)

    def enqueue(self, job: Job, idx: int, seq: int) -> None:
        """Into the job's queue at ``seq`` (0: the front of its priority), and the outbox."""
        member = f"{job.id}:{index_text(idx)}"
        self.run(
            "INSERT INTO ready (job, idx, queue, score, member) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (job, idx) DO UPDATE SET score = excluded.score",
            job.id,
            idx,
            job.queue,
            score(job.priority, seq),
            member,
        )
        self.to_outbox([member])

    def to_outbox(self, members: Iterable[str], hold_ms: int = 0) -> None:
        """Tasks that just became ready into the outbox, visible after ``hold_ms``, once the
        relay is on (``enable_relay``: the ``relay`` row of ``meta``); a no-op before."""
        if self._meta_values().get("relay"):
            self.db.executemany(
                "INSERT INTO outbox (member, visible_at) VALUES (?, ?) "
                "ON CONFLICT (member) DO UPDATE SET visible_at = excluded.visible_at",
                ((member, self.now + hold_ms) for member in members),
            )

    def drop_outbox(self, jid: str) -> None:
        """Remove every outbox entry of a job (it ended or went)."""
        if self._meta_values().get("relay"):
            # task ids are "<job>:<index>" and job ids hold no ':' (';' follows ':')
            self.run("DELETE FROM outbox WHERE member >= ? AND member < ?", f"{jid}:", f"{jid};")

    def requeue_front(self, job: Job, idx: int, reason: str, worker: str) -> None:
        """Back to the front of its queue (a release or a redelivery), ready from now."""
        self.enqueue(job, idx, 0)
        self.run("UPDATE tasks SET t = ? WHERE job = ? AND idx = ?", self.now, job.id, idx)
        self.job_event(job.id, "task.queued", task=index_text(idx), reason=reason, worker=worker)

    def drop_pending(self, jid: str) -> None:
        """Remove every not-yet-running task of a job from its queue, the delayed set and the
        outbox."""
        self.run("DELETE FROM ready WHERE job = ?", jid)
        self.run("DELETE FROM delayed WHERE job = ?", jid)
        self.drop_outbox(jid)

    # -- events and counters ------------------------------------------------------------------

    def _next_eid(self) -> int:
        last_ms, last_n = self.counter("ev_ms"), self.counter("ev_n")
        ms = max(self.now, last_ms)
        n = last_n + 1 if ms == last_ms else 0
        if n >= EID_SEQ:
            ms, n = ms + 1, 0
        self._set_counter("ev_ms", ms)
        self._set_counter("ev_n", n)
        return ms * EID_SEQ + n

    def job_event(self, jid: str, etype: str, **fields: Any) -> int:
        """Append to the job's stream (and its job-level one for ``job.*``); returns its id."""
        eid = self._next_eid()
        data = orjson.dumps({"type": etype, **{k: str(v) for k, v in fields.items()}})
        self.run(
            "INSERT INTO job_events (job, eid, fields, jev) VALUES (?, ?, ?, ?)",
            jid,
            eid,
            data,
            int(etype.startswith("job.")),
        )
        self._ev_counts[jid] = self._ev_counts.get(jid, 0) + 1
        return eid

    def global_event(self, etype: str, **fields: Any) -> None:
        data = orjson.dumps({"type": etype, **{k: str(v) for k, v in fields.items()}})
        self.run("INSERT INTO global_events (eid, fields) VALUES (?, ?)", self._next_eid(), data)
        self.counter("gev_count", 1)

    def stat(self, field: str, n: int = 1) -> None:
        self._stats[field] = self._stats.get(field, 0) + n

    def observe(self, kind: str, queue: str, ms: int) -> None:
        """One observation of a histogram (``dur`` or ``wait``) of ``queue``."""
        ms = max(ms, 0)
        label = next((str(b) for b in HISTOGRAM_BOUNDS_MS if ms <= b), "+Inf")
        self.stat(f"{kind}|{queue}|{label}")
        self.stat(f"{kind}_sum|{queue}", ms)

    def count_outcome(self, queue: str, outcome: str) -> None:
        """A task outcome: counted by queue, and in the throughput slot of now (s or f)."""
        self.stat(f"tasks|{queue}|{outcome}")
        key = (self.now // _SLOT_MS, f"{queue}|{'s' if outcome == 'succeeded' else 'f'}")
        self._slots[key] = self._slots.get(key, 0) + 1

    # -- ends of jobs and tasks ------------------------------------------------------------------

    def finish_job(self, job: Job, state: str, err: bytes | None) -> None:
        """A terminal state: unfinished task counts become cancelled, the job gets its TTL."""
        sets = "state = ?, finished_at = ?, error = coalesce(?, error), deadline = NULL"
        if state != "succeeded":
            sets += (
                ", c_cancelled = c_cancelled + c_queued + c_running + c_retrying"
                ", c_queued = 0, c_running = 0, c_retrying = 0"
            )
        self.run(
            f"UPDATE jobs SET {sets}, expires_at = ? WHERE id = ?",
            state,
            self.now,
            None if err is None else err.decode(),
            self.now + job.result_ttl_ms,
            job.id,
        )
        job.state = state
        self.stat(f"jobs|{state}")
        self.job_event(job.id, f"job.{state}", state=state)
        self.global_event(f"job.{state}", job=job.id, state=state)

    def dlq_add(self, entry_id: str, meta: dict[str, Any], err: bytes) -> None:
        """A dead-letter entry (``err`` is JSON, spliced in as it is); the oldest go past
        ``DLQ_MAX``."""
        body = orjson.dumps({**meta, "id": entry_id, "at": self.now})
        entry = body[:-1] + b',"error":' + err + b"}"
        self.run(
            "INSERT INTO dead_letters (id, seq, entry) VALUES (?, ?, ?) ON CONFLICT (id) "
            "DO UPDATE SET seq = excluded.seq, entry = excluded.entry",
            entry_id,
            self.counter("dlq_seq", 1),
            entry,
        )
        over = self.one("SELECT count(*) FROM dead_letters")[0] - DLQ_MAX
        if over > 0:
            self.run(
                "DELETE FROM dead_letters WHERE id IN "
                "(SELECT id FROM dead_letters ORDER BY seq LIMIT ?)",
                over,
            )
        self.global_event("task.dead_lettered", entry=entry_id)

    def fail_task(self, job: Job, idx: int, err: bytes, state: str, dur: int | None) -> None:
        """A task failed for good (``failed``: its code raised on every attempt; ``dead``: it
        could not be run): dead-lettered, and its job fails fast."""
        text = index_text(idx)
        tid = f"{job.id}:{text}"
        self.run(
            "UPDATE tasks SET state = ?, error = ? WHERE job = ? AND idx = ?",
            state,
            err,
            job.id,
            idx,
        )
        self.bump(job.id, {state: 1})
        attempts, worker = self.one(
            "SELECT attempts, worker FROM tasks WHERE job = ? AND idx = ?", job.id, idx
        )
        self.count_outcome(job.queue, state)
        name = job.reduce if idx == REDUCE else job.task
        meta = {"job": job.id, "task": text, "name": name, "queue": job.queue}
        self.dlq_add(tid, {**meta, "state": state, "attempt": attempts}, err)
        fields: dict[str, Any] = {"task": text, "attempt": attempts, "worker": worker or ""}
        if dur is not None:
            fields["duration_ms"] = dur
        self.job_event(job.id, f"task.{state}", **fields)
        self.global_event(f"task.{state}", job=job.id, **fields)
        self.drop_pending(job.id)
        error = {"task": text, "dead_letter": tid, "error": orjson.loads(err)}
        self.finish_job(job, "failed", orjson.dumps(error))
