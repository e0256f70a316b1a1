"""HMAC signatures on task messages: masters sign, workers verify before parsing anything.

A stored task input is ``signature + payload``, the signature being the first ``SIG_LEN`` hex
characters of HMAC-SHA256 over the task id, the header fields the worker acts on (task name,
kind, retries, backoff, timeout) and the payload. A reduce step has no stored payload; its
signature is a field of the job record. Anyone without the secret can neither forge a task nor
change what an existing one runs.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Sequence

SIG_LEN = 32  # hex characters: 128 bits of HMAC-SHA256
_SEP = b"\x1f"


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def signature(key: bytes, task_id: str, header: Sequence[str], payload: bytes) -> bytes:
    """The ``SIG_LEN`` hex characters for one task message."""
    message = _SEP.join((task_id.encode(), *(h.encode() for h in header), payload))
    return hmac.digest(key, message, "sha256").hex()[:SIG_LEN].encode()


def sign_payloads(
    key: bytes, job_id: str, header: Sequence[str], payloads: Sequence[bytes]
) -> list[bytes]:
    """Each payload prefixed with its signature (task ids ``<job>:<index>``)."""
    return [
        signature(key, f"{job_id}:{i}", header, payload) + payload
        for i, payload in enumerate(payloads)
    ]


def verify(key: bytes, task_id: str, header: Sequence[str], signed: bytes) -> bytes | None:
    """The payload when ``signed`` carries a valid signature, else None."""
    if len(signed) < SIG_LEN:
        return None
    given, payload = signed[:SIG_LEN], signed[SIG_LEN:]
    if hmac.compare_digest(given, signature(key, task_id, header, payload)):
        return payload
    return None
