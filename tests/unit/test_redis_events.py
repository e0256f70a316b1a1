"""How an entry of a job's Redis stream that holds the same event of several tasks is read."""

from __future__ import annotations

from sje.broker.redis_events import expand, expand_all, resume_point


def test_an_entry_of_several_tasks_is_one_event_per_task_with_its_own_id() -> None:
    fields = {
        "type": "task.started",
        "n": "3",
        "each": "task,attempt,wait_ms",
        "task": "4,5,r",
        "attempt": "1,2,1",
        "worker": "host-1,a-5f2e1c",  # shared, and may hold a comma
        "wait_ms": "0,17,3",
    }
    assert expand("1712345678901-2", fields) == [
        (
            "1712345678901-2-0",
            {
                "type": "task.started",
                "task": "4",
                "attempt": "1",
                "worker": "host-1,a-5f2e1c",
                "wait_ms": "0",
            },
        ),
        (
            "1712345678901-2-1",
            {
                "type": "task.started",
                "task": "5",
                "attempt": "2",
                "worker": "host-1,a-5f2e1c",
                "wait_ms": "17",
            },
        ),
        (
            "1712345678901-2-2",
            {
                "type": "task.started",
                "task": "r",
                "attempt": "1",
                "worker": "host-1,a-5f2e1c",
                "wait_ms": "3",
            },
        ),
    ]


def test_an_entry_of_one_event_is_read_as_it_is() -> None:
    raw = [(b"5-0", {b"type": b"task.queued", b"task": b"0", b"reason": b"retry"})]
    assert expand_all(raw) == [("5-0", {"type": "task.queued", "task": "0", "reason": "retry"})]


def test_a_read_resumes_within_an_entry_after_one_of_its_events() -> None:
    assert resume_point("0") == ("0", 0)
    assert resume_point("1712345678901-2") == ("1712345678901-2", 0)
    assert resume_point("1712345678901-2-0") == ("1712345678901-2", 1)
    assert resume_point("1712345678901-2-2") == ("1712345678901-2", 3)
