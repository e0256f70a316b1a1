"""Turn a validated job definition into stored form: options resolved, inputs split into tasks."""

from __future__ import annotations

import difflib
import uuid

from sje.broker.base import NewJob
from sje.broker.redis import payload_hash
from sje.config import MasterSettings
from sje.errors import InvalidJob, UnknownTask
from sje.models import JobSpec, dumps
from sje.signing import sign_payloads, signature
from sje.tasks import TaskDefaults


def check_tasks(spec: JobSpec, catalog: dict[str, TaskDefaults]) -> None:
    """Refuse task names no worker has registered, unless the job allows waiting for one."""
    if spec.allow_unknown_task:
        return
    for name in filter(None, (spec.task, spec.reduce)):
        if name not in catalog:
            close = difflib.get_close_matches(name, list(catalog), n=1)
            hint = f"Did you mean '{close[0]}'? " if close else ""
            known = ", ".join(sorted(catalog)[:10]) or "none yet"
            raise UnknownTask(
                f"Unknown task '{name}': no worker has registered it (known: {known}). {hint}"
                "Start a worker with --tasks MODULE that defines it, "
                "or set allow-unknown-task: true to queue the job anyway."
            )


def check_sizes(payloads: list[bytes], limit_kb: int) -> None:
    """Refuse a task payload over ``max-message-kb`` (workers would dead-letter it)."""
    limit = limit_kb * 1024
    for i, payload in enumerate(payloads):
        if len(payload) > limit:
            raise InvalidJob(
                f"Task {i}'s input is {len(payload) / 1024:,.0f} KiB, over max-message-kb="
                f"{limit_kb}: pass a reference (a path or URL) instead, or raise max-message-kb "
                "on masters and workers alike."
            )


def plan(
    spec: JobSpec, catalog: dict[str, TaskDefaults], settings: MasterSettings, key: bytes
) -> NewJob:
    """Resolve every option (job > task default > global), split inputs into task payloads and
    sign each with ``key``."""
    d = catalog.get(spec.task, TaskDefaults())
    queue = spec.queue or d.queue
    priority = spec.priority if spec.priority is not None else d.priority
    retries = spec.retries if spec.retries is not None else d.retries
    backoff = spec.backoff if spec.backoff is not None else d.backoff
    backoff_max = spec.backoff_max if spec.backoff_max is not None else d.backoff_max
    timeout = spec.timeout if spec.timeout is not None else d.timeout
    result_ttl = spec.result_ttl if spec.result_ttl is not None else settings.result_ttl
    payloads = spec.task_payloads()
    check_sizes(payloads, settings.max_message_kb)
    fields = {
        "name": spec.name or spec.task,
        "task": spec.task,
        "kind": spec.kind,
        "n": str(len(payloads)),
        "inputs": str(len(spec.inputs) if spec.inputs is not None else 0),
        "chunk_size": str(spec.chunk_size or 0),
        "queue": queue,
        "priority": str(priority),
        "retries": str(retries),
        "backoff": repr(backoff),
        "backoff_max": repr(backoff_max),
        "timeout": "" if timeout is None else repr(timeout),
        "job_timeout": "" if spec.job_timeout is None else repr(spec.job_timeout),
        "result_ttl_ms": str(int(result_ttl * 1000)),
        "reduce": spec.reduce or "",
        "idem": spec.idempotency_key or "",
    }
    fingerprint = payload_hash(dumps(spec.model_dump(exclude={"idempotency_key"})))
    job_id = uuid.uuid4().hex
    header = [fields[k] for k in ("retries", "backoff", "backoff_max", "timeout")]
    if spec.reduce:
        sig = signature(key, f"{job_id}:r", [spec.reduce, "reduce", *header], b"")
        fields["sig_r"] = sig.decode()
    return NewJob(
        id=job_id,
        fields=fields,
        payloads=sign_payloads(key, job_id, [spec.task, spec.kind, *header], payloads),
        queue=queue,
        priority=priority,
        max_queue_length=settings.max_queue_length,
        job_timeout_s=spec.job_timeout,
        idempotency_key=spec.idempotency_key,
        idempotency_hash=fingerprint,
    )
