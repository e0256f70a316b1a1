"""A Redis with AOF on and no eviction: masters and workers start without a durability warning
(the opposite case is in tests/e2e/test_security.py)."""

from __future__ import annotations

from collections.abc import Callable

from tests.support import Proc


def test_a_durable_redis_gets_no_warning(
    master: str, worker: Callable[..., Proc], procs: list[Proc]
) -> None:
    worker("--concurrency", "1")
    assert len(procs) == 2
    for proc in procs:
        assert "Redis at" not in proc.output(), proc.output()
        assert proc.find("SJE ")  # it did start and print its ready line
