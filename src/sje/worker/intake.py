"""What a worker checks before a task reaches a child: readable, small enough, signed, known.

A message failing a check is dead-lettered at once, never retried and never run; so is one whose
payload the child cannot decode (``BadPayload``). Checks run in the worker process, so a hostile
payload is never even parsed before its signature is verified.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sje.models import TaskMessage
from sje.signing import SIG_LEN, verify
from sje.tasks import Task

#: error types that send a task straight to the dead-letter queue
DEAD_LETTER_TYPES = frozenset(
    {"MalformedMessage", "MessageTooLarge", "BadSignature", "UnknownTask", "BadPayload"}
)
_NEVER_RUN = "it was never run"


def _problem(kind: str, message: str) -> dict[str, Any]:
    return {"type": kind, "message": f"{message}; {_NEVER_RUN}"}


@dataclass(frozen=True)
class Intake:
    key: bytes
    max_bytes: int
    catalog: dict[str, Task[Any]]
    worker_name: str

    def admit(self, m: TaskMessage) -> tuple[bytes, dict[str, Any] | None]:
        """(payload, None) for a message that may run, else (b"", the dead-letter reason)."""
        if m.problem is not None:
            return b"", _problem("MalformedMessage", m.problem)
        size = len(m.payload) - SIG_LEN
        if size > self.max_bytes:
            return b"", _problem(
                "MessageTooLarge",
                f"payload of {size:,} bytes is over max-message-kb={self.max_bytes // 1024}",
            )
        payload = verify(self.key, m.id, m.header, m.payload)
        if payload is None:
            return b"", _problem(
                "BadSignature",
                "signature missing or wrong: not written by a master of this deployment, or "
                "masters and workers have different secrets (secret / SJE_SECRET)",
            )
        if m.task not in self.catalog:
            known = ", ".join(sorted(self.catalog))
            return b"", _problem(
                "UnknownTask",
                f"task '{m.task}' is not registered on worker {self.worker_name} (it has: "
                f"{known}); serve it from a worker started with --tasks MODULE that defines it, "
                "on its own queue, then `sje dlq requeue`",
            )
        return payload, None
