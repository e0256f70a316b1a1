"""Task message signatures: the bytes signed are part of the wire format (a master and a worker
of different versions must agree), so they are pinned here against HMAC-SHA256 computed from
the documented layout: task id, header fields and payload joined by 0x1f."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from sje.signing import SIG_LEN, sign_payloads, signature, verify

KEY = b"test-key"
HEADER = ["app.tasks.square", "item", "3", "1.0", "300.0", ""]


def documented(task_id: str, header: list[str], payload: bytes) -> bytes:
    message = b"\x1f".join([task_id.encode(), *(h.encode() for h in header), payload])
    return hmac.new(KEY, message, hashlib.sha256).hexdigest()[:SIG_LEN].encode()


@pytest.mark.parametrize("header", [HEADER, [], ["only"]])
def test_a_signature_is_hmac_sha256_of_the_documented_layout(header: list[str]) -> None:
    assert signature(KEY, "abc:7", header, b"[1, 2]") == documented("abc:7", header, b"[1, 2]")


def test_a_jobs_payloads_are_signed_each_with_its_task_id() -> None:
    payloads = [b"1", b"", b'{"a": 1}']
    signed = sign_payloads(KEY, "f00d", HEADER, payloads)
    assert signed == [documented(f"f00d:{i}", HEADER, p) + p for i, p in enumerate(payloads)]
    assert [verify(KEY, f"f00d:{i}", HEADER, s) for i, s in enumerate(signed)] == payloads


def test_a_changed_field_task_id_payload_or_key_fails_verification() -> None:
    (signed,) = sign_payloads(KEY, "f00d", HEADER, [b"41"])
    assert verify(KEY, "f00d:0", HEADER, signed) == b"41"
    assert verify(KEY, "f00d:1", HEADER, signed) is None
    assert verify(KEY, "f00d:0", ["app.tasks.other", *HEADER[1:]], signed) is None
    assert verify(KEY, "f00d:0", HEADER, signed[:-1] + b"2") is None
    assert verify(b"other-key", "f00d:0", HEADER, signed) is None
    assert verify(KEY, "f00d:0", HEADER, signed[:5]) is None
