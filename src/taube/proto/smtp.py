"""The SMTP server protocol (RFC 5321, with RFC 1870, 1652, 1985, 2034, 2920, 3461, 6531) as a sans-I/O
state machine: bytes in, events out; decisions in, reply bytes out. No sockets, no clock.

How to drive it::

    conn = SMTPConnection(SMTPConfig(hostname="mx.example"))
    send(conn.data_to_send())                     # the 220 greeting
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            send(conn.data_to_send())             # every reply so far, in order (RFC 2920)
            conn.receive_data(await recv())       # b"" means the peer closed
        elif isinstance(event, Decision):          # Hello, MailFrom, RcptTo, DataStart, ...
            conn.accept() or conn.reject(reply)   # exactly one answer before next_event()
        ...

With ``SMTPConfig(connect_decision=True)`` the greeting waits for the session: the first
next_event() is a :class:`Connect` decision, for connect-stage checks (DNSBL, per-client limits,
pregreet). ``accept()`` queues the 220 (``accept(reply)`` another one); ``reject(reply)`` queues
that reply (for example ``554 5.7.1``) instead of any greeting and closes. Bytes received while
the decision is open are the client talking first: ``accept()`` then queues ``554 5.5.0`` and
closes, as below. Off (the default), the constructor queues the 220 and no Connect is emitted.

The rules:

* Commands are handled strictly in order; while a decision is pending, no further input is
  parsed, so pipelined commands (RFC 2920) get their replies in order.
* Every state change happens in one place, :meth:`SMTPConnection._enter`, from the table
  :data:`TRANSITIONS` (state, what happened) -> state. Which command is valid where is
  :data:`ALLOWED`, checked in :meth:`SMTPConnection._dispatch`; a command out of order gets the
  ``503 5.5.1`` (or ``554 5.5.1``) reply :data:`OUT_OF_SEQUENCE` names for it.
* The engine answers what needs no policy itself (syntax, sequence, limits, NOOP, HELP, RSET,
  QUIT) and emits an informational event so the session can log or clean up.
* Peer mistakes are replies, never exceptions; misuse of the API raises :class:`LocalProtocolError`.
* Each protocol error counts; past ``max_errors`` the engine says ``421 4.7.0`` and closes.

What an abusive client gets (Postfix 3.9's answers, so that logs and clients read the same):

* Pipelining discipline (RFC 2920 3.1, Postfix ``smtpd_forbid_unauth_pipelining``), with
  ``strict_pipelining`` and until the client has authenticated: a command whose reply the client
  must wait for (:data:`LAST_IN_GROUP`; before EHLO and after HELO, where PIPELINING was never
  offered, every command) that still has input buffered behind it when it is parsed gets ``554
  5.5.0`` and the engine closes: the open transaction is dropped (:class:`Reset`), nothing of the
  input runs. "Before our reply" is exactly "still buffered", since replies are flushed only when
  :meth:`SMTPConnection.next_event` returns NEED_DATA. A group of MAIL, RCPT and DATA after EHLO,
  the message content after 354 and commands after the final dot stay legal; input after QUIT is
  ignored (221 and close).
* Talking before the greeting: the 220 is queued by the constructor and counts as sent once
  :meth:`SMTPConnection.data_to_send` has returned it. Bytes passed to ``receive_data()`` before
  that are the client talking first (Postfix postscreen's pregreet test): the greeting is
  dropped, ``554 5.5.0`` is queued instead, nothing of the input runs, and next_event() returns
  :class:`Closed`. A session that delays its greeting reads during the delay and hands whatever
  arrived to ``receive_data()`` *before* its first ``data_to_send()``; a session without a delay
  takes the greeting first and is never affected.
* Command lines end with CRLF only, unless ``normalize_bare_newlines`` (RFC 5321 2.3.8): input
  up to the CRLF is one line, and one with a bare LF or bare CR in it gets one ``500 5.5.2``
  (counted as an error) and does not run, so ``EHLO x<LF>NOOP<CRLF>`` is never two commands. In
  normalize mode a bare LF ends a line, as before.
* Lines over their limit (:data:`COMMAND_LINE_MAX`, :data:`PARAM_LINE_MAX`, :data:`AUTH_LINE_MAX`)
  get ``500 5.5.2`` and the session goes on; input without a line end beyond
  :data:`HARD_LINE_MAX` gets ``500 5.5.2`` and ``421 4.7.0`` and the engine closes as soon as
  that much has arrived.
* A line that starts like HTTP (GET, POST, HEAD, PUT, CONNECT) or like a header field
  (``Word:``) gets ``221 2.7.0`` and the engine closes (Postfix ``smtpd_forbidden_commands``).
* A header section over ``max_header_size`` octets: nothing more of the message is emitted, and
  at its end ``552 5.3.4`` (:class:`DataAborted`).
"""

