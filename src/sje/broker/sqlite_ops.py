"""The SQLite transitions: each runs inside one ``Tx`` (``BEGIN IMMEDIATE`` … ``COMMIT``) on
the broker's database thread, with the semantics of the Lua script of the same name in
``lua/`` (statuses, counters, events, dead-letter entries).
"""

from __future__ import annotations

from typing import Any

import orjson

from sje.broker.base import SUBMIT_HOLD_S, NewJob, SubmitOutcome
from sje.broker.sqlite_tx import (
    REDUCE,
    TERMINAL,
    Job,
    Tx,
    index_text,
    parse_task_id,
    score,
)
from sje.models import TaskMessage

_DONE = ("succeeded", "failed", "dead")
_HEARTBEAT_EVENT_MS = 30_000


def submit(tx: Tx, job: NewJob) -> SubmitOutcome:
    """Store a job whole, or answer why not (duplicate, conflict, full)."""
    if job.idempotency_key:
        row = tx.one(
            "SELECT i.job, i.hash FROM idempotency i JOIN jobs j ON j.id = i.job "
            "WHERE i.key = ? AND (j.expires_at IS NULL OR j.expires_at > ?)",
            job.idempotency_key,
            tx.now,
        )
        if row is not None:
            same = row[1] == job.idempotency_hash
            return SubmitOutcome("duplicate" if same else "conflict", row[0])
    # a retried call whose first run landed (its reply was lost): same answer
    if tx.job(job.id) is not None:
        return SubmitOutcome("ok", job.id)
    if tx.run("DELETE FROM jobs WHERE id = ?", job.id):  # an expired record of the same id
        tx.drop_outbox(job.id)
    n = len(job.payloads)
    row = tx.one("SELECT depth FROM queues WHERE name = ?", job.queue)
    depth = 0 if row is None else int(row[0])
    if depth + n > job.max_queue_length:
        return SubmitOutcome("full", job.id, depth=depth)
    _insert_job(tx, job, n)
    return SubmitOutcome("ok", job.id)


def _insert_job(tx: Tx, job: NewJob, n: int) -> None:
    f = job.fields
    timeout_ms = int((job.job_timeout_s or 0) * 1000)
    tx.run(
        "INSERT INTO jobs (id, spec, name, task, reduce, queue, priority, n, result_ttl_ms, idem, "
        "state, created_at, remaining, c_queued, deadline) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?)",
        job.id,
        orjson.dumps(f).decode(),
        f.get("name", ""),
        f.get("task", ""),
        f.get("reduce", ""),
        job.queue,
        job.priority,
        n,
        int(f.get("result_ttl_ms") or 0),
        f.get("idem", ""),
        tx.now,
        n,
        n,
        tx.now + timeout_ms if timeout_ms > 0 else None,
    )
    tasks: list[tuple[str, int, bytes | None]] = [
        (job.id, i, payload) for i, payload in enumerate(job.payloads)
    ]
    if f.get("reduce"):
        tasks.append((job.id, REDUCE, None))
    tx.db.executemany("INSERT INTO tasks (job, idx, input) VALUES (?, ?, ?)", tasks)
    tx.run("INSERT OR IGNORE INTO queues (name) VALUES (?)", job.queue)
    seq = tx.counter("seq", n) - n
    tx.db.executemany(
        "INSERT INTO ready (job, idx, queue, score, member) VALUES (?, ?, ?, ?, ?)",
        [(job.id, i, job.queue, score(job.priority, seq + i), f"{job.id}:{i}") for i in range(n)],
    )
    # the submitter publishes a relayed job itself: its entries are for when it dies first
    tx.to_outbox((f"{job.id}:{i}" for i in range(n)), int(SUBMIT_HOLD_S * 1000))
    tx.stat("jobs|submitted")
    if job.idempotency_key:
        tx.run(
            "INSERT OR REPLACE INTO idempotency (key, job, hash) VALUES (?, ?, ?)",
            job.idempotency_key,
            job.id,
            job.idempotency_hash,
        )
    tx.job_event(job.id, "job.submitted", tasks=n)
    tx.global_event("job.submitted", job=job.id, tasks=n)


# -- delivery -----------------------------------------------------------------------------------


def fetch(tx: Tx, wid: str, lease_ms: int, n: int, queues: list[str]) -> list[TaskMessage]:
    """Pop up to ``n`` tasks (queues in the order given, each by priority then age) and lease
    each to ``wid``; tasks of finished jobs are skipped."""
    out: list[TaskMessage] = []
    for queue in queues:
        while len(out) < n:
            rows = tx.all(
                "SELECT job, idx, member FROM ready WHERE queue = ? ORDER BY score, member LIMIT ?",
                queue,
                n - len(out),
            )
            if not rows:
                break
            tx.db.executemany(
                "DELETE FROM ready WHERE job = ? AND idx = ?", [(j, i) for j, i, _ in rows]
            )
            for jid, idx, member in rows:
                job = tx.job(jid)
                if job is not None and job.state not in TERMINAL:
                    out.append(start_task(tx, job, idx, member, wid, lease_ms))
        if len(out) >= n:
            break
    return out


