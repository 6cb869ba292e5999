"""Receive buffer for line-oriented protocols: O(n) line extraction with a hard byte limit.

A peer that never sends a line end must not make us buffer without bound, nor wait for a line
end that may never come:

* Once more than ``limit`` octets arrive without a line end, they are dropped, the rest of that
  line is skipped when it finally ends, and :data:`TOO_LONG` is reported once in its place
  (RFC 5321 4.5.3.1.4: "500 Line too long"; RFC 1939 and RFC 2449 limit POP3 lines the same way).
  The buffer never holds more than ``limit`` octets (plus one CR, see below) between calls.
* Skipped octets are still counted: once a line (its line end included) is longer than
  ``hard_limit``, :data:`OVERFLOW` is reported at once, when that many octets have arrived,
  not when a line end finally does. The engine then closes the connection (Postfix's
  ``line_length_limit`` and Dovecot's input buffer limit do the same).

A line ends at LF (CR LF or a bare LF), or, with ``crlf_only``, only at CR LF: then a bare LF or
bare CR is part of the line and the protocol engine decides what to do with it (RFC 5321 2.3.8
allows no other line end in SMTP). The CR LF search resumes one octet back, so a CR at the end
of one chunk is found with the LF that starts the next; each octet is still searched once.
"""

from __future__ import annotations

from typing import Final

__all__ = ["OVERFLOW", "TOO_LONG", "LineBuffer"]


class _Marker:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


TOO_LONG: Final = _Marker("TOO_LONG")  # a line over ``limit``: skipped, the session goes on
OVERFLOW: Final = _Marker("OVERFLOW")  # input without line end over ``hard_limit``: close


class LineBuffer:
    """Bytes in, complete lines out (with their line end), never more than ``limit`` buffered."""

    __slots__ = ("_buf", "_scan", "_skipped", "_term", "hard_limit", "limit")

    def __init__(self, limit: int, hard_limit: int, *, crlf_only: bool = False) -> None:
        if hard_limit < limit:
            raise ValueError("hard_limit must not be below limit")
        self.limit = limit
        self.hard_limit = hard_limit
        self._term = b"\r\n" if crlf_only else b"\n"
        self._buf = bytearray()
        self._scan = 0  # octets of _buf already searched for the line end
        self._skipped = 0  # octets of the current line already dropped (it is over the limit)

    @property
    def crlf_only(self) -> bool:
        return self._term == b"\r\n"

    def __len__(self) -> int:
        """Octets buffered: after :meth:`next_line` returned a line, what the peer sent after it
        (and before our reply to it: replies are flushed only once input runs out)."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_line(self) -> bytes | _Marker | None:
        """The next complete line including its line end, :data:`TOO_LONG`, :data:`OVERFLOW`, or
        None if no line is complete yet."""
        buf = self._buf
        i = buf.find(self._term, max(self._scan - len(self._term) + 1, 0))
        if i < 0:
            if self._skipped + len(buf) > self.hard_limit:
                return self._overflow()
            if len(buf) > self.limit:
                # keep a final CR: it may be the first half of a CR LF split across reads
                keep = 1 if self.crlf_only and buf.endswith(b"\r") else 0
                self._skipped += len(buf) - keep
                del buf[: len(buf) - keep]
            self._scan = len(buf)
            return None
        end = i + len(self._term)
        total = self._skipped + end
        if total > self.hard_limit:
            return self._overflow()
        self._scan = 0
        self._skipped = 0
        if total > self.limit:
            del buf[:end]
            return TOO_LONG
        line = bytes(buf[:end])
        del buf[:end]
        return line

    def _overflow(self) -> _Marker:
        self.clear()
        return OVERFLOW

    def take_rest(self) -> bytes:
        """Everything buffered (used when the protocol switches to a raw byte stream)."""
        rest = bytes(self._buf)
        del self._buf[:]
        self._scan = 0
        self._skipped = 0
        return rest

    def clear(self) -> None:
        """Drop all buffered input (after STARTTLS: plaintext must never run inside TLS)."""
        self.take_rest()
