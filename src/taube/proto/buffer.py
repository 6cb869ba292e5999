"""Receive buffer for line-oriented protocols: O(n) line extraction with a hard byte limit.

A peer that never sends a line end must not make us buffer without bound: once more than
``limit`` octets arrive without LF, they are dropped, the rest of that line is skipped when it
finally ends, and :data:`TOO_LONG` is reported once in its place (RFC 5321 4.5.3.1.4: "500 Line
too long"; RFC 1939 and RFC 2449 limit POP3 lines the same way).
"""

from __future__ import annotations

from typing import Final

__all__ = ["TOO_LONG", "LineBuffer"]


class _TooLong:
    __slots__ = ()

    def __repr__(self) -> str:
        return "TOO_LONG"


TOO_LONG: Final = _TooLong()


class LineBuffer:
    """Bytes in, complete lines out (with their line end), never more than ``limit`` buffered."""

    __slots__ = ("_buf", "_scan", "_skipping", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._scan = 0  # bytes of _buf already searched for LF: each byte is searched once
        self._skipping = False  # inside an overlong line whose start was dropped

    def __len__(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_line(self) -> bytes | _TooLong | None:
        """The next complete line including its LF, :data:`TOO_LONG`, or None if none yet."""
        i = self._buf.find(b"\n", self._scan)
        if i < 0:
            if len(self._buf) > self.limit:
                del self._buf[:]
                self._skipping = True
            self._scan = len(self._buf)
            return None
        line = bytes(self._buf[: i + 1])
        del self._buf[: i + 1]
        self._scan = 0
        if self._skipping or len(line) > self.limit:
            self._skipping = False
            return TOO_LONG
        return line

    def take_rest(self) -> bytes:
        """Everything buffered (used when the protocol switches to a raw byte stream)."""
        rest = bytes(self._buf)
        del self._buf[:]
        self._scan = 0
        self._skipping = False
        return rest

    def clear(self) -> None:
        """Drop all buffered input (after STARTTLS: plaintext must never run inside TLS)."""
        self.take_rest()