def start_task(tx: Tx, job: Job, idx: int, member: str, wid: str, lease_ms: int) -> TaskMessage:
    attempts, t, payload = tx.one(
        "SELECT attempts, t, input FROM tasks WHERE job = ? AND idx = ?", job.id, idx
    )
    attempt = attempts + 1
    wait = max(0, tx.now - (job.created_at if t is None else t))
    tx.run(
        "UPDATE tasks SET state = 'running', attempts = ?, t = ?, worker = ? "
        "WHERE job = ? AND idx = ?",
        attempt,
        tx.now,
        wid,
        job.id,
        idx,
    )
    tx.observe("wait", job.queue, wait)
    tx.run(
        "INSERT INTO leases (job, idx, worker, deadline, member) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (job, idx) DO UPDATE SET worker = excluded.worker, "
        "deadline = excluded.deadline",
        job.id,
        idx,
        wid,
        tx.now + lease_ms,
        member,
    )
    tx.bump(job.id, {"queued": -1, "running": 1})
    if job.state == "pending":
        tx.run("UPDATE jobs SET state = 'running', started_at = ? WHERE id = ?", tx.now, job.id)
        job.state = "running"
        tx.job_event(job.id, "job.started")
        tx.global_event("job.started", job=job.id)
    spec = job.spec
    task, kind = job.task, spec.get("kind", "")
    if idx == REDUCE:
        task, kind, payload = job.reduce, "reduce", spec.get("sig_r", "").encode()
    header = [task, kind, attempt, *(spec.get(k, "") for k in _HEADER)]
    tx.job_event(
        job.id, "task.started", task=index_text(idx), attempt=attempt, worker=wid, wait_ms=wait
    )
    return TaskMessage.parse(member.encode(), orjson.dumps(header), payload or b"")


_HEADER = ("retries", "backoff", "backoff_max", "timeout")


def complete(tx: Tx, member: str, wid: str, result: bytes) -> str:
    """Store a result once (first success wins), then finish the job or queue its reduce
    step when it was the last task. Returns ok | duplicate | stale."""
    parsed = parse_task_id(member)
    if parsed is None:
        return "stale"
    jid, idx = parsed
    job, row = tx.job(jid), tx.task(jid, idx)
    if job is None or job.state in TERMINAL or row is None:
        status = "stale"
    else:
        status = "duplicate" if row[0] in _DONE else "ok"
    if job is None or row is None or status != "ok":
        if tx.owner(jid, idx) == wid:
            tx.drop_lease(jid, idx)
        return status
    _store_result(tx, job, idx, row, wid, result)
    if idx == REDUCE:
        tx.finish_job(job, "succeeded", None)
        return "ok"
    (remaining,) = tx.one(
        "UPDATE jobs SET remaining = remaining - 1 WHERE id = ? RETURNING remaining", jid
    )
    if remaining == 0 and job.reduce:
        tx.run("UPDATE tasks SET state = 'queued' WHERE job = ? AND idx = ?", jid, REDUCE)
        tx.bump(jid, {"queued": 1})
        tx.requeue_front(job, REDUCE, "reduce", "")
        tx.job_event(jid, "job.reducing")
    elif remaining == 0:
        tx.finish_job(job, "succeeded", None)
    return "ok"


def _store_result(tx: Tx, job: Job, idx: int, row: Any, wid: str, result: bytes) -> None:
    prev, attempts, t, _ = row
    tx.drop_lease(job.id, idx)
    if prev == "queued":
        tx.run("DELETE FROM ready WHERE job = ? AND idx = ?", job.id, idx)
    elif prev == "retrying":
        tx.run("DELETE FROM delayed WHERE job = ? AND idx = ?", job.id, idx)
    tx.bump(job.id, {prev: -1, "succeeded": 1})
    dur = -1 if t is None else tx.now - t
    tx.run(
        "UPDATE tasks SET state = 'succeeded', result = ?, duration = coalesce(?, duration) "
        "WHERE job = ? AND idx = ?",
        result,
        dur if dur >= 0 else None,
        job.id,
        idx,
    )
    if dur >= 0:
        tx.observe("dur", job.queue, dur)
    tx.count_outcome(job.queue, "succeeded")
    fields = {"task": index_text(idx), "attempt": attempts, "worker": wid}
    tx.job_event(job.id, "task.succeeded", **fields, duration_ms=max(dur, 0))


