"""A child's async lane, driven directly: which of its tasks count as running."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from typing import Any

import pytest

from sje.worker.child_async import AsyncLane
from sje.worker.task_call import Outcome
from tests.apps.sample_tasks import async_hang, async_square
from tests.support import wait_until

Answers = list[tuple[str, Outcome]]


def lane_with_answers() -> tuple[AsyncLane, Answers]:
    answers: Answers = []
    lane = AsyncLane(lambda header, outcome, _log: answers.append((header["id"], outcome)))
    return lane, answers


def test_a_task_that_ends_before_it_is_recorded_is_not_left_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The loop's thread may finish a short task before ``start`` has recorded it."""
    real = asyncio.run_coroutine_threadsafe

    def ended_first(
        coro: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop
    ) -> concurrent.futures.Future[None]:
        future = real(coro, loop)
        future.result(10)
        return future

    monkeypatch.setattr(asyncio, "run_coroutine_threadsafe", ended_first)
    lane, answers = lane_with_answers()
    lane.start(async_square, {"id": "j:0", "kind": "item"}, b"7")
    assert answers == [("j:0", ({"ok": True}, b"49"))]
    assert lane.running == 0


def test_a_cancelled_task_stops_and_is_not_left_running() -> None:
    lane, answers = lane_with_answers()
    lane.start(async_hang, {"id": "j:1", "kind": "item"}, b"null")
    lane.start(async_square, {"id": "j:2", "kind": "item"}, b"3")
    wait_until(lambda: answers, 10, "the short task's answer")
    assert answers == [("j:2", ({"ok": True}, b"9"))]
    assert lane.running == 1  # the hanging one
    lane.cancel("j:1")
    assert lane.running == 0
    # the loop runs its callbacks in order: once a task started after the cancel has
    # answered, the cancelled one has ended
    lane.start(async_square, {"id": "j:3", "kind": "item"}, b"4")
    wait_until(lambda: len(answers) == 2, 10, "the answer of the task started after the cancel")
    assert [task_id for task_id, _ in answers] == ["j:2", "j:3"], "the cancelled one never answers"
    assert lane.running == 0
