"""Redis broker: task queue, scheduler and job store in one server.

Layout (``P`` is the key prefix, one per deployment or test):

- ``P:q:<queue>`` sorted set of ready task ids, scored by priority then sequence
- ``P:delayed`` retries waiting for their backoff; ``P:leases`` + ``P:owner`` running tasks
- ``P:job:<id>`` job hash (options, state, counters) and ``:in :st :att :red :res :err :ev``
- ``P:jobs`` index, ``P:deadlines`` job timeouts, ``P:idem:<key>`` idempotency keys
- ``P:workers`` / ``P:seen`` worker registry and heartbeats, ``P:tasks`` task catalog

Every multi-step state change is one Lua script (``lua/``), so two masters and any number of
workers can act at once without races. Leases are measured on the Redis clock.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sje.broker.base import SUBMIT_HOLD_S, NewJob, SubmitOutcome
from sje.broker.redis_dlq import RedisDeadLetters
from sje.broker.redis_events import expand_all, resume_point
from sje.broker.redis_logs import RedisTaskLogs
from sje.broker.redis_views import RedisViews
from sje.errors import BrokerError
from sje.models import TaskMessage, dumps
from sje.tasks import TaskDefaults

_SCRIPTS = (
    "submit",
    "fetch",
    "complete",
    "complete_fetch",
    "fail",
    "renew",
    "release",
    "reclaim",
    "promote",
    "terminate",
    "requeue",
    "prune",
    "log",
    "lost",
    "unfinished",
    "throughput",
    "find_jobs",
    "start",
    "outbox",
    "settle",
)
_USES_TASKS = ("fetch", "complete", "complete_fetch", "start")
_WORKER_FORGET_S = 3600.0
EVENTS_PAGE = 1000
#: a job of at most this many tasks goes to Redis in one call (its inputs with the submit
#: script); a larger one is written 1,000 inputs per command first
_INLINE_INPUTS = 1000
GLOBAL_EVENTS_MAXLEN = 100_000
#: a Redis that does not answer within this many seconds is treated as unreachable
SOCKET_TIMEOUT_S = 30.0


def _lua(name: str) -> str:
    return (resources.files("sje.broker") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def _address(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}"


class RedisBroker:
    """Implements ``TaskQueue``, ``Scheduler`` and ``JobStore`` on one Redis connection pool.

    Safe for concurrent use from one event loop. Redis failures surface as ``BrokerError``
    naming the address and what to do.
    """

    def __init__(self, url: str, prefix: str = "sje", timeout_s: float = SOCKET_TIMEOUT_S) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout_s = timeout_s
        # typed Any: redis-py annotates replies as bytes | str unions; we never decode, so
        # every reply here is bytes
        self.client: Any = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=5,
            # longer than any blocking read we issue (5 s), so only a hung server trips it
            socket_timeout=timeout_s,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        common, tasks = _lua("common"), _lua("tasks")
        self._scripts: dict[str, AsyncScript] = {
            name: self.client.register_script(
                "\n".join((common, tasks if name in _USES_TASKS else "", _lua(name)))
            )
            for name in _SCRIPTS
        }
        self.dlq = RedisDeadLetters(self)
        self.logs = RedisTaskLogs(self)
        self.views = RedisViews(self)

    # -- plumbing -------------------------------------------------------------------------

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            if isinstance(exc, RedisTimeoutError):
                raise BrokerError(
                    f"Redis at {_address(self.url)} did not answer within {self.timeout_s:g}s "
                    "(hung, overloaded, or the network drops packets); check the server."
                ) from exc
            if "Too many connections" in str(exc):
                raise BrokerError(
                    f"Redis at {_address(self.url)} is up, but this process has every connection "
                    "of its pool in use; make fewer calls at once."
                ) from exc
            raise BrokerError(
                f"Cannot reach Redis at {_address(self.url)} ({exc}). Start it (redis-server) "
                "or point SJE_BROKER_URL / broker-url at a running Redis."
            ) from exc
        except RedisError as exc:
            raise BrokerError(f"Redis at {_address(self.url)} failed: {exc}") from exc

    async def run_script(self, script: str, *args: Any) -> Any:
        with self.guard():
            return await self._scripts[script](keys=[], args=[self.prefix, *args])

    async def ping(self) -> None:
        with self.guard():
            await self.client.ping()

    async def server_time(self) -> float:
        with self.guard():
            seconds, micros = await self.client.time()
        return float(seconds) + float(micros) / 1e6

    async def close(self) -> None:
        await self.client.aclose()

    async def shared_value(self, name: str, candidate: str) -> tuple[str, bool]:
        """A deployment-wide value (``token``, ``secret``) kept in ``P:auth``: the stored one,
        or ``candidate`` stored now when there was none. Returns (value, created)."""
        with self.guard():
            pipe = self.client.pipeline(transaction=True)
            pipe.hsetnx(self.key("auth"), name, candidate)
            pipe.hget(self.key("auth"), name)
            created, value = await pipe.execute()
        return value.decode(), bool(created)

    async def durability_warnings(self) -> list[str]:
        """What about this Redis could lose accepted work (empty when nothing)."""
        where = f"Redis at {_address(self.url)}"
        try:
            with self.guard():
                pipe = self.client.pipeline(transaction=False)
                for name in ("appendonly", "maxmemory-policy", "maxmemory"):
                    pipe.config_get(name)
                aof, policy, maxmemory = await pipe.execute()
        except BrokerError as exc:
            return [
                f"could not check {where} for persistence ({exc}); make sure it runs with "
                "appendonly yes and maxmemory-policy noeviction"
            ]
        return durability_problems(where, aof, policy, maxmemory)

    # -- TaskQueue --------------------------------------------------------------------------

    async def fetch(
        self, worker_id: str, queues: list[str], n: int, lease_s: float
    ) -> list[TaskMessage]:
        raw = await self.run_script("fetch", worker_id, int(lease_s * 1000), n, *queues)
        return _messages(raw)

    async def complete_many(
        self,
        worker_id: str,
        done: list[tuple[str, bytes]],
        n: int,
        queues: list[str],
        lease_s: float,
    ) -> tuple[list[str], list[TaskMessage]]:
        """``complete`` each of ``done``, then ``fetch`` of ``n`` tasks, in one round trip."""
        pairs = [part for item in done for part in item]
        raw = await self.run_script(
            "complete_fetch", worker_id, int(lease_s * 1000), n, len(done), *pairs, *queues
        )
        k = len(done)
        return [status.decode() for status in raw[:k]], _messages(raw[k:])

    async def wait_for_work(self, queues: list[str], timeout_s: float) -> None:
        with self.guard():
            await self.client.blpop([self.key("wake", q) for q in queues], timeout=timeout_s)

    async def complete(self, task_id: str, worker_id: str, result: bytes) -> str:
        status: bytes = await self.run_script("complete", task_id, worker_id, result)
        return status.decode()

    async def fail(
        self, task_id: str, worker_id: str, error: dict[str, Any], retry_in_s: float | None
    ) -> str:
        delay = -1 if retry_in_s is None else int(retry_in_s * 1000)
        status: bytes = await self.run_script(
            "fail", task_id, worker_id, dumps(error), delay, "failed"
        )
        return status.decode()

    async def dead_letter(self, task_id: str, worker_id: str, error: dict[str, Any]) -> str:
        status: bytes = await self.run_script("fail", task_id, worker_id, dumps(error), -1, "dead")
        return status.decode()

    async def renew(
        self,
        worker_id: str,
        task_ids: list[str],
        lease_s: float,
        stats: dict[str, Any] | None = None,
        due_s: float = 10.0,
    ) -> list[str]:
        """Heartbeat: extend leases, store the worker's ``stats``; lost after ``due_s``."""
        busy = int((stats or {}).get("busy", 0))
        lost = await self.run_script(
            "renew",
            worker_id,
            int(lease_s * 1000),
            int(due_s * 1000),
            busy,
            dumps(stats) if stats else "",
            *task_ids,
        )
        return [t.decode() for t in lost]

    async def release(self, worker_id: str, task_ids: list[str]) -> int:
        if not task_ids:
            return 0
        return int(await self.run_script("release", worker_id, *task_ids))

    # -- RelayStore (the amqp:// backend's state store) ---------------------------------------

    async def enable_relay(self) -> None:
        with self.guard():
            await self.client.set(self.key("relay"), "1")

    async def claim_outbox(self, n: int, hold_s: float) -> list[tuple[str, str, int]]:
        raw = await self.run_script("outbox", n, int(hold_s * 1000))
        return [
            (raw[i].decode(), raw[i + 1].decode(), int(raw[i + 2])) for i in range(0, len(raw), 3)
        ]

    async def settle_outbox(self, task_ids: list[str]) -> None:
        if task_ids:
            await self.run_script("settle", *task_ids)

    async def start(self, worker_id: str, task_ids: list[str], lease_s: float) -> list[TaskMessage]:
        if not task_ids:
            return []
        return _messages(await self.run_script("start", worker_id, int(lease_s * 1000), *task_ids))

    # -- Scheduler --------------------------------------------------------------------------

    async def reclaim_expired(self, max_redeliveries: int) -> int:
        return int(await self.run_script("reclaim", max_redeliveries, 1000))

    async def promote_due(self) -> int:
        return int(await self.run_script("promote", 1000))

    async def prune_index(self) -> int:
        return int(await self.run_script("prune", 1000))

    async def mark_lost_workers(self) -> int:
        return int(await self.run_script("lost", 1000))

    async def expire_jobs(self) -> int:
        reason = "Job timeout: job {job} ran longer than its job-timeout of {limit}s"
        return len(await self.run_script("terminate", "timed_out", reason))

    # -- JobStore ---------------------------------------------------------------------------

    async def submit(self, job: NewJob) -> SubmitOutcome:
        inputs_key = self.key("job", job.id, "in")
        fields = [item for pair in job.fields.items() for item in pair]
        timeout_ms = int((job.job_timeout_s or 0) * 1000)
        inline = job.payloads if len(job.payloads) <= _INLINE_INPUTS else []
        if not inline:
            # the inputs key is born with a TTL (MULTI: both or neither), and HSET keeps it: a
            # master that dies before the script below leaves nothing permanent behind
            chunks = [
                dict(enumerate(job.payloads[start : start + _INLINE_INPUTS], start))
                for start in range(0, len(job.payloads), _INLINE_INPUTS)
            ]
            with self.guard():
                first = self.client.pipeline(transaction=True)
                first.hset(inputs_key, mapping=chunks[0])
                first.expire(inputs_key, 3600)
                await first.execute()
                rest = self.client.pipeline(transaction=False)
                for chunk in chunks[1:]:
                    rest.hset(inputs_key, mapping=chunk)
                await rest.execute()
        status, value = await self.run_script(
            "submit",
            job.id,
            len(job.payloads),
            job.queue,
            job.priority,
            job.max_queue_length,
            job.idempotency_key or "",
            job.idempotency_hash,
            timeout_ms,
            int(SUBMIT_HOLD_S * 1000),
            len(inline),
            *inline,
            *fields,
        )
        status, value = status.decode(), value.decode()
        if status != "ok" and not inline:
            with self.guard():
                await self.client.delete(inputs_key)
        if status == "full":
            return SubmitOutcome(status, job.id, depth=int(value))
        return SubmitOutcome(status, value)

    async def job(self, job_id: str) -> dict[str, str] | None:
        with self.guard():
            raw = await self.client.hgetall(self.key("job", job_id))
        if not raw:
            return None
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def jobs(self, limit: int, offset: int) -> list[dict[str, str]]:
        """Up to ``limit`` jobs, newest first, skipping ``offset``; expired ones are pruned."""
        if limit <= 0 or offset < 0:
            return []
        with self.guard():
            ids = await self.client.zrevrange(self.key("jobs"), offset, offset + limit - 1)
            pipe = self.client.pipeline(transaction=False)
            for jid in ids:
                pipe.hgetall(self.key("job", jid.decode()))
            rows = await pipe.execute()
            gone = [jid for jid, row in zip(ids, rows, strict=True) if not row]
            if gone:
                await self.client.zrem(self.key("jobs"), *gone)
        return [
            {"id": jid.decode(), **{k.decode(): v.decode() for k, v in row.items()}}
            for jid, row in zip(ids, rows, strict=True)
            if row
        ]

    async def results(self, job_id: str, start: int, stop: int) -> list[bytes | None]:
        if stop <= start:
            return []
        with self.guard():
            values: list[bytes | None] = await self.client.hmget(
                self.key("job", job_id, "res"), [str(i) for i in range(start, stop)]
            )
        return values

    async def reduce_result(self, job_id: str) -> bytes | None:
        with self.guard():
            value: bytes | None = await self.client.hget(self.key("job", job_id, "res"), "r")
        return value

    async def errors(self, job_id: str) -> dict[str, bytes]:
        with self.guard():
            raw = await self.client.hgetall(self.key("job", job_id, "err"))
        return {k.decode(): v for k, v in raw.items()}

    async def cancel(self, job_id: str) -> str:
        reason = "Cancelled: job {job} was cancelled on request"
        out = await self.run_script("terminate", "cancelled", reason, job_id)
        return str(out[0].decode())

    async def events(
        self, job_id: str, after: str, block_ms: int | None, job_level: bool = False
    ) -> list[tuple[str, dict[str, str]]]:
        """Events after stream id ``after``, all or ``job_level`` only; waits up to
        ``block_ms`` for one to arrive (None: not at all)."""
        stream = self.key("job", job_id, "jev" if job_level else "ev")
        after, skip = resume_point(after)
        rest: list[tuple[str, dict[str, str]]] = []
        with self.guard():
            if skip:  # within an entry of several tasks' events: the rest of it first
                rest = expand_all(await self.client.xrange(stream, after, after))[skip:]
            block = None if rest else block_ms
            reply = await self.client.xread({stream: after}, count=EVENTS_PAGE, block=block)
        return rest + [event for _stream, entries in reply or [] for event in expand_all(entries)]

    async def depth(self, queue: str) -> int:
        with self.guard():
            return int(await self.client.zcard(self.key("q", queue)))

    async def task_catalog(self) -> dict[str, TaskDefaults]:
        with self.guard():
            raw = await self.client.hgetall(self.key("tasks"))
        return {k.decode(): TaskDefaults.from_json(orjson.loads(v)) for k, v in raw.items()}

    # -- worker registry ----------------------------------------------------------------------

    def _event(self, pipe: Any, etype: str, **fields: Any) -> None:
        """Append a global event in ``pipe`` (for changes made outside Lua)."""
        data = {"type": etype, **{k: str(v) for k, v in fields.items()}}
        pipe.xadd(self.key("events"), data, maxlen=GLOBAL_EVENTS_MAXLEN, approximate=True)

    async def register_worker(
        self,
        worker_id: str,
        info: dict[str, Any],
        tasks: dict[str, TaskDefaults],
        due_s: float = 10.0,
    ) -> None:
        now_ms = int(await self.server_time() * 1000)
        with self.guard():
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(self.key("workers"), worker_id, dumps(info))
            pipe.zadd(self.key("seen"), {worker_id: now_ms})
            pipe.zadd(self.key("wdue"), {worker_id: now_ms + int(due_s * 1000)})
            pipe.hdel(self.key("wlost"), worker_id)
            if tasks:
                pipe.hset(
                    self.key("tasks"),
                    mapping={name: dumps(d.to_json()) for name, d in tasks.items()},
                )
            self._event(
                pipe,
                "worker.joined",
                worker=worker_id,
                name=info.get("name", ""),
                host=info.get("host", ""),
                pid=info.get("pid", 0),
            )
            await pipe.execute()

    async def deregister_worker(self, worker_id: str, event: bool = True) -> None:
        with self.guard():
            pipe = self.client.pipeline(transaction=True)
            for name in ("workers", "wstat", "wlost", "whb"):
                pipe.hdel(self.key(name), worker_id)
            for name in ("seen", "wdue"):
                pipe.zrem(self.key(name), worker_id)
            if event:
                self._event(pipe, "worker.left", worker=worker_id)
            await pipe.execute()

    async def workers(self) -> list[dict[str, Any]]:
        """Registered workers: their info, last stats, ``last_seen_s`` (seconds since their
        last heartbeat), ``running`` (leases held) and ``state`` (alive or lost)."""
        now = await self.server_time()
        with self.guard():
            pipe = self.client.pipeline(transaction=False)
            pipe.hgetall(self.key("workers"))
            pipe.zrange(self.key("seen"), 0, -1, withscores=True)
            pipe.hgetall(self.key("owner"))
            pipe.hgetall(self.key("wstat"))
            pipe.hgetall(self.key("wlost"))
            pipe.zrange(self.key("wdue"), 0, -1, withscores=True)
            infos, seen_pairs, owners, stats, lost, due_pairs = await pipe.execute()
        seen, due = dict(seen_pairs), dict(due_pairs)
        running: dict[bytes, int] = {}
        for wid in owners.values():
            running[wid] = running.get(wid, 0) + 1
        out = []
        for wid, info in infos.items():
            age = now - seen.get(wid, 0.0) / 1000
            if age > _WORKER_FORGET_S:
                await self.deregister_worker(wid.decode(), event=False)
                continue
            overdue = due.get(wid, 0.0) / 1000 < now
            row = {
                **orjson.loads(info),
                **(orjson.loads(stats[wid]) if wid in stats else {}),
                "last_seen_s": round(age, 3),
                "running": running.get(wid, 0),
                "state": "lost" if wid in lost or overdue else "alive",
            }
            out.append(row)
        return sorted(out, key=lambda w: str(w.get("name")))