from __future__ import annotations

from . import replies as R
from .common import NEED_DATA, Engine, LocalProtocolError, NeedData
from .dotstuff import DataDecoder
from .replies import Reply
from .smtp_commands import Commands
from .smtp_rules import (
    _ABANDONED,
    _FORBIDDEN,
    ALLOWED,
    AUTH_LINE_MAX,
    COMMAND_LINE_MAX,
    HARD_LINE_MAX,
    LAST_IN_GROUP,
    MAX_RECEIVED_HEADERS,
    NOT_IMPLEMENTED,
    OUT_OF_SEQUENCE,
    PARAM_LINE_MAX,
    TRANSITIONS,
)
from .smtp_events import (
    AuthDone,
    AuthLookup,
    AuthStart,
    Closed,
    Connect,
    DataAborted,
    DataChunk,
    DataStart,
    Decision,
    EndOfData,
    Etrn,
    Event,
    Expn,
    Hello,
    MailFrom,
    RcptTo,
    Reset,
    SMTPConfig,
    StartTLS,
    State,
    Vrfy,
)

__all__ = [
    "NEED_DATA",
    "ALLOWED",
    "AUTH_LINE_MAX",
    "COMMAND_LINE_MAX",
    "HARD_LINE_MAX",
    "LAST_IN_GROUP",
    "OUT_OF_SEQUENCE",
    "PARAM_LINE_MAX",
    "TRANSITIONS",
    "Closed",
    "Connect",
    "DataAborted",
    "DataChunk",
    "DataStart",
    "Decision",
    "EndOfData",
    "Etrn",
    "Event",
    "Expn",
    "Hello",
    "LocalProtocolError",
    "MailFrom",
    "RcptTo",
    "AuthDone",
    "AuthLookup",
    "AuthStart",
    "Reset",
    "SMTPConfig",
    "StartTLS",
    "SMTPConnection",
    "State",
    "Vrfy",
]

# The wire form of the catalogue's fixed replies, made once: most replies of a session are these
# (250 after MAIL and RCPT, 354). Keyed by identity: they are module constants, never collected.
_ENCODED: dict[int, bytes] = {id(r): r.encode() for r in vars(R).values() if isinstance(r, Reply)}


