"""SQLite transitions of the scheduler tick (reclaim, promote, terminate, prune, lost workers)
and of operators and registries (requeue, task logs, workers, shared values). Each runs inside
one ``Tx``, with the semantics of the Lua script of the same name in ``lua/``.
"""

from __future__ import annotations

from typing import Any

import orjson

from sje.broker.sqlite_tx import REDUCE, TERMINAL, Tx, index_text
from sje.events import SLOT_S, SLOTS_KEPT

#: rows kept of a job's event stream and of the global one (each cut back in the tick)
JOB_EVENTS_MAX = 10_000
GLOBAL_EVENTS_MAX = 100_000
#: task rows of expired jobs deleted per tick at most (a huge job goes over several ticks)
PRUNE_TASKS = 20_000
_JOBS_CUT_PER_TICK = 10


def reclaim(tx: Tx, max_redeliveries: int, limit: int) -> int:
    """Tasks whose lease ran out go back to the front of their queue; after
    ``max_redeliveries`` such losses a task is dead-lettered (``WorkerLost``)."""
    expired = tx.all(
        "SELECT job, idx, worker FROM leases WHERE deadline <= ? ORDER BY deadline, member LIMIT ?",
        tx.now,
        limit,
    )
    for jid, idx, owner in expired:
        tx.drop_lease(jid, idx)
        job, row = tx.job(jid), tx.task(jid, idx)
        if job is None or job.state in TERMINAL or row is None or row[0] != "running":
            continue
        tx.bump(jid, {"running": -1})
        red, attempts = tx.one(
            "UPDATE tasks SET redeliveries = redeliveries + 1 WHERE job = ? AND idx = ? "
            "RETURNING redeliveries, attempts",
            jid,
            idx,
        )
        if red > max_redeliveries:
            message = (
                f"the worker running this task stopped renewing its lease {red} times (worker "
                f"died or hung); giving up after max-redeliveries={max_redeliveries}"
            )
            error = {"type": "WorkerLost", "attempt": attempts, "message": message}
            tx.fail_task(job, idx, orjson.dumps(error), "dead", None)
        else:
            tx.run("UPDATE tasks SET state = 'queued' WHERE job = ? AND idx = ?", jid, idx)
            tx.bump(jid, {"queued": 1})
            tx.requeue_front(job, idx, "redelivered", owner)
    return len(expired)


def promote(tx: Tx, limit: int) -> int:
    """Retries whose backoff has passed go to the back of their queue."""
    due = tx.all(
        "SELECT job, idx FROM delayed WHERE due <= ? ORDER BY due, member LIMIT ?", tx.now, limit
    )
    for jid, idx in due:
        tx.run("DELETE FROM delayed WHERE job = ? AND idx = ?", jid, idx)
        job, row = tx.job(jid), tx.task(jid, idx)
        if job is None or job.state in TERMINAL or row is None or row[0] != "retrying":
            continue
        tx.run("UPDATE tasks SET state = 'queued' WHERE job = ? AND idx = ?", jid, idx)
        tx.bump(jid, {"retrying": -1, "queued": 1})
        tx.enqueue(job, idx, tx.counter("seq", 1))
        tx.job_event(jid, "task.queued", task=index_text(idx), reason="retry")
    return len(due)


def terminate(tx: Tx, state: str, reason: str, job_ids: list[str]) -> list[str]:
    """End jobs (none given: every job past its deadline, 100 at most) as ``state``; queued
    and delayed tasks are dropped, running ones stop at their next heartbeat. Returns, per
    job, ok | missing | its terminal state."""
    if not job_ids:
        job_ids = [
            row[0]
            for row in tx.all(
                "SELECT id FROM jobs WHERE deadline IS NOT NULL AND deadline <= ? "
                "ORDER BY deadline, id LIMIT 100",
                tx.now,
            )
        ]
    out = []
    for jid in job_ids:
        job = tx.job(jid)
        if job is None:
            tx.run("UPDATE jobs SET deadline = NULL WHERE id = ?", jid)
            out.append("missing")
        elif job.state in TERMINAL:
            out.append(job.state)
        else:
            tx.drop_pending(jid)
            message = reason.replace("{job}", jid).replace(
                "{limit}", job.spec.get("job_timeout", "")
            )
            tx.finish_job(job, state, orjson.dumps({"message": message}))
            out.append("ok")
    return out