def _messages(raw: list[bytes]) -> list[TaskMessage]:
    """Task messages from a fetch reply: triples of (task id, header JSON, payload)."""
    return [TaskMessage.parse(raw[i], raw[i + 1], raw[i + 2]) for i in range(0, len(raw), 3)]


def _config_value(reply: dict[Any, Any], name: str) -> str:
    for key, value in reply.items():
        if (key.decode() if isinstance(key, bytes) else key) == name:
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""


def durability_problems(
    where: str, aof: dict[Any, Any], policy: dict[Any, Any], maxmemory: dict[Any, Any]
) -> list[str]:
    """Warnings for ``CONFIG GET`` replies of appendonly, maxmemory-policy and maxmemory."""
    out = []
    if _config_value(aof, "appendonly") != "yes":
        out.append(
            f"{where} has appendonly off: a Redis restart loses accepted jobs. Turn it on "
            "(redis-cli CONFIG SET appendonly yes, and appendonly yes in redis.conf)."
        )
    name = _config_value(policy, "maxmemory-policy")
    limited = _config_value(maxmemory, "maxmemory") not in ("", "0")
    if name.startswith("allkeys-"):
        out.append(
            f"{where} evicts keys under memory pressure (maxmemory-policy {name}): queued jobs "
            "can vanish. Use maxmemory-policy noeviction."
        )
    elif name.startswith("volatile-") and limited:
        out.append(
            f"{where} may evict finished jobs' results before result-ttl "
            f"(maxmemory-policy {name}); use noeviction to keep them."
        )
    return out


def payload_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]