class SMTPConnection(Commands, Engine):
    """One SMTP server connection's protocol state. See the module docstring."""

    decision_type = Decision
    closed_type = Closed
    lookup_type = AuthLookup
    transitions = TRANSITIONS
    allowed = ALLOWED
    line_too_long = R.LINE_TOO_LONG
    bad_characters = R.BAD_CHARACTERS
    auth_failed = R.AUTH_FAILED
    auth_malformed = R.CANNOT_DECODE
    auth_abandoned = _ABANDONED

    def __init__(self, config: SMTPConfig) -> None:
        super().__init__(AUTH_LINE_MAX, HARD_LINE_MAX, crlf_only=not config.normalize_bare_newlines)
        self.config = config
        self.state = State.CONNECTED
        self.esmtp = False
        self.helo = ""
        self.recipients = 0
        self.mail: MailFrom | None = None  # the accepted MAIL of the open transaction
        self.tls_active = config.tls_active
        self.authenticated: str | None = None  # the SASL authcid after 235
        self._auth_initial: bytes | None = None  # AUTH's initial response, until AuthStart's answer
        self._decoder: DataDecoder | None = None
        self._data_size = 0
        self._greeting_taken = False  # data_to_send() has returned the 220
        self._greeting_queued = False
        self._talked_first = False  # input arrived while the Connect decision was open
        if config.connect_decision:
            self._emit(Connect())
        else:
            self._greet(None)

    # --- the I/O side ----------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` means the peer closed its side. Bytes before the
        greeting was taken by data_to_send() close the connection (see the module docstring)."""
        if data and not self._greeting_queued and not self.closed:
            self._talked_first = True  # judged when the Connect decision is answered
            return
        if data and not self._greeting_taken and not self.closed:
            self._out.clear()  # the greeting is never sent
            self._abort(R.SYNCHRONIZATION, "input before the greeting")
            return
        super().receive_data(data)

    def data_to_send(self) -> bytes:
        self._greeting_taken = self._greeting_queued
        return super().data_to_send()

    def _greet(self, reply: Reply | None) -> None:
        self._greeting_queued = True
        self._send(reply or Reply(code=220, enhanced=None,
                                  text=f"{self.config.hostname} {self.config.greeting_text}"))

    def next_event(self) -> Event | NeedData:
        return super().next_event()  # type: ignore[no-any-return]

    def _advance(self) -> bool:
        if self.state is State.DATA:
            return self._pump_data()
        if self.state is State.TLS_HANDSHAKE:
            return False
        return self._next_line(self.state is State.AUTH)


    # --- answers to decisions --------------------------------------------------------------
    def accept(self, reply: Reply | None = None) -> None:
        """Say yes to the pending decision (``reply`` replaces the default positive reply)."""
        event = self._take_pending()
        match event:
            case Connect() if self._talked_first:  # the client spoke before the greeting
                self._abort(R.SYNCHRONIZATION, "input before the greeting")
            case Connect():
                self._greet(reply)
            case Hello():
                self._hello_accepted(event, reply)
            case MailFrom():
                self._enter("mail")
                self.mail = event
                self._send(reply or R.SENDER_OK)
            case RcptTo():
                self._enter("rcpt")
                self.recipients += 1
                self._send(reply or R.RECIPIENT_OK)
            case DataStart():
                self._enter("data")
                self._decoder = DataDecoder(normalize=self.config.normalize_bare_newlines,
                                            max_header_size=self.config.max_header_size)
                self._data_size = 0
                self._send(reply or R.START_DATA)
            case EndOfData():
                self._end_transaction(reply or R.OK)
            case Vrfy() | Expn():
                if reply is None:
                    raise LocalProtocolError("VRFY/EXPN need an explicit reply")
                self._send(reply)
            case Etrn():
                self._send(reply or R.etrn_started(event.node))
            case StartTLS():
                self._send(reply or R.READY_FOR_TLS)
                self._lines.clear()  # RFC 3207 5: pipelined plaintext is never executed
                self._enter("starttls")
            case AuthStart():
                self._auth_begin(event)
            case AuthLookup():
                raise LocalProtocolError("answer AuthLookup with auth_resolve()")

    def reject(self, reply: Reply) -> None:
        """Say no to the pending decision with a 4xx/5xx ``reply``."""
        if reply.is_positive:
            raise LocalProtocolError(f"reject() needs a negative reply, got {reply.code}")
        event = self._take_pending()
        if isinstance(event, Connect):
            self._greeting_queued = True
            self._stop(reply, "refused at connect")
        elif isinstance(event, EndOfData):
            self._end_transaction(reply)
        elif isinstance(event, AuthLookup):
            raise LocalProtocolError("answer AuthLookup with auth_resolve()")
        else:
            self._error(reply)

    def close_with(self, reply: Reply) -> None:
        """Send a final reply (421 on shutdown or timeout) and stop."""
        self._pending = None
        self._events.clear()
        self._send(reply)
        self._enter("close")

    def _abort(self, final: Reply, reason: str) -> None:
        """End the session at once with ``final``: the open transaction is dropped and nothing
        still buffered runs."""
        self._reset_transaction()
        super()._abort(final, reason)

    def tls_started(self) -> None:
        """After the TLS handshake: forget everything said in plaintext (RFC 3207 4.2); the
        client must say EHLO again."""
        if self.state is not State.TLS_HANDSHAKE:
            raise LocalProtocolError("tls_started() without an accepted STARTTLS")
        self._lines.clear()
        self._events.clear()
        self._enter("tls-started")
        self.tls_active = True
        self.esmtp = False
        self.helo = ""
        self.recipients = 0
        self.mail = None

    # --- internals -------------------------------------------------------------------------
    def _send(self, reply: Reply) -> None:
        self._out.append(_ENCODED.get(id(reply)) or reply.encode())

    def _encode_error(self, error: Reply) -> bytes:
        return error.encode()

    def _closing(self, why: str) -> Reply:
        """421 (RFC 5321 3.8), after the reply to the line that made the engine close."""
        return R.closing(self.config.hostname, "4.7.0", f"Error: {why}")

    def _reset_transaction(self) -> None:
        if self.state in (State.MAIL, State.RCPT):
            self._emit(Reset())
        self._enter("reset")
        self.recipients = 0
        self.mail = None

    def _end_transaction(self, reply: Reply) -> None:
        self._enter("end-of-data")
        self.recipients = 0
        self.mail = None
        self._decoder = None
        if reply.is_positive:
            self._send(reply)
        else:
            self._error(reply)

    # --- commands --------------------------------------------------------------------------
    def _screen(self, raw: bytes) -> bool:
        if _FORBIDDEN.match(raw):  # before anything else: no reply to it but this one
            self._abort(R.FORBIDDEN_COMMAND, "HTTP request or header line as a command")
            return False
        return True

    def _strip_line_end(self, raw: bytes) -> bytes | Reply:
        """The line without its line end, or the 500 for a CRLF line that holds a bare LF or
        bare CR (RFC 5321 2.3.8). In normalize mode any run of CR/LF ends a line."""
        if not self._lines.crlf_only:
            return raw.rstrip(b"\r\n")
        line = raw[:-2]
        if b"\n" in line:
            return R.BARE_LF_IN_COMMAND
        if b"\r" in line:
            return R.BARE_CR_IN_COMMAND
        return line

    def _admit(self, verb: str, raw: bytes) -> bool:
        """RFC 2920 3.1 pipelining discipline (see the module docstring), then the line limit
        of ``verb`` (RFC 5321 4.5.3.1.4, RFC 4954 4)."""
        if self._must_wait(verb) and len(self._lines):
            self._abort(R.SYNCHRONIZATION, f"improper command pipelining after {verb[:16]!r}")
            return False
        if verb == "AUTH":
            limit = AUTH_LINE_MAX
        elif verb in ("MAIL", "RCPT") and self.esmtp:
            limit = PARAM_LINE_MAX
        else:
            limit = COMMAND_LINE_MAX
        if len(raw) > limit:
            self._error(R.LINE_TOO_LONG)
            return False
        return True

    def _must_wait(self, verb: str) -> bool:
        """Whether the client had to wait for our reply to ``verb`` before sending more (RFC
        2920 3.1): only with strict_pipelining, and not once authenticated (as Postfix)."""
        if not self.config.strict_pipelining or self.authenticated is not None or verb == "QUIT":
            return False
        return not self.esmtp or verb in LAST_IN_GROUP  # no PIPELINING offered: every command

    def _states_allowing(self, verb: str) -> frozenset[State] | None:
        if verb == "ETRN" and not self.config.etrn:
            return None  # switched off: as if we did not know it (any state)
        return ALLOWED.get(verb)

    def _unknown(self, verb: str) -> Reply:
        """502 for a command we know but do not offer (RFC 5321 4.2.4), else 500."""
        return R.NOT_IMPLEMENTED if verb in NOT_IMPLEMENTED or verb == "ETRN" else R.UNRECOGNIZED

    def _out_of_sequence(self, verb: str) -> Reply:
        if self.state is State.CONNECTED:
            return R.NEED_HELO
        return OUT_OF_SEQUENCE.get((self.state, verb), R.NEED_RCPT)

    def _auth_begin(self, event: AuthStart) -> None:
        initial, self._auth_initial = self._auth_initial, None
        self._auth_start(event.mechanism, initial)

    def _challenge(self, data: bytes) -> bytes:
        return Reply(code=334, enhanced=None, text=data.decode()).encode()

    def _auth_end(self, user: str | None, reason: str) -> None:
        """AuthDone for the session; 235 on success (RFC 4954 4)."""
        assert self._auth is not None
        self._enter("auth-done")
        self.authenticated = user
        self._emit(AuthDone(mechanism=self._auth.name, user=user, reason=reason))
        self._auth = None
        if user is not None:
            self._send(R.AUTH_OK)

    # --- DATA ------------------------------------------------------------------------------
    def _pump_data(self) -> bool:
        """Move buffered bytes through the DATA decoder; False when more input is needed."""
        raw = self._lines.take_rest()
        if not raw:
            return False
        decoder = self._decoder
        assert decoder is not None
        result = decoder.feed(raw)
        self._data_size += result.dropped  # refused anyway, but the size must not depend on reads
        if result.content:
            self._data_size += len(result.content)
            if self._data_size <= self.config.max_message_size and not decoder.header_too_large:
                self._emit(DataChunk(data=result.content))
        if result.ended:
            self._lines.feed(result.rest)  # the next commands, parsed after the final reply
            self._finish_data(decoder)
        return True

    def _finish_data(self, decoder: DataDecoder) -> None:
        problem = None
        if self._data_size > self.config.max_message_size:
            problem = R.MESSAGE_TOO_BIG
        elif decoder.header_too_large:
            problem = R.HEADER_TOO_LARGE
        elif decoder.bare_newline and not self.config.normalize_bare_newlines:
            problem = R.BARE_NEWLINE
        elif decoder.line_too_long:
            problem = R.TEXT_LINE_TOO_LONG
        elif decoder.received_count >= MAX_RECEIVED_HEADERS:
            problem = R.TOO_MANY_HOPS
        if problem is None:
            self._emit(EndOfData(size=self._data_size, received_count=decoder.received_count))
        else:
            self._emit(DataAborted(reply=problem))
            self._end_transaction(problem)