def requeue(tx: Tx, entry_id: str, job_id: str) -> tuple[str, str, int]:
    """Reopen the failed job of a dead-letter entry (or ``job_id``): every task of it that
    has not succeeded is queued again (failed and dead ones with fresh attempt counts) and
    their entries leave the dead-letter queue. Returns (status, job id, tasks queued), status
    ok | missing | orphan | expired | <the job's state>."""
    jid = job_id
    if not jid:
        row = tx.one("SELECT entry FROM dead_letters WHERE id = ?", entry_id)
        if row is None:
            return "missing", "", 0
        jid = orjson.loads(row[0]).get("job") or ""
        if not jid:
            return "orphan", "", 0
    job = tx.job(jid)
    if job is None:
        return "expired", jid, 0
    if job.state != "failed":
        return job.state, jid, 0
    (remaining,) = tx.one("SELECT remaining FROM jobs WHERE id = ?", jid)
    indices = list(range(job.n)) + ([REDUCE] if remaining == 0 and job.reduce else [])
    seq = tx.counter("seq", len(indices))
    states = dict(tx.all("SELECT idx, state FROM tasks WHERE job = ?", jid))
    again = [idx for idx in indices if states.get(idx) != "succeeded"]
    keys = [(jid, idx) for idx in again]
    ended = [(jid, idx) for idx in again if states.get(idx) in ("failed", "dead")]
    tx.db.executemany(
        "UPDATE tasks SET attempts = 0, redeliveries = 0 WHERE job = ? AND idx = ?", ended
    )
    tx.db.executemany(
        "DELETE FROM dead_letters WHERE id = ?", [(f"{jid}:{index_text(i)}",) for _, i in ended]
    )
    tx.db.executemany("DELETE FROM leases WHERE job = ? AND idx = ?", keys)
    tx.db.executemany(
        "UPDATE tasks SET state = 'queued', t = ? WHERE job = ? AND idx = ?",
        [(tx.now, jid, idx) for idx in again],
    )
    for n, idx in enumerate(again):
        tx.enqueue(job, idx, seq + n)
    tx.run(
        "UPDATE jobs SET state = 'running', c_queued = ?, c_running = 0, c_retrying = 0, "
        "c_failed = 0, c_dead = 0, c_cancelled = 0, finished_at = NULL, error = NULL, "
        "expires_at = NULL WHERE id = ?",
        len(again),
        jid,
    )
    job.state = "running"
    tx.job_event(jid, "job.requeued", tasks=len(again))
    tx.global_event("job.requeued", job=jid, tasks=len(again))
    return "ok", jid, len(again)


