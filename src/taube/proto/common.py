"""What every sans-I/O protocol engine shares: the "need more bytes" marker and the error for
misuse of an engine's API (as opposed to a peer's mistake, which is always a reply)."""

from __future__ import annotations

from typing import Final

from .buffer import LineBuffer

__all__ = ["NEED_DATA", "ByteSide", "LocalProtocolError", "NeedData", "ascii_upper"]


def ascii_upper(text: str) -> str:
    """``text`` in upper case if it is ASCII, else unchanged. Protocol keywords (verbs, SASL
    mechanism names, parameter values) are ASCII and case-insensitive only in ASCII, as
    Postfix's and Dovecot's strcasecmp: Python upper-cases "\u017f" (long s) to S, "\u0131"
    (dotless i) to I and ligatures such as "\ufb06" to ST, so "R\u017fET" must stay unknown
    rather than become RSET, or the engine and any filter in front of it read one line two ways."""
    return text.upper() if text.isascii() else text


class LocalProtocolError(Exception):
    """The caller misused the engine (answered twice, forgot to answer, ...)."""


class NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


class ByteSide:
    """The bytes-in, bytes-out half every engine shares: a bounded line buffer for input (see
    :class:`LineBuffer` for ``line_limit``, ``hard_limit`` and ``crlf_only``), a list of queued
    replies for output, and whether the peer has closed. ``closed`` is the
    engine's own notion of being done (input is ignored then)."""

    def __init__(self, line_limit: int, hard_limit: int, *, crlf_only: bool = False) -> None:
        self._lines = LineBuffer(line_limit, hard_limit, crlf_only=crlf_only)
        self._out: list[bytes] = []
        self._peer_closed = False

    @property
    def closed(self) -> bool:
        raise NotImplementedError

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` means the peer closed its side."""
        if not data:
            self._peer_closed = True
        elif not self.closed:
            self._lines.feed(data)

    def data_to_send(self) -> bytes:
        """Every reply queued so far, in order; the queue is emptied."""
        out = b"".join(self._out)
        self._out.clear()
        return out
