"""Frames between a worker and its children, over a socket pair.

A frame is an 8-byte big-endian length, then ``header JSON + b"\\n" + body``. Several frames
may go in one write (``pack``), and a reader takes everything that has arrived in one read
(``FrameReader``): a batch of tasks or outcomes costs one system call each way, not two per
frame.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

import orjson

_LENGTH = struct.Struct("!Q")
_READ_SIZE = 256 * 1024


def frame(header: dict[str, Any], body: bytes = b"") -> bytes:
    return orjson.dumps(header) + b"\n" + body


def unframe(data: bytes) -> tuple[dict[str, Any], bytes]:
    head, _, body = data.partition(b"\n")
    return orjson.loads(head), body


def pack(frames: list[bytes]) -> bytes:
    """``frames`` ready for one write, each behind its length."""
    return b"".join(_LENGTH.pack(len(f)) + f for f in frames)


def send(sock: socket.socket, frames: list[bytes]) -> None:
    """Write ``frames`` (blocks until the other end has room for them)."""
    sock.sendall(pack(frames))


class FrameReader:
    """Splits the byte stream of one descriptor into frames."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buf = bytearray()
        self._need: int | None = None  # length of the frame being received, once read

    def read(self) -> list[bytes] | None:
        """The frames completed by one read (a blocking read when nothing has arrived); None
        at the end of the stream (the other end closed, or the descriptor is unusable)."""
        try:
            data = os.read(self.fd, _READ_SIZE)
        except OSError:
            return None
        if not data:
            return None
        self._buf += data
        return self._frames()

    def _frames(self) -> list[bytes]:
        out = []
        buf = self._buf
        at = 0
        while True:
            if self._need is None:
                if len(buf) - at < _LENGTH.size:
                    break
                (self._need,) = _LENGTH.unpack_from(buf, at)
                at += _LENGTH.size
            if len(buf) - at < self._need:
                break
            out.append(bytes(buf[at : at + self._need]))
            at += self._need
            self._need = None
        del buf[:at]
        return out
