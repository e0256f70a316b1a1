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
_SIG_BYTES = SIG_LEN // 2
_SEP = b"\x1f"


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def _between(header: Sequence[str]) -> bytes:
    """What the signed message holds between the task id and the payload: the header fields,
    each after a separator, and a last separator."""
    return _SEP + b"".join(h.encode() + _SEP for h in header)


def _sign(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256")[:_SIG_BYTES].hex().encode()


def signature(key: bytes, task_id: str, header: Sequence[str], payload: bytes) -> bytes:
    """The ``SIG_LEN`` hex characters for one task message: HMAC-SHA256 over the task id, the
    header fields and the payload, separated by ``_SEP``."""
    return _sign(key, task_id.encode() + _between(header) + payload)


def sign_payloads(
    key: bytes, job_id: str, header: Sequence[str], payloads: Sequence[bytes]
) -> list[bytes]:
    """Each payload prefixed with its signature (task ids ``<job>:<index>``); the header is
    encoded once for the whole job (a job of 100,000 inputs signs in ~0.2 s, not ~0.5)."""
    between = _between(header)
    return [
        _sign(key, f"{job_id}:{i}".encode() + between + payload) + payload
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
