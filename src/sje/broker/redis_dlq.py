"""The dead-letter queue on Redis: list, show, requeue and purge (``P:dlq*`` keys).

Entries are written by the Lua scripts (``dlq_add`` in common.lua) when a task fails for good or
a queue entry cannot be run; this module only reads them and acts on operators' requests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from sje.signing import SIG_LEN

if TYPE_CHECKING:
    from sje.broker.redis import RedisBroker

#: how much of a payload ``show`` returns
PEEK_BYTES = 64 * 1024


class RedisDeadLetters:
    def __init__(self, broker: RedisBroker) -> None:
        self._b = broker
        self._zset = broker.key("dlq")
        self._entries = broker.key("dlq", "e")
        self._raw = broker.key("dlq", "raw")

    async def page(self, limit: int, offset: int) -> tuple[int, list[dict[str, Any]]]:
        """(total, entries newest first)."""
        with self._b.guard():
            r = self._b.client
            total = int(await r.zcard(self._zset))
            ids = await r.zrevrange(self._zset, offset, offset + limit - 1) if limit > 0 else []
            rows = await r.hmget(self._entries, ids) if ids else []
        return total, [entry_view(row) for row in rows if row]

    async def entry(self, entry_id: str) -> dict[str, Any] | None:
        """The entry with its payload (or raw queue entry) and its job's current state."""
        with self._b.guard():
            r = self._b.client
            row = await r.hget(self._entries, entry_id)
            if row is None:
                return None
            stored_entry = orjson.loads(row)
            job_id, index = stored_entry.get("job"), stored_entry.get("task")
            if job_id is None:
                return shown_entry(row, await r.hget(self._raw, entry_id), None, None)
            pipe = r.pipeline(transaction=False)
            pipe.hget(self._b.key("job", job_id), "state")
            pipe.hget(self._b.key("job", job_id, "in"), index)
            state, stored = await pipe.execute()
        return shown_entry(row, None, state.decode() if state else None, stored)

    async def requeue(self, entry_id: str, job_id: str = "") -> tuple[str, str, int]:
        """(status, job id, tasks queued); see requeue.lua for the statuses. Given ``job_id``,
        that failed job is requeued whatever its entries."""
        status, jid, queued = await self._b.run_script("requeue", entry_id, job_id)
        return status.decode(), jid.decode(), int(queued)

    async def ids(self) -> list[str]:
        with self._b.guard():
            return [i.decode() for i in await self._b.client.zrange(self._zset, 0, -1)]

    async def purge(self, entry_ids: list[str] | None) -> int:
        """Delete the given entries (None: all); returns how many existed."""
        with self._b.guard():
            r = self._b.client
            if entry_ids is None:
                count = int(await r.zcard(self._zset))
                await r.delete(self._zset, self._entries, self._raw)
                return count
            if not entry_ids:
                return 0
            pipe = r.pipeline(transaction=True)
            pipe.zrem(self._zset, *entry_ids)
            pipe.hdel(self._entries, *entry_ids)
            pipe.hdel(self._raw, *entry_ids)
            removed, _, _ = await pipe.execute()
        return int(removed)


def shown_entry(
    row: bytes | str, raw: bytes | None, job_state: str | None, stored: bytes | None
) -> dict[str, Any]:
    """An entry as ``show`` returns it, on every store: an orphan with its ``raw`` queue
    entry; a task with its job's state (``expired`` when gone) and its signature and payload
    (none for a reduce step, whose input is its job's results)."""
    entry = entry_view(row)
    if entry.get("job") is None:
        entry["raw"] = _printable(raw or b"")
        return entry
    entry["job_state"] = job_state or "expired"
    if entry.get("task") != "r":
        if stored is None:
            entry["payload"] = None
        else:
            entry["signature"] = _printable(stored[:SIG_LEN])
            entry["payload"] = _printable(stored[SIG_LEN:])
    return entry


def entry_view(row: bytes | str) -> dict[str, Any]:
    """A stored entry as the API shows it: ``at`` in epoch seconds, like every other time."""
    entry: dict[str, Any] = orjson.loads(row)
    if isinstance(entry.get("at"), (int, float)):
        entry["at"] = entry["at"] / 1000
    return entry


#: control characters (a terminal would act on them) shown as escapes instead
_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]}


def _printable(data: bytes) -> str:
    """Bytes as safe text for display: UTF-8 where it is, escapes for invalid bytes and control
    characters, cut at PEEK_BYTES."""
    text = data[:PEEK_BYTES].decode("utf-8", errors="backslashreplace").translate(_CONTROLS)
    return text + (f"… ({len(data):,} bytes in all)" if len(data) > PEEK_BYTES else "")
