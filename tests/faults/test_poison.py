"""Poison messages written straight into Redis: every one dead-lettered, none run, the good
tasks around them all done, the worker unharmed."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

import sje
from sje.signing import SIG_LEN, signature
from tests.support import Proc, run_sje, wait_until

SQUARE = "tests.apps.sample_tasks.square"
_HEADER = ("task", "kind", "retries", "backoff", "backoff_max", "timeout")


class CreatesFile:
    """Unpickling this creates a file: the proof that a payload was (never) unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


class Forger:
    """Rewrites stored tasks the way a writer with Redis access (and maybe the secret) could."""

    def __init__(self, r: redis.Redis, prefix: str, secret: str) -> None:
        self.r, self.prefix, self.key = r, prefix, secret.encode()

    def header(self, job_id: str) -> list[str]:
        raw: Any = self.r.hmget(f"{self.prefix}:job:{job_id}", list(_HEADER))
        return [v.decode() for v in raw]

    def put(self, job_id: str, payload: bytes, signed: bool = True) -> None:
        sig = signature(self.key, f"{job_id}:0", self.header(job_id), payload) if signed else b""
        self.r.hset(f"{self.prefix}:job:{job_id}:in", "0", sig + payload)

    def stored(self, job_id: str) -> bytes:
        value: Any = self.r.hget(f"{self.prefix}:job:{job_id}:in", "0")
        return bytes(value)


def test_poison_messages_are_dead_lettered_never_run_and_good_work_completes(
    master: str,
    worker: Callable[..., Proc],
    env: dict[str, str],
    r: redis.Redis,
    prefix: str,
    tmp_path: Path,
) -> None:
    client = sje.Client(master)
    forge = Forger(r, prefix, env["SJE_SECRET"])

    def submit(task: str = SQUARE, **job: Any) -> sje.JobHandle:
        # no worker is up yet, so no task is registered: the forging happens before any fetch
        return client.submit({"task": task, "allow-unknown-task": True, **job})

    good = submit(inputs=list(range(20)))
    jobs = {name: submit(inputs=[1]).id for name in (
        "not_utf8", "truncated", "bad_signature", "pickle", "signed_pickle", "huge", "forged"
    )}  # fmt: skip
    jobs["wrong_schema"] = submit(args=[3]).id
    jobs["unknown"] = submit("tests.apps.nope", inputs=[1]).id
    marker = tmp_path / "unpickled"
    bomb = pickle.dumps(CreatesFile(marker))

    forge.put(jobs["not_utf8"], b'"\xff\xfe"')
    forge.put(jobs["truncated"], b'{"a": [1, 2')
    forge.put(jobs["wrong_schema"], b"[1, 2]")
    stored = forge.stored(jobs["bad_signature"])
    flipped = bytes([stored[0] ^ 1]) + stored[1:SIG_LEN]
    r.hset(f"{prefix}:job:{jobs['bad_signature']}:in", "0", flipped + stored[SIG_LEN:])
    forge.put(jobs["pickle"], bomb, signed=False)
    forge.put(jobs["signed_pickle"], bomb)
    forge.put(jobs["huge"], b'"' + b"x" * (10 * 1024 * 1024) + b'"')
    # a validly signed payload under a rewritten header: the signature covers the header too
    r.hset(f"{prefix}:job:{jobs['forged']}", "task", "os.system")
    r.zadd(f"{prefix}:q:default", {b"\xff\xfe garbage": 0})

    w = worker("--concurrency", "2")
    assert good.result(timeout=60) == [i * i for i in range(20)]

    def failed(job_id: str) -> bool:
        return bool(client.job(job_id).status()["state"] == "failed")

    for job_id in jobs.values():
        wait_until(lambda: failed(job_id), 30, f"job {job_id} to fail")  # noqa: B023

    page = client.dead_letters(limit=100)
    assert page["total"] == len(jobs) + 1
    by_job = {e.get("job"): e for e in page["entries"]}
    expected = {
        "not_utf8": "BadPayload",
        "truncated": "BadPayload",
        "wrong_schema": "BadPayload",
        "bad_signature": "BadSignature",
        "pickle": "BadSignature",
        "signed_pickle": "BadPayload",
        "huge": "MessageTooLarge",
        "forged": "BadSignature",
        "unknown": "UnknownTask",
    }
    assert {name: by_job[jobs[name]]["error"]["type"] for name in jobs} == expected
    assert all(by_job[job_id]["state"] == "dead" for job_id in jobs.values())
    assert by_job[None]["error"]["type"] == "OrphanMessage"
    assert not marker.exists(), "a payload was unpickled"
    for job_id in jobs.values():
        status = client.job(job_id).status()
        assert status["tasks"]["dead"] == 1
        assert status["error"]["dead_letter"] == f"{job_id}:0"
    assert w.popen.poll() is None, "the worker survived"
    assert good.status()["tasks"]["succeeded"] == 20

    listed = run_sje("dlq", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert f"{len(jobs) + 1} of {len(jobs) + 1} entries" in listed.stdout
    shown = run_sje("dlq", "show", f"{jobs['pickle']}:0", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "BadSignature" in shown.stdout
    # the pickle's bytes shown escaped (control characters too), never decoded
    assert "unpickled\\x94\\x8c\\x01w" in shown.stdout
    assert not any(ord(c) < 32 and c != "\n" for c in shown.stdout)
