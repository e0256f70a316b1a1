"""SQLite transitions of the relay (``RelayStore`` in ``sje.broker.base``): the outbox of tasks
that became ready, for another transport to publish, and ``start``, which leases the tasks a
delivery names. Each runs inside one ``Tx``; the outbox is filled by ``Tx.to_outbox`` in the
transitions that make tasks ready, once ``enable`` has set the ``relay`` row of ``meta``.
"""

from __future__ import annotations

from sje.broker.sqlite_ops import start_task
from sje.broker.sqlite_tx import TERMINAL, Tx, parse_task_id
from sje.models import TaskMessage


def enable(tx: Tx) -> None:
    """Fill the outbox from now on (idempotent)."""
    tx.run(
        "INSERT INTO meta (name, value) VALUES ('relay', 1) "
        "ON CONFLICT (name) DO UPDATE SET value = 1"
    )


def claim(tx: Tx, n: int, hold_ms: int) -> list[tuple[str, str, int]]:
    """Up to ``n`` visible entries as (task id, queue, priority), each hidden for ``hold_ms``;
    entries whose task is no longer ready (or whose job ended or went) are deleted instead."""
    out: list[tuple[str, str, int]] = []
    seen: set[str] = set()
    after: tuple[int, str] = (-1, "")
    while len(out) < n:
        # in (visible_at, member) order from after the last row read: a row claimed with no
        # hold stays visible and is met again, ``seen`` skips it
        rows = tx.all(
            "SELECT visible_at, member FROM outbox WHERE visible_at <= ? "
            "AND (visible_at, member) > (?, ?) ORDER BY visible_at, member LIMIT ?",
            tx.now,
            *after,
            n - len(out),
        )
        if not rows:
            break
        after = rows[-1]
        for _, member in rows:
            if member in seen:
                continue
            seen.add(member)
            entry = _entry(tx, member)
            if entry is None:
                tx.run("DELETE FROM outbox WHERE member = ?", member)
            else:
                tx.run(
                    "UPDATE outbox SET visible_at = ? WHERE member = ?", tx.now + hold_ms, member
                )
                out.append(entry)
    return out


def _entry(tx: Tx, member: str) -> tuple[str, str, int] | None:
    """(task id, queue, priority) of a task that is ready in a job still running, else None."""
    parsed = parse_task_id(member)
    if parsed is None or tx.one("SELECT 1 FROM ready WHERE job = ? AND idx = ?", *parsed) is None:
        return None
    job = tx.job(parsed[0])
    if job is None or job.state in TERMINAL:
        return None
    return member, job.queue, int(job.priority)


def settle(tx: Tx, task_ids: list[str]) -> None:
    """Remove published entries: the ones still hidden (claimed, or held since their submit).
    An entry visible again was put back by a transition since (the task became ready anew)
    or outlived its claim: it stays, to be published (again)."""
    tx.db.executemany(
        "DELETE FROM outbox WHERE member = ? AND visible_at > ?",
        [(member, tx.now) for member in task_ids],
    )


def start(tx: Tx, wid: str, task_ids: list[str], lease_ms: int) -> list[TaskMessage]:
    """Lease to ``wid`` the named tasks that are ready, as ``fetch`` does (in the order
    given); the others (running, done, retrying, of an ended or unknown job, malformed, or
    named twice) are skipped."""
    out: list[TaskMessage] = []
    for member in task_ids:
        parsed = parse_task_id(member)
        if parsed is None:
            continue
        jid, idx = parsed
        if not tx.run("DELETE FROM ready WHERE job = ? AND idx = ?", jid, idx):
            continue
        job = tx.job(jid)
        if job is not None and job.state not in TERMINAL:
            out.append(start_task(tx, job, idx, member, wid, lease_ms))
    return out
