"""``sje.events`` lists every event the code emits, and event views are what the API returns."""

from __future__ import annotations

import re

from sje import events
from tests.support import ROOT

SRC = ROOT / "src" / "sje"


def emitted_types() -> set[str]:
    """Event types written by the Lua scripts (``job_event``, ``task_events``, ...) and by Python
    (``_event(pipe, "type", ...)``)."""
    lua_literal = re.compile(r"_events?\((?:[^,()']*,\s*)?'((?:job|task|worker)\.[a-z_]+)'")
    # types built from a state: 'job.' .. state / 'task.' .. state
    lua_built = re.compile(r"_event\((?:[^,()']*,\s*)?'(job|task)\.' \.\. ")
    python = re.compile(r'_event\(\s*pipe,\s*"((?:job|task|worker)\.[a-z_]+)"')
    found: set[str] = set()
    for path in (SRC / "broker" / "lua").glob("*.lua"):
        text = path.read_text()
        found.update(lua_literal.findall(text))
        found.update(f"{prefix}.*" for prefix in lua_built.findall(text))
    for path in SRC.rglob("*.py"):
        found.update(python.findall(path.read_text()))
    return found


def test_every_emitted_event_type_is_listed() -> None:
    listed = set(events.ALL_EVENTS)
    emitted = emitted_types()
    concrete = {t for t in emitted if not t.endswith(".*")}
    assert concrete, "the scan found the emitting code"
    assert concrete - listed == set(), "emitted but not listed in sje.events"
    # 'job.' .. state covers the final states, 'task.' .. state the failed and dead ones
    assert {"job.*", "task.*"} <= emitted
    assert set(events.JOB_FINISHED.values()) <= listed
    assert {events.TASK_FAILED, events.TASK_DEAD} <= listed


def test_every_listed_type_is_emitted_somewhere() -> None:
    emitted = emitted_types()
    derived = {*events.JOB_FINISHED.values(), events.TASK_FAILED, events.TASK_DEAD}
    synthesized = {events.JOB_PROGRESS, events.STREAM_ERROR}  # sent by event streams, never stored
    missing = set(events.ALL_EVENTS) - emitted - derived - synthesized
    assert missing == set(), "listed in sje.events but emitted nowhere"


def test_event_view_gives_time_from_the_id_and_numbers_as_numbers() -> None:
    view = events.event_view(
        "1712345678901-3",
        {"type": "task.succeeded", "task": "7", "attempt": "2", "duration_ms": "15", "worker": "w"},
        "job1",
    )
    assert view == {
        "id": "1712345678901-3",
        "at": 1712345678.901,
        "job": "job1",
        "type": "task.succeeded",
        "task": "7",  # task indexes stay strings ('r' is the reduce step)
        "attempt": 2,
        "duration_ms": 15,
        "worker": "w",
    }
