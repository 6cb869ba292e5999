"""What every sans-I/O protocol engine shares: the "need more bytes" marker, the error for
misuse of an engine's API (as opposed to a peer's mistake, which is always a reply), the bytes
side (:class:`ByteSide`) and the run loop (:class:`Engine`) of SMTP and POP3 alike."""

from __future__ import annotations

from typing import Any, Final

from .buffer import OVERFLOW, LineBuffer

__all__ = ["NEED_DATA", "ByteSide", "Engine", "LocalProtocolError", "NeedData", "ascii_upper"]


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


class Engine(ByteSide):
    """The run loop both engines share: commands strictly in order, one event at a time, and a
    :data:`decision_type` event answered before anything more is read.

    ``next_event()`` returns the oldest queued event; with none queued it lets the engine take
    one step on buffered input (:meth:`_advance`) until there is one or more input is needed.
    An engine supplies ``_advance`` (usually :meth:`_next_line` with its own handlers), the
    event types ``decision_type`` and ``closed_type``, and its ``transitions`` table, which
    :meth:`_enter` alone applies to ``state``.
    """

    decision_type: type = object
    closed_type: type = object
    transitions: dict = {}  # noqa: RUF012  # (state or None, step) -> state, set by each engine
    state: Any

    def __init__(self, line_limit: int, hard_limit: int, *, crlf_only: bool = False) -> None:
        super().__init__(line_limit, hard_limit, crlf_only=crlf_only)
        self._events: list = []
        self._pending: object | None = None

    def next_event(self):  # type: ignore[no-untyped-def]  # each engine narrows the type
        if self._pending is not None:
            raise LocalProtocolError(f"{type(self._pending).__name__} has not been answered")
        self._check_ready()
        while not self._events:
            if self.closed:
                return self.closed_type(reason="closed")  # the session flushes the last reply
            if not self._advance():
                break
        if self._events:
            event = self._events.pop(0)
            if isinstance(event, self.decision_type):
                self._pending = event
            return event
        if self._peer_closed:
            self._peer_gone()
            return self.closed_type(reason="peer closed the connection")
        return NEED_DATA

    @property
    def awaiting_decision(self) -> bool:
        """True between a Decision event and its answer."""
        return self._pending is not None

    def _check_ready(self) -> None:
        """Raise LocalProtocolError when the caller owes the engine something else first."""

    def _advance(self) -> bool:
        """One step on buffered input; False when more input is needed."""
        raise NotImplementedError

    def _next_line(self, in_exchange: bool) -> bool:
        """One line to its handler: the SASL exchange's inside AUTH, else the command's."""
        line = self._lines.next_line()
        if line is None:
            return False
        if line is OVERFLOW:
            self._overflow()
        elif in_exchange:
            self._auth_response(line)
        else:
            self._command(line)
        return True

    def _peer_gone(self) -> None:
        """The peer closed with no event queued: the engine is done."""
        self._enter("peer-closed")

    def _enter(self, step: str) -> None:
        """The one place ``state`` changes: to what the engine's :attr:`transitions` table says
        ``step`` leads to from the current state (a state of None there stands for any other)."""
        target = self.transitions.get((self.state, step)) or self.transitions.get((None, step))
        if target is None:
            raise LocalProtocolError(f"no transition for {step!r} in state {self.state.value}")
        self.state = target

    def _overflow(self) -> None:
        raise NotImplementedError

    def _auth_response(self, raw: bytes | object) -> None:
        raise NotImplementedError

    def _command(self, raw: bytes | object) -> None:
        raise NotImplementedError

    @property
    def _mech(self) -> object | None:
        """The mechanism of the SASL exchange under way (tests fix a CRAM-MD5 challenge
        through it); each engine keeps its exchange in ``_auth``."""
        auth = getattr(self, "_auth", None)
        return None if auth is None else auth.mechanism

    def _take_pending(self):  # type: ignore[no-untyped-def]
        event = self._pending
        if event is None:
            raise LocalProtocolError("no decision is pending")
        self._pending = None
        return event

    def _emit(self, event: object) -> None:
        self._events.append(event)
