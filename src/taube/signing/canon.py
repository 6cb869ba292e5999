"""DKIM "relaxed" body canonicalization (RFC 6376 section 3.4.4), computed incrementally.

A message body may be tens of megabytes; the body hash (``bh=``, RFC 6376 section 3.7) is a
hash of its canonical form, so it can be fed chunk by chunk from the spool file and the body is
never held in memory. :class:`RelaxedBodyHash` keeps only a few bytes of state between chunks:

* a run of whitespace (SP, HTAB) at the end of a chunk might be trailing whitespace of its line
  (removed) or whitespace inside the line (one SP): it is held back as one SP;
* a CR at the end of a chunk might be the first half of a CRLF line end: it is held back too;
* empty lines are counted, not emitted, until a non-empty line follows: empty lines at the end of
  the body are ignored (RFC 6376 section 3.4.4, last rule), however many there are.

Line ends are CRLF or a bare LF, as dkimpy reads them (its parser splits lines at ``\\r?\\n``),
so both compute the same hash for any body; a bare CR is body content. A last line without a
line end is canonicalized as if the CRLF were there (section 3.4.4: "if the body is non-empty
but does not end with a CRLF, a CRLF is added"), its trailing whitespace removed: that is what a
receiver sees once SMTP has added the CRLF before the final dot. (dkimpy keeps the trailing
whitespace of such a last line: the one case where the two differ; it never arises for a message
received over SMTP, whose body always ends with CRLF.)
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Protocol

__all__ = ["RelaxedBodyHash", "relaxed_body"]

# Whitespace that compression changes: a run of two or more, or a lone HTAB (a lone SP stays as
# it is, and matching it too would make every word a replacement: ten times slower).
_WSP_RUN = re.compile(rb"\t[ \t]*| [ \t]+")
# Line ends that canonicalization changes (after compression): a trailing SP before CRLF or LF,
# and a bare LF; a plain CRLF stays as it is.
_LINE_END = re.compile(rb" \r?\n|(?<!\r)\n")
# The last line end and the empty lines before it, matched on the reversed block: a search for
# them anchored at the end would try every position of a megabyte chunk.
_TRAILING_CRLFS_REVERSED = re.compile(rb"(?:\n\r)+")
# What the end of an unfinished line might still turn out to be: trailing whitespace and the CR
# of a CRLF that the next chunk completes.
_UNDECIDED = re.compile(rb"[ \t]*\r?\Z")


def _compress(data: bytes) -> bytes:
    """Every run of SP and HTAB as one SP. The test first: the bytes search is fast, and a
    base64 attachment (most of a big message) has no whitespace at all."""
    if b"\t" in data or b"  " in data:
        return _WSP_RUN.sub(b" ", data)
    return data


def _line_ends(data: bytes) -> bytes:
    """Every line end as CRLF, without the SP before it (``data`` is compressed)."""
    if b" \n" in data or b" \r\n" in data or data.count(b"\n") != data.count(b"\r\n"):
        return _LINE_END.sub(b"\r\n", data)
    return data


class _Hash(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


class RelaxedBodyHash:
    """The relaxed canonical form of a body fed in chunks of any size, into a hash.

    ``update(chunk)`` as often as needed, then ``digest()`` (or ``bh()``, the base64 text of the
    ``bh=`` tag). ``sink`` receives the canonical bytes: by default SHA-256, the body hash of
    both rsa-sha256 and ed25519-sha256 (RFC 8463 section 3); a test passes a collector.
    """

    __slots__ = ("_begun", "_carry", "_empty_lines", "_finished", "_sink")

    def __init__(self, sink: _Hash | None = None) -> None:
        self._sink: _Hash = sink if sink is not None else hashlib.sha256()
        self._carry = b""  # held back from the line in progress: at most b" \r"
        self._begun = False  # part of the line in progress has gone into the hash
        self._empty_lines = 0  # empty canonical lines not yet emitted
        self._finished = False

    def update(self, chunk: bytes) -> None:
        if self._finished:
            raise ValueError("the body hash is already finished")
        if not chunk:
            return
        cut = chunk.rfind(b"\n") + 1
        if cut:
            self._lines(self._carry + chunk[:cut])
            self._carry = b""
        self._partial(self._carry + chunk[cut:])

    def digest(self) -> bytes:
        self._finish()
        return self._sink.digest()

    def bh(self) -> bytes:
        """The ``bh=`` value: base64 of :meth:`digest` (RFC 6376 section 3.5)."""
        return base64.b64encode(self.digest())

    # -- the rules -------------------------------------------------------------------------

    def _lines(self, block: bytes) -> None:
        """Whole lines (``block`` ends with a line end), the first continuing the line in
        progress."""
        canonical = _line_ends(_compress(block))
        tail = _TRAILING_CRLFS_REVERSED.match(canonical[::-1])
        assert tail is not None  # the block ends with a line end
        content = canonical[:len(canonical) - tail.end()]
        line_ends = tail.end() // 2
        if content or self._begun:
            self._emit(content + b"\r\n")
            self._empty_lines = line_ends - 1
        else:
            self._empty_lines += line_ends
        self._begun = False

    def _partial(self, text: bytes) -> None:
        """The start of a line whose end is not known yet: emit what cannot change, keep the
        whitespace and CR at its end (at most one SP and one CR after compression)."""
        undecided = _UNDECIDED.search(text)
        assert undecided is not None  # the pattern matches the empty string at the end
        settled = text[:undecided.start()]
        if settled:
            self._emit(_compress(settled))
            self._begun = True
        rest = text[undecided.start():]
        self._carry = (b" " if rest[:1] in (b" ", b"\t") else b"") + (b"\r" if rest.endswith(b"\r") else b"")

    def _emit(self, data: bytes) -> None:
        if not self._begun and self._empty_lines:
            # Empty lines followed by content are part of the body after all.
            self._sink.update(b"\r\n" * self._empty_lines)
            self._empty_lines = 0
        self._sink.update(data)

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        # A last line without its CRLF: a held-back CR is content (no LF follows), whitespace
        # before the end is trailing whitespace.
        if self._carry.endswith(b"\r"):
            self._emit(self._carry)
            self._begun = True
        if self._begun:
            self._sink.update(b"\r\n")
        self._carry = b""


class _Collect:
    def __init__(self) -> None:
        self.data = bytearray()

    def update(self, data: bytes, /) -> None:
        self.data += data

    def digest(self) -> bytes:
        return bytes(self.data)


def relaxed_body(body: bytes, *, chunk: int = 1 << 20) -> bytes:
    """The relaxed canonical form of ``body`` itself, fed in chunks of ``chunk`` octets (for
    tests and diagnostics; signing only needs the hash)."""
    collect = _Collect()
    state = RelaxedBodyHash(collect)
    for start in range(0, len(body), chunk):
        state.update(body[start:start + chunk])
    return state.digest()