def prune(tx: Tx, limit: int) -> int:
    """Delete up to ``limit`` expired jobs (result-ttl passed) with everything of theirs, at
    most ``PRUNE_TASKS`` tasks per call; cut event streams and throughput slots back to their
    bounds. Returns how many jobs went."""
    gone, budget = 0, PRUNE_TASKS
    expired = tx.all(
        "SELECT id FROM jobs WHERE expires_at IS NOT NULL AND expires_at <= ? "
        "ORDER BY expires_at LIMIT ?",
        tx.now,
        limit,
    )
    for (jid,) in expired:
        if budget <= 0:
            break
        budget -= tx.run(
            "DELETE FROM tasks WHERE rowid IN (SELECT rowid FROM tasks WHERE job = ? LIMIT ?)",
            jid,
            budget,
        )
        if tx.one("SELECT 1 FROM tasks WHERE job = ? LIMIT 1", jid) is None:
            gone += tx.run("DELETE FROM jobs WHERE id = ?", jid)
            tx.drop_outbox(jid)
            tx.forget(jid)
    _cut_job_events(tx)
    over = tx.counter("gev_count") - GLOBAL_EVENTS_MAX
    if over > 0:
        cut = tx.run(
            "DELETE FROM global_events WHERE eid IN "
            "(SELECT eid FROM global_events ORDER BY eid LIMIT ?)",
            min(over, PRUNE_TASKS),
        )
        tx.counter("gev_count", -cut)
    tx.run("DELETE FROM throughput WHERE slot < ?", tx.now // (SLOT_S * 1000) - SLOTS_KEPT)
    return gone


def _cut_job_events(tx: Tx) -> None:
    """Streams of jobs over ~10% past ``JOB_EVENTS_MAX``: each (all events, job-level ones)
    keeps its newest ``JOB_EVENTS_MAX``; a row in neither goes."""
    jobs = tx.all("SELECT id FROM jobs WHERE ev_count > 11000 LIMIT ?", _JOBS_CUT_PER_TICK)
    for (jid,) in jobs:
        for stream in ("ev", "jev"):
            row = tx.one(
                f"SELECT eid FROM job_events WHERE job = ? AND {stream} = 1 "
                "ORDER BY eid DESC LIMIT 1 OFFSET ?",
                jid,
                JOB_EVENTS_MAX,
            )
            if row is not None:
                tx.run(
                    f"UPDATE job_events SET {stream} = 0 "
                    f"WHERE job = ? AND {stream} = 1 AND eid <= ?",
                    jid,
                    row[0],
                )
        tx.run("DELETE FROM job_events WHERE job = ? AND ev = 0 AND jev = 0", jid)
        tx.run(
            "UPDATE jobs SET ev_count = "
            "(SELECT count(*) FROM job_events WHERE job = ? AND ev = 1) WHERE id = ?",
            jid,
            jid,
        )


def mark_lost(tx: Tx, limit: int) -> int:
    """Workers past their liveness deadline are marked lost, once each."""
    due = tx.all(
        "SELECT id FROM workers WHERE due IS NOT NULL AND due <= ? ORDER BY due, id LIMIT ?",
        tx.now,
        limit,
    )
    for (wid,) in due:
        tx.run("UPDATE workers SET due = NULL, lost = ? WHERE id = ?", tx.now, wid)
        tx.global_event("worker.lost", worker=wid)
    return len(due)


def store_log(
    tx: Tx, jid: str, field: tuple[str, int], value: bytes, max_logs: int, max_bytes: int
) -> str:
    """One attempt's log (``field``: task index, attempt), only while the job exists; over
    ``max_logs`` or ``max_bytes`` it is only counted (``dropped``). Returns ok | full |
    missing."""
    row = tx.one(
        "SELECT log_n, log_bytes FROM jobs WHERE id = ? AND (expires_at IS NULL OR expires_at > ?)",
        jid,
        tx.now,
    )
    if row is None:
        return "missing"
    n, used = row
    old = tx.one(
        "SELECT length(value) FROM logs WHERE job = ? AND idx = ? AND attempt = ?", jid, *field
    )
    size = used - (0 if old is None else old[0]) + len(value)
    if (old is None and n >= max_logs) or size > max_bytes:
        tx.run("UPDATE jobs SET log_dropped = log_dropped + 1 WHERE id = ?", jid)
        return "full"
    tx.run(
        "INSERT OR REPLACE INTO logs (job, idx, attempt, value) VALUES (?, ?, ?, ?)",
        jid,
        *field,
        value,
    )
    tx.run(
        "UPDATE jobs SET log_bytes = ?, log_n = log_n + ? WHERE id = ?",
        size,
        int(old is None),
        jid,
    )
    return "ok"


def register_worker(
    tx: Tx, wid: str, info: dict[str, Any], tasks: dict[str, bytes], due_ms: int
) -> None:
    tx.run(
        "INSERT INTO workers (id, info, seen, due) VALUES (?, ?, ?, ?) ON CONFLICT (id) "
        "DO UPDATE SET info = excluded.info, seen = excluded.seen, due = excluded.due, "
        "lost = NULL",
        wid,
        orjson.dumps(info).decode(),
        tx.now,
        tx.now + due_ms,
    )
    tx.db.executemany(
        "INSERT OR REPLACE INTO task_catalog (name, defaults) VALUES (?, ?)", list(tasks.items())
    )
    tx.global_event(
        "worker.joined",
        worker=wid,
        name=info.get("name", ""),
        host=info.get("host", ""),
        pid=info.get("pid", 0),
    )


def deregister_worker(tx: Tx, wid: str, event: bool) -> None:
    tx.run("DELETE FROM workers WHERE id = ?", wid)
    if event:
        tx.global_event("worker.left", worker=wid)


def shared_value(tx: Tx, name: str, candidate: str) -> tuple[str, bool]:
    created = tx.run(
        "INSERT OR IGNORE INTO shared_values (name, value) VALUES (?, ?)", name, candidate
    )
    (value,) = tx.one("SELECT value FROM shared_values WHERE name = ?", name)
    return str(value), created == 1