def fail(tx: Tx, member: str, wid: str, err: bytes, delay_ms: int, final: str) -> str:
    """A failed attempt: a retry after ``delay_ms`` (negative: none left) or the task ends
    ``final`` (failed or dead). Returns retry | <final> | stale."""
    parsed = parse_task_id(member)
    if parsed is None:
        return "stale"
    jid, idx = parsed
    job, owner, row = tx.job(jid), tx.owner(jid, idx), tx.task(jid, idx)
    if job is None or job.state in TERMINAL:
        if owner == wid:
            tx.drop_lease(jid, idx)
        return "stale"
    if owner != wid or row is None or row[0] != "running":
        return "stale"
    _, attempts, t, _ = row
    tx.drop_lease(jid, idx)
    tx.bump(jid, {"running": -1})
    dur = 0 if t is None else max(tx.now - t, 0)
    tx.run("UPDATE tasks SET duration = ? WHERE job = ? AND idx = ?", dur, jid, idx)
    tx.observe("dur", job.queue, dur)
    if delay_ms < 0:
        tx.fail_task(job, idx, err, final, dur)
        return final
    tx.run(
        "UPDATE tasks SET error = ?, state = 'retrying', t = ? WHERE job = ? AND idx = ?",
        err,
        tx.now + delay_ms,
        jid,
        idx,
    )
    tx.bump(jid, {"retrying": 1})
    tx.run(
        "INSERT INTO delayed (job, idx, due, member) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (job, idx) DO UPDATE SET due = excluded.due",
        jid,
        idx,
        tx.now + delay_ms,
        member,
    )
    tx.stat(f"tasks|{job.queue}|retried")
    fields: dict[str, Any] = {"task": index_text(idx), "attempt": attempts, "worker": wid}
    fields.update(duration_ms=dur, delay_ms=delay_ms)
    tx.job_event(jid, "task.retrying", **fields)
    tx.global_event("task.retrying", job=jid, **fields)
    return "retry"


def renew(
    tx: Tx, wid: str, lease_ms: int, due_ms: int, busy: int, stats: str, task_ids: list[str]
) -> list[str]:
    """Heartbeat: the worker is alive (lost after ``due_ms``), its stats stored, its leases
    extended; returns the ids it no longer owns."""
    before = tx.one("SELECT lost, hb FROM workers WHERE id = ?", wid)
    tx.run(
        "INSERT INTO workers (id, seen, due) VALUES (?, ?, ?) ON CONFLICT (id) "
        "DO UPDATE SET seen = excluded.seen, due = excluded.due, lost = NULL",
        wid,
        tx.now,
        tx.now + due_ms,
    )
    if stats:
        tx.run("UPDATE workers SET stats = ? WHERE id = ?", stats, wid)
    if before is not None and before[0] is not None:
        tx.global_event("worker.back", worker=wid)
    # a heartbeat event at most every 30 s per worker, so that many workers cannot push job
    # events out of the bounded global stream
    last = 0 if before is None or before[1] is None else int(before[1])
    if tx.now - last >= _HEARTBEAT_EVENT_MS:
        tx.run("UPDATE workers SET hb = ? WHERE id = ?", tx.now, wid)
        tx.global_event("worker.heartbeat", worker=wid, busy=busy)
    lost = []
    for member in task_ids:
        parsed = parse_task_id(member)
        job = None if parsed is None else tx.job(parsed[0])
        owner = None if parsed is None else tx.owner(*parsed)
        if parsed is not None and owner == wid and job is not None and job.state not in TERMINAL:
            tx.run(
                "UPDATE leases SET deadline = ? WHERE job = ? AND idx = ?",
                tx.now + lease_ms,
                *parsed,
            )
            continue
        if parsed is not None and owner == wid:
            tx.drop_lease(*parsed)
        lost.append(member)
    return lost


def release(tx: Tx, wid: str, task_ids: list[str]) -> int:
    """Leased tasks handed back to the front of their queue; the attempt does not count."""
    n = 0
    for member in task_ids:
        parsed = parse_task_id(member)
        if parsed is None or tx.owner(*parsed) != wid:
            continue
        jid, idx = parsed
        tx.drop_lease(jid, idx)
        job, row = tx.job(jid), tx.task(jid, idx)
        if job is None or job.state in TERMINAL or row is None or row[0] != "running":
            continue
        tx.run(
            "UPDATE tasks SET state = 'queued', attempts = attempts - 1 WHERE job = ? AND idx = ?",
            jid,
            idx,
        )
        tx.bump(jid, {"running": -1, "queued": 1})
        tx.requeue_front(job, idx, "released", wid)
        n += 1
    return n
