"""Map stored per-task results back to input order (shared by the API and reduce steps)."""

from __future__ import annotations

import orjson


def flatten(
    values: list[bytes | None], chunk_size: int, first_task: int, start: int, stop: int
) -> list[bytes]:
    """JSON values for inputs ``start:stop`` from task results starting at task ``first_task``.

    Without chunking each task holds one input's result; with ``chunk_size`` each holds a JSON
    list for ``chunk_size`` consecutive inputs. A missing result is ``null``.
    """
    if not chunk_size:
        return [v or b"null" for v in values]
    out: list[bytes] = []
    for number, chunk in enumerate(values, first_task):
        items = orjson.loads(chunk) if chunk else [None] * chunk_size
        for i, item in enumerate(items, number * chunk_size):
            if start <= i < stop:
                out.append(orjson.dumps(item))
    return out


def task_range(chunk_size: int, start: int, stop: int) -> tuple[int, int]:
    """The task indexes ``[first, last)`` that hold inputs ``start:stop``."""
    if not chunk_size:
        return start, stop
    return start // chunk_size, (stop - 1) // chunk_size + 1
