"""A job's event stream on Redis (``P:job:<id>:ev``) as readers see it: one event per task.

The scripts write the same event of several tasks of one batch (``task.started`` of a fetch,
``task.succeeded`` of a store) as one entry, ``n`` tasks with the fields named in ``each``
holding ``n`` values joined by ``,`` and the others (``worker``) shared; see ``task_events``
in ``lua/common.lua``. A batch of 64 tasks then costs one ``XADD`` instead of 64, which is
most of a fetch's and a store's Redis time per task.

Every reader expands such an entry into its ``n`` events, in order, each with the fields an
entry of its own would have had. The ``j``-th of them (from 0) has the id ``<entry id>-<j>``,
so ids still sort as tuples of numbers, and a client resuming after any of them
(``Last-Event-ID``) gets exactly the ones that follow.
"""

from __future__ import annotations

from typing import Any

Event = tuple[str, dict[str, str]]

_META = ("n", "each")


def decode(fields: dict[Any, Any]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in fields.items()}


def expand(entry_id: str, fields: dict[str, str]) -> list[Event]:
    """The events of one stored entry (itself, unless it holds several tasks)."""
    if "n" not in fields:
        return [(entry_id, fields)]
    n = int(fields["n"])
    each = set(fields["each"].split(","))
    lists = {k: fields[k].split(",") for k in each}
    out = []
    for j in range(n):
        event = {k: (lists[k][j] if k in each else v) for k, v in fields.items() if k not in _META}
        out.append((f"{entry_id}-{j}", event))
    return out


def expand_all(entries: list[tuple[Any, dict[Any, Any]]]) -> list[Event]:
    """Raw ``XRANGE``/``XREAD`` entries (bytes), oldest first, as events."""
    out: list[Event] = []
    for entry_id, fields in entries:
        out.extend(expand(entry_id.decode(), decode(fields)))
    return out


def resume_point(after: str) -> tuple[str, int]:
    """Where a read after the event id ``after`` starts: after the entry id returned, or, when
    the count returned is not 0, within that entry, skipping that many of its events."""
    parts = after.split("-")
    if len(parts) == 3:
        return f"{parts[0]}-{parts[1]}", int(parts[2]) + 1
    return after, 0
