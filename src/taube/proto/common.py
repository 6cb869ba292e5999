"""What every sans-I/O protocol engine shares: the "need more bytes" marker, the error for
misuse of an engine's API (as opposed to a peer's mistake, which is always a reply), the bytes
side (:class:`ByteSide`) and the run loop (:class:`Engine`) of SMTP and POP3 alike: reading
command lines, counting errors, and running a SASL exchange."""

from __future__ import annotations

import base64
from typing import Any, Final

from . import sasl
from .buffer import OVERFLOW, TOO_LONG, LineBuffer
from .sasl_exchange import Abandoned, Cause, Exchange, Outcome

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
    event types ``decision_type``, ``closed_type`` and ``lookup_type``, its ``transitions``
    table, which :meth:`_enter` alone applies to ``state``, and its ``allowed`` table, which
    :meth:`_dispatch` alone consults. Its errors (an SMTP :class:`~taube.proto.replies.Reply`,
    a POP3 ``-ERR`` text) pass through here unread: :meth:`_encode_error` makes them bytes.
    """

    decision_type: type = object
    closed_type: type = object
    lookup_type: type = object  # the Decision that asks the session for a SASL look-up
    transitions: dict = {}  # noqa: RUF012  # (state or None, step) -> state, set by each engine
    allowed: dict = {}  # noqa: RUF012  # verb -> the states it is valid in, set by each engine
    state: Any
    config: Any  # each engine's config: hostname and max_errors are read here

    # The command reader's words, set by each engine: the error for a line over its limit and
    # for one that is not UTF-8 or holds a NUL or CR, and the verbs whose argument is the rest
    # of the line as sent, spaces included (RFC 1939 section 7: a POP3 password may hold them).
    line_too_long: Any = None
    bad_characters: Any = None
    verbatim_arguments: frozenset[str] = frozenset()
    # The errors that end a SASL exchange (RFC 4954 4, RFC 5034 4): bad credentials, a
    # malformed response, and one per way the client side abandons it (see sasl_exchange).
    auth_failed: Any = None
    auth_malformed: Any = None
    auth_abandoned: dict = {}  # noqa: RUF012  # Cause -> error, set by each engine

    def __init__(self, line_limit: int, hard_limit: int, *, crlf_only: bool = False) -> None:
        super().__init__(line_limit, hard_limit, crlf_only=crlf_only)
        self._events: list = []
        self._pending: object | None = None
        self.errors = 0  # negative replies so far (see _error)
        self._auth: Exchange | None = None  # the SASL exchange under way

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
            self._overflow(in_exchange)
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

    @property
    def _mech(self) -> object | None:
        """The mechanism of the SASL exchange under way (tests fix a CRAM-MD5 challenge
        through it)."""
        return None if self._auth is None else self._auth.mechanism

    def _take_pending(self):  # type: ignore[no-untyped-def]
        event = self._pending
        if event is None:
            raise LocalProtocolError("no decision is pending")
        self._pending = None
        return event

    def _emit(self, event: object) -> None:
        self._events.append(event)

    # --- command lines -----------------------------------------------------------------------
    def _command(self, raw: bytes | object) -> None:
        """One command line (RFC 5321 4.1.1, RFC 1939 section 3): refused whole when it is over
        its limit, not UTF-8, holds a NUL or a CR, or when the engine's :meth:`_screen`,
        :meth:`_strip_line_end` or :meth:`_admit` refuse it; else its verb, upper case in ASCII
        only (:func:`ascii_upper`), and its argument go to :meth:`_dispatch`."""
        if raw is TOO_LONG:
            self._error(self.line_too_long)
            return
        assert isinstance(raw, bytes)
        if not self._screen(raw):
            return
        line = self._strip_line_end(raw)
        if not isinstance(line, bytes):
            self._error(line)
            return
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            text = "\x00"  # refused as a NUL is
        if "\x00" in text or "\r" in text:
            self._error(self.bad_characters)
            return
        verb, _, arg = text.partition(" ")
        verb = ascii_upper(verb)
        if self._admit(verb, raw):
            self._dispatch(verb, arg if verb in self.verbatim_arguments else arg.strip(" "))

    def _screen(self, raw: bytes) -> bool:
        """Whether the line, still bytes with its line end, goes on to be read as text; False
        once the engine has answered it."""
        return True

    def _strip_line_end(self, raw: bytes) -> bytes | Any:
        """The line without its line end, or the error it gets instead."""
        return raw.rstrip(b"\r\n")

    def _admit(self, verb: str, raw: bytes) -> bool:
        """Whether the command ``verb`` (``raw`` as sent) runs; False once the engine has
        answered it."""
        return True

    def _dispatch(self, verb: str, arg: str) -> None:
        """The one place where commands meet states: a verb the :attr:`allowed` table lets run
        in the current state goes to its handler ``_do_<verb>``, any other gets an error."""
        allowed = self._states_allowing(verb)
        if allowed is None:
            self._error(self._unknown(verb))
        elif self.state not in allowed:
            self._error(self._out_of_sequence(verb))
        else:
            getattr(self, f"_do_{verb.lower()}")(arg)

    def _states_allowing(self, verb: str) -> frozenset | None:
        """The states ``verb`` may run in; None for a verb the engine does not offer."""
        return self.allowed.get(verb)

    def _unknown(self, verb: str) -> Any:
        """The error for a verb the engine does not offer."""
        raise NotImplementedError

    def _out_of_sequence(self, verb: str) -> Any:
        """The error for a known verb the current state does not allow."""
        raise NotImplementedError

    # --- errors and the end ------------------------------------------------------------------
    def _encode_error(self, error: Any) -> bytes:
        """``error`` as the engine sends it."""
        raise NotImplementedError

    def _closing(self, why: str) -> Any:
        """The last reply when the engine closes on its own because of ``why`` ("too many
        errors", "line too long"), after the error that caused it; None when that error said
        enough."""
        raise NotImplementedError

    def _error(self, error: Any) -> None:
        """Send a negative reply; each counts, and the one that reaches ``max_errors`` ends the
        session (Postfix: smtpd_hard_error_limit; a POP3 session closes without UPDATE)."""
        self._out.append(self._encode_error(error))
        self.errors += 1
        if self.errors >= self.config.max_errors and not self.closed:
            self._stop(self._closing("too many errors"), "too many errors")

    def _stop(self, final: Any, reason: str) -> None:
        """Close: ``final`` (if any) is the last reply, and Closed(``reason``) tells the session."""
        if final is not None:
            self._out.append(self._encode_error(final))
        self._enter("close")
        self._emit(self.closed_type(reason=reason))

    def _abort(self, final: Any, reason: str) -> None:
        """End the session at once, as :meth:`_stop`; nothing still buffered runs."""
        self._lines.clear()
        self._stop(final, reason)

    def _overflow(self, in_exchange: bool) -> None:
        """Input without a line end beyond the hard limit: no line is coming, so the SASL
        exchange under way fails, the engine says the line is too long and closes now."""
        if in_exchange:
            self._auth_end(None, Exchange.abandon(Cause.OVERFLOW).reason)
        too_long = self.auth_abandoned[Cause.TOO_LONG] if in_exchange else self.line_too_long
        self._out.append(self._encode_error(too_long))
        self._abort(self._closing("line too long"), "line without end too long")

    # --- the SASL exchange (RFC 4954 4, RFC 5034 4) --------------------------------------------
    def auth_resolve(self, answer: object) -> None:
        """Answer the pending AuthLookup with what the directory said: True or False for
        CheckPassword, the secret or None for NeedSecret, ScramCredentials or None for
        NeedScram."""
        if not isinstance(self._pending, self.lookup_type) or self._auth is None:
            raise LocalProtocolError("no AuthLookup is pending")
        self._take_pending()
        self._auth_step(self._auth.resolve(answer))

    def _auth_start(self, name: str, initial: bytes | None) -> None:
        """Start the exchange for the offered mechanism ``name`` with its decoded initial
        response (None: the client sent none)."""
        self._auth = Exchange(name, hostname=self.config.hostname)
        self._auth_step(self._auth.start(initial))

    def _auth_step(self, step: Outcome) -> None:
        """The exchange's next step in the engine's words: a challenge to send, a look-up to
        ask the session for, or its end."""
        match step:
            case sasl.Challenge(data=data):
                self._enter("auth-step")
                self._out.append(self._challenge(base64.b64encode(data)))
            case sasl.CheckPassword() | sasl.NeedSecret() | sasl.NeedScram():
                self._enter("auth-step")
                self._emit(self.lookup_type(request=step))
            case sasl.Success(authcid=user):
                self._auth_end(user, "")
            case sasl.Failure(reason=reason, malformed=malformed):
                self._auth_failed(reason, self.auth_malformed if malformed else self.auth_failed)
            case Abandoned(cause=cause, reason=reason):
                self._auth_failed(reason, self.auth_abandoned[cause])

    def _auth_response(self, raw: bytes | object) -> None:
        """A client line inside the exchange, without its line end; a line whose end the engine
        refuses (SMTP: a bare CR or LF in it, RFC 5321 2.3.8) ends the exchange with that error."""
        assert self._auth is not None
        line = raw if raw is TOO_LONG else self._strip_line_end(raw)  # type: ignore[arg-type]
        if line is TOO_LONG or isinstance(line, bytes):
            self._auth_step(self._auth.respond(line))
        else:
            self._auth_failed(Exchange.abandon(Cause.BARE_NEWLINE).reason, line)

    def _auth_failed(self, reason: str, error: Any) -> None:
        self._auth_end(None, reason)
        self._error(error)

    def _challenge(self, data: bytes) -> bytes:
        """A server challenge line for ``data``, already base64."""
        raise NotImplementedError

    def _auth_end(self, user: str | None, reason: str) -> None:
        """The exchange is over: ``user`` authenticated, or None for the failure ``reason``
        (whose error the caller sends)."""
        raise NotImplementedError
