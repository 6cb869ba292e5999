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

import base64
import re
from typing import Final

from . import replies as R
from . import sasl
from .address import (
    AddressError,
    Path,
    is_domain,
    parse_mail_argument,
    parse_mail_params,
    parse_path,
    parse_rcpt_params,
    split_params,
)
from .buffer import TOO_LONG
from .common import NEED_DATA, Engine, LocalProtocolError, NeedData, ascii_upper
from .dotstuff import DataDecoder
from .replies import Reply
from .sasl_exchange import Abandoned, Cause, Exchange, Outcome
from .smtp_events import (
    AuthDone,
    AuthLookup,
    AuthStart,
    Closed,
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
    "Closed",
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

# RFC 5321 4.5.3.1.4: command lines are at most 512 octets with CRLF. MAIL and RCPT may carry
# ESMTP parameters that extensions allow to grow the line (RFC 1870 section 3, RFC 3461 4,
# RFC 4954 5); 512 + 1024 covers every parameter we accept: the longest RCPT (a 256-octet
# path, NOTIFY with all three values, a 500-character ORCPT) is about 800 octets, the longest
# MAIL (SIZE, BODY, SMTPUTF8, RET, a 100-character ENVID and an AUTH=<xtext mailbox>) stays
# below 1536. The buffer never holds more.
COMMAND_LINE_MAX: Final = 512
PARAM_LINE_MAX: Final = COMMAND_LINE_MAX + 1024
# RFC 4954 section 4: AUTH lines (the command with an initial response, and each response) may
# be up to 12288 octets.
AUTH_LINE_MAX: Final = 12288
# Input without a line end is skipped beyond the line limits above, but not forever: a client
# that has sent this much without CRLF is not speaking SMTP, and waiting for its line end would
# let it hold the connection for as long as it keeps sending. The buffer never holds it all.
HARD_LINE_MAX: Final = 64 * 1024
# RFC 2920 3.1: the reply to these changes what the client may say next, so a client must wait
# for it; Postfix's smtpd_forbid_unauth_pipelining holds them to it. STARTTLS (RFC 3207 4.2)
# and AUTH (RFC 4954 4) likewise. QUIT is not here: what follows it is ignored anyway.
LAST_IN_GROUP: Final = frozenset({"EHLO", "HELO", "DATA", "STARTTLS", "AUTH"})
# Postfix's smtpd_forbidden_commands (CONNECT GET POST and /^[^ ]+:/): a line like an HTTP
# request or a mail header field is a client talking another protocol or a confused one; MAIL
# FROM:<x> and RCPT TO:<x> have a space before their colon and never match.
_FORBIDDEN: Final = re.compile(rb"(?:GET|POST|HEAD|PUT|CONNECT)(?:[ \t\r\n]|$)|[A-Za-z][A-Za-z0-9-]*:",
                               re.IGNORECASE)
# The reply to a SASL exchange the client side ended (RFC 4954 4: 501 for "*" and bad base64).
_ABANDONED: Final = {
    Cause.TOO_LONG: R.AUTH_LINE_TOO_LONG,
    Cause.CANCELLED: R.AUTH_CANCELLED,
    Cause.BAD_BASE64: R.CANNOT_DECODE,
}
# RFC 5321 6.3 leaves the hop limit to the server; "at least 100" is its advice.
MAX_RECEIVED_HEADERS: Final = 100


# --- the transition table ------------------------------------------------------------------
_ANY_BUT_DATA = frozenset({State.CONNECTED, State.GREETED, State.MAIL, State.RCPT})
ALLOWED: Final[dict[str, frozenset[State]]] = {
    "HELO": _ANY_BUT_DATA,
    "EHLO": _ANY_BUT_DATA,
    "MAIL": frozenset({State.GREETED}),
    "RCPT": frozenset({State.MAIL, State.RCPT}),
    "DATA": frozenset({State.RCPT}),
    "RSET": _ANY_BUT_DATA,
    "NOOP": _ANY_BUT_DATA,
    "QUIT": _ANY_BUT_DATA,
    "HELP": _ANY_BUT_DATA,
    "VRFY": _ANY_BUT_DATA,
    "EXPN": _ANY_BUT_DATA,
    # RFC 3207 4 and RFC 4954 4: after EHLO, never inside a mail transaction.
    "STARTTLS": frozenset({State.GREETED}),
    "AUTH": frozenset({State.GREETED}),
    # RFC 1985 asks for no particular state; a queue run is no business of a transaction.
    "ETRN": frozenset({State.GREETED}),
}
# What happens, by state, and the state it leads to. :meth:`SMTPConnection._enter` applies it and
# is the only place that changes ``state``; a state of None stands for every state not named.
# "mail", "rcpt", "data", "starttls", "hello": the session accepted that decision; "auth-step":
# a challenge or a look-up; "reset": RSET, HELO/EHLO or a violation that drops the transaction.
_S = State
TRANSITIONS: Final[dict[tuple[State | None, str], State]] = {
    (_S.CONNECTED, "hello"): _S.GREETED,
    (_S.GREETED, "hello"): _S.GREETED,
    (_S.GREETED, "mail"): _S.MAIL,
    (_S.MAIL, "rcpt"): _S.RCPT,
    (_S.RCPT, "rcpt"): _S.RCPT,
    (_S.RCPT, "data"): _S.DATA,
    (_S.DATA, "end-of-data"): _S.GREETED,
    (_S.CONNECTED, "reset"): _S.CONNECTED,  # nothing to reset before HELO/EHLO
    (None, "reset"): _S.GREETED,
    (_S.GREETED, "starttls"): _S.TLS_HANDSHAKE,
    (_S.TLS_HANDSHAKE, "tls-started"): _S.CONNECTED,  # RFC 3207 4.2: EHLO again
    (_S.GREETED, "auth-step"): _S.AUTH,
    (_S.AUTH, "auth-step"): _S.AUTH,
    (_S.GREETED, "auth-done"): _S.GREETED,  # an initial response settled it at once
    (_S.AUTH, "auth-done"): _S.GREETED,
    (_S.CONNECTED, "quit"): _S.CLOSED,
    (_S.GREETED, "quit"): _S.CLOSED,
    (_S.MAIL, "quit"): _S.CLOSED,
    (_S.RCPT, "quit"): _S.CLOSED,
    (None, "close"): _S.CLOSED,  # 421, 554, 221 2.7.0 or close_with()
    (None, "peer-closed"): _S.CLOSED,
}
# The reply to a command its state does not allow (ALLOWED), by state and command; before
# HELO/EHLO every such command gets 503 5.5.1 "send HELO/EHLO first".
OUT_OF_SEQUENCE: Final[dict[tuple[State, str], Reply]] = {
    (_S.GREETED, "RCPT"): R.NEED_MAIL,
    (_S.GREETED, "DATA"): R.NEED_MAIL,
    (_S.MAIL, "MAIL"): R.NESTED_MAIL,
    (_S.RCPT, "MAIL"): R.NESTED_MAIL,
    (_S.MAIL, "DATA"): R.NO_VALID_RECIPIENTS,  # RFC 5321 3.3: 554 once every RCPT was refused
    **{(state, verb): R.IN_TRANSACTION for state in (_S.MAIL, _S.RCPT)
       for verb in ("STARTTLS", "AUTH", "ETRN")},  # RFC 3207 4, RFC 4954 4: not in a transaction
}
# Known to RFC 821/5321 or common, but not offered: 502 rather than 500 (RFC 5321 4.2.4).
# ETRN is a real command that the configuration may switch off (then 502 as well).
NOT_IMPLEMENTED: Final = frozenset({"SEND", "SOML", "SAML", "TURN", "BDAT", "ATRN"})


_USAGE: Final = {
    "HELO": "HELO hostname",
    "EHLO": "EHLO hostname",
    "MAIL": "MAIL FROM:<address>",
    "RCPT": "RCPT TO:<address>",
    "DATA": "DATA",
    "RSET": "RSET",
    "QUIT": "QUIT",
    "VRFY": "VRFY address",
    "EXPN": "EXPN mailing-list",
    "STARTTLS": "STARTTLS",
    "AUTH": "AUTH mechanism [initial-response]",
    "ETRN": "ETRN [@|#]<domain>",
}


class SMTPConnection(Engine):
    """One SMTP server connection's protocol state. See the module docstring."""

    def __init__(self, config: SMTPConfig) -> None:
        super().__init__(AUTH_LINE_MAX, HARD_LINE_MAX, crlf_only=not config.normalize_bare_newlines)
        self.config = config
        self.state = State.CONNECTED
        self.esmtp = False
        self.helo = ""
        self.errors = 0
        self.recipients = 0
        self.mail: MailFrom | None = None  # the accepted MAIL of the open transaction
        self.tls_active = config.tls_active
        self.authenticated: str | None = None  # the SASL authcid after 235
        self._auth: Exchange | None = None  # the SASL exchange under way
        self._auth_initial: bytes | None = None  # AUTH's initial response, until AuthStart's answer
        self._decoder: DataDecoder | None = None
        self._data_size = 0
        self._greeting_taken = False  # data_to_send() has returned the 220
        self._send(Reply(code=220, enhanced=None, text=f"{config.hostname} {config.greeting_text}"))

    # --- the I/O side ----------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` means the peer closed its side. Bytes before the
        greeting was taken by data_to_send() close the connection (see the module docstring)."""
        if data and not self._greeting_taken and not self.closed:
            self._out.clear()  # the greeting is never sent
            self._abort(R.SYNCHRONIZATION, "input before the greeting")
            return
        super().receive_data(data)

    def data_to_send(self) -> bytes:
        self._greeting_taken = True
        return super().data_to_send()

    decision_type = Decision
    closed_type = Closed

    def next_event(self) -> Event | NeedData:
        return super().next_event()  # type: ignore[no-any-return]

    def _advance(self) -> bool:
        if self.state is State.DATA:
            return self._pump_data()
        if self.state is State.TLS_HANDSHAKE:
            return False
        return self._next_line(self.state is State.AUTH)

    def _peer_gone(self) -> None:
        self._enter("peer-closed")

    def _enter(self, step: str) -> None:
        """The one place ``state`` changes: to what :data:`TRANSITIONS` says ``step`` leads."""
        target = TRANSITIONS.get((self.state, step)) or TRANSITIONS.get((None, step))
        if target is None:
            raise LocalProtocolError(f"no transition for {step!r} in state {self.state.value}")
        self.state = target

    # --- answers to decisions --------------------------------------------------------------
    def accept(self, reply: Reply | None = None) -> None:
        """Say yes to the pending decision (``reply`` replaces the default positive reply)."""
        event = self._take_pending()
        match event:
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
        if isinstance(event, EndOfData):
            self._end_transaction(reply)
        elif isinstance(event, AuthLookup):
            raise LocalProtocolError("answer AuthLookup with auth_resolve()")
        else:
            self._error(reply)

    def close_with(self, reply: Reply) -> None:
        """Send a final reply (421 on shutdown or timeout) and stop."""
        self._pending = None
        self._events.clear()
        self._close(reply)

    def _close(self, reply: Reply) -> None:
        self._send(reply)
        self._enter("close")

    def _abort(self, reply: Reply, reason: str) -> None:
        """End the session at once with ``reply``: the open transaction is dropped and nothing
        still buffered runs."""
        self._reset_transaction()
        self._lines.clear()
        self._close(reply)
        self._emit(Closed(reason=reason))

    def _overflow(self) -> None:
        """Input without a line end beyond HARD_LINE_MAX: say why, then 421 and close now."""
        if self.state is State.AUTH:
            self._auth_finish(None, Exchange.abandon(Cause.OVERFLOW).reason)
            self._send(R.AUTH_LINE_TOO_LONG)
        else:
            self._send(R.LINE_TOO_LONG)
        self._abort(R.closing(self.config.hostname, "4.7.0", "Error: line too long"),
                    "line without end too long")

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

    def auth_resolve(self, answer: object) -> None:
        """Answer the pending AuthLookup with what the directory said."""
        event = self._take_pending()
        if not isinstance(event, AuthLookup) or self._auth is None:
            raise LocalProtocolError("no AuthLookup is pending")
        self._auth_step(self._auth.resolve(answer))

    # --- internals -------------------------------------------------------------------------
    def _send(self, reply: Reply) -> None:
        self._out.append(reply.encode())

    def _error(self, reply: Reply) -> None:
        """Send a negative reply; too many of them end the session (Postfix: hard_error_limit)."""
        self._send(reply)
        self.errors += 1
        if self.errors >= self.config.max_errors and self.state is not State.CLOSED:
            self._close(R.closing(self.config.hostname, "4.7.0", "Error: too many errors"))
            self._emit(Closed(reason="too many errors"))

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
    def _command(self, raw: bytes | object) -> None:
        if raw is TOO_LONG:
            self._error(R.LINE_TOO_LONG)
            return
        assert isinstance(raw, bytes)
        if _FORBIDDEN.match(raw):  # before anything else: no reply to it but this one
            self._abort(R.FORBIDDEN_COMMAND, "HTTP request or header line as a command")
            return
        line = self._strip_line_end(raw)
        if isinstance(line, Reply):
            self._error(line)
            return
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._error(R.BAD_CHARACTERS)
            return
        if "\x00" in text or "\r" in text:
            self._error(R.BAD_CHARACTERS)
            return
        verb, _, arg = text.partition(" ")
        verb = ascii_upper(verb)
        if self._must_wait(verb) and len(self._lines):
            self._abort(R.SYNCHRONIZATION, f"improper command pipelining after {verb[:16]!r}")
            return
        if verb == "AUTH":
            limit = AUTH_LINE_MAX
        elif verb in ("MAIL", "RCPT") and self.esmtp:
            limit = PARAM_LINE_MAX
        else:
            limit = COMMAND_LINE_MAX
        if len(raw) > limit:
            self._error(R.LINE_TOO_LONG)
            return
        self._dispatch(verb, arg.strip(" "))

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

    def _must_wait(self, verb: str) -> bool:
        """Whether the client had to wait for our reply to ``verb`` before sending more (RFC
        2920 3.1): only with strict_pipelining, and not once authenticated (as Postfix)."""
        if not self.config.strict_pipelining or self.authenticated is not None or verb == "QUIT":
            return False
        return not self.esmtp or verb in LAST_IN_GROUP  # no PIPELINING offered: every command

    def _dispatch(self, verb: str, arg: str) -> None:
        allowed = ALLOWED.get(verb)
        if verb == "ETRN" and not self.config.etrn:
            self._error(R.NOT_IMPLEMENTED)  # switched off: as if we did not know it (any state)
        elif allowed is None:
            self._error(R.NOT_IMPLEMENTED if verb in NOT_IMPLEMENTED else R.UNRECOGNIZED)
        elif self.state not in allowed:
            self._error(R.NEED_HELO if self.state is State.CONNECTED
                        else OUT_OF_SEQUENCE.get((self.state, verb), R.NEED_RCPT))
        else:
            getattr(self, f"_do_{verb.lower()}")(arg)

    def _do_helo(self, arg: str, esmtp: bool = False) -> None:
        domain = arg.split(" ")[0] if arg else ""
        if not domain:
            self._error(R.syntax(_USAGE["EHLO" if esmtp else "HELO"]))
            return
        self._reset_transaction()
        self._emit(Hello(esmtp=esmtp, domain=domain))

    def _do_ehlo(self, arg: str) -> None:
        self._do_helo(arg, esmtp=True)

    def _hello_accepted(self, event: Hello, reply: Reply | None) -> None:
        self._enter("hello")
        self.esmtp = event.esmtp
        self.helo = event.domain
        if reply is not None:
            self._send(reply)
        elif event.esmtp:
            self._send(Reply(code=250, enhanced=None, text=(self.config.hostname, *self.extensions())))
        else:
            self._send(Reply(code=250, enhanced=None, text=self.config.hostname))

    def extensions(self) -> list[str]:
        """The EHLO keywords, in Postfix's order."""
        c = self.config
        ext = ["PIPELINING", f"SIZE {c.max_message_size}"]
        if c.vrfy:
            ext.append("VRFY")
        if c.etrn:
            ext.append("ETRN")
        if c.tls_available and not self.tls_active:
            ext.append("STARTTLS")
        mechanisms = self.offered_mechanisms()
        if mechanisms:
            ext.append("AUTH " + " ".join(mechanisms))
            if c.auth_legacy_line:
                ext.append("AUTH=" + " ".join(mechanisms))
        ext += list(c.extra_extensions)
        ext += ["ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "SMTPUTF8"]
        return ext

    def offered_mechanisms(self) -> tuple[str, ...]:
        c = self.config
        return c.auth_mechanisms if self.tls_active or not c.auth_requires_tls else ()

    def _do_mail(self, arg: str) -> None:
        if self.config.auth_required and self.authenticated is None:
            self._error(R.AUTH_REQUIRED)
            return
        parsed = self._path_and_params(arg, "FROM", "MAIL")
        if parsed is None:
            return
        path_text, params = parsed
        checked = parse_mail_params(params, max_message_size=self.config.max_message_size,
                                    auth=bool(self.config.auth_mechanisms))
        if isinstance(checked, Reply):
            self._error(checked)
            return
        try:
            path = parse_path(path_text, utf8=checked.smtputf8, allow_null=True)
        except AddressError as e:
            self._error(_address_reply(e, "5.1.7", "sender", checked.smtputf8))
            return
        self._emit(MailFrom(path=path, params=params, size=checked.size, body=checked.body,
                            smtputf8=checked.smtputf8, ret=checked.ret, envid=checked.envid))

    def _path_and_params(self, arg: str, keyword: str, verb: str) -> tuple[str, dict[str, str | None]] | None:
        """Split a MAIL/RCPT argument; None (with the error sent) when it does not parse."""
        try:
            path_text, param_text = parse_mail_argument(arg, keyword)
        except AddressError:
            self._error(R.syntax(_USAGE[verb]))
            return None
        try:
            params = split_params(param_text)
        except AddressError as e:
            self._error(R.bad_parameters(str(e)))  # a bad word or a parameter given twice
            return None
        if params and not self.esmtp:
            self._error(R.UNSUPPORTED_PARAMETER)  # RFC 5321 4.1.1.2: parameters need EHLO
            return None
        return path_text, params

    def _do_rcpt(self, arg: str) -> None:
        parsed = self._path_and_params(arg, "TO", "RCPT")
        if parsed is None:
            return
        path_text, params = parsed
        checked = parse_rcpt_params(params)
        if isinstance(checked, Reply):
            self._error(checked)
            return
        notify, orcpt = checked
        if self.recipients >= self.config.max_recipients:
            self._error(R.TOO_MANY_RECIPIENTS)  # RFC 5321 4.5.3.1.10
            return
        try:
            path = parse_path(path_text, utf8=self._smtputf8, allow_bare_postmaster=True)
        except AddressError as e:
            self._error(_address_reply(e, "5.1.3", "recipient", self._smtputf8))
            return
        self._emit(RcptTo(path=path, params=params, notify=notify, orcpt=orcpt))

    @property
    def _smtputf8(self) -> bool:
        return self.mail is not None and self.mail.smtputf8

    def _do_data(self, arg: str) -> None:
        if arg:
            self._error(R.syntax(_USAGE["DATA"]))
            return
        self._emit(DataStart())

    def _do_rset(self, arg: str) -> None:
        if arg:
            self._error(R.syntax(_USAGE["RSET"]))
            return
        self._reset_transaction()
        self._send(R.RESET_OK)

    def _do_noop(self, arg: str) -> None:
        self._send(R.NOOP_OK)  # RFC 5321 4.1.1.9: a parameter is allowed and ignored

    def _do_quit(self, arg: str) -> None:
        if arg:
            self._error(R.syntax(_USAGE["QUIT"]))
            return
        self._send(Reply(code=221, enhanced="2.0.0", text=f"{self.config.hostname} Bye"))
        self._enter("quit")
        self._emit(Closed(reason="quit"))

    def _do_help(self, arg: str) -> None:
        self._send(Reply(code=214, enhanced="2.0.0", text=(
            "Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY EXPN STARTTLS AUTH ETRN",
            "See RFC 5321 for their syntax",
        )))

    def _do_vrfy(self, arg: str) -> None:
        if not arg:
            self._error(R.syntax(_USAGE["VRFY"]))
            return
        self._emit(Vrfy(argument=arg))

    def _do_expn(self, arg: str) -> None:
        if not arg:
            self._error(R.syntax(_USAGE["EXPN"]))
            return
        self._emit(Expn(argument=arg))

    def _do_etrn(self, arg: str) -> None:
        """RFC 1985: ``ETRN example.org``, ``ETRN @example.org`` (and its subdomains) or
        ``ETRN #queue``. Reached only when enabled and outside a transaction."""
        if not arg or " " in arg:
            self._error(R.ETRN_SYNTAX)
        elif arg.startswith("#"):
            name = arg[1:]
            if not name or not name.isascii() or not name.isprintable():
                self._error(R.ETRN_SYNTAX)
            else:
                self._emit(Etrn(domain=None, queue_name=name))
        else:
            subdomains = arg.startswith("@")
            domain = arg[1:] if subdomains else arg
            if not is_domain(domain):
                self._error(R.ETRN_SYNTAX)
            else:
                self._emit(Etrn(domain=domain.lower(), subdomains=subdomains))

    # --- STARTTLS (RFC 3207) and AUTH (RFC 4954) ---------------------------------------------
    def _do_starttls(self, arg: str) -> None:
        if arg:
            self._error(R.syntax(_USAGE["STARTTLS"]))
        elif self.tls_active:
            self._error(R.TLS_ALREADY_ACTIVE)
        elif not self.config.tls_available:
            self._error(R.NOT_IMPLEMENTED)
        else:
            self._emit(StartTLS())

    def _do_auth(self, arg: str) -> None:
        name, _, initial_text = arg.partition(" ")
        name = ascii_upper(name)
        if not self.config.auth_mechanisms:
            self._error(R.NOT_IMPLEMENTED)
        elif not name:
            self._error(R.syntax(_USAGE["AUTH"]))
        elif self.authenticated is not None:
            self._error(R.ALREADY_AUTHENTICATED)
        elif not self.esmtp:
            self._error(R.NEED_EHLO_FOR_AUTH)
        elif name not in self.config.auth_mechanisms:
            self._error(R.UNKNOWN_MECHANISM)
        elif not self.offered_mechanisms():
            self._error(R.ENCRYPTION_REQUIRED)
        else:
            text = initial_text.strip()
            initial = sasl.decode_response(text) if text else None
            if text and initial is None:
                self._error(R.CANNOT_DECODE)
                return
            self._auth_initial = initial
            self._emit(AuthStart(mechanism=name))

    @property
    def _mech(self) -> sasl.Mechanism | None:
        """The mechanism of the exchange under way (tests fix a CRAM-MD5 challenge through it)."""
        return None if self._auth is None else self._auth.mechanism

    def _auth_begin(self, event: AuthStart) -> None:
        self._auth = Exchange(event.mechanism, hostname=self.config.hostname)
        initial, self._auth_initial = self._auth_initial, None
        self._auth_step(self._auth.start(initial))

    def _auth_step(self, step: Outcome) -> None:
        match step:
            case sasl.Challenge(data=data):
                self._enter("auth-step")
                self._send(Reply(code=334, enhanced=None, text=base64.b64encode(data).decode()))
            case sasl.CheckPassword() | sasl.NeedSecret() | sasl.NeedScram():
                self._enter("auth-step")
                self._emit(AuthLookup(request=step))
            case sasl.Success(authcid=user):
                self._auth_finish(user, "")
                self._send(R.AUTH_OK)
            case sasl.Failure(reason=reason, malformed=malformed):
                self._auth_finish(None, reason)
                self._error(R.CANNOT_DECODE if malformed else R.AUTH_FAILED)
            case Abandoned(cause=cause, reason=reason):
                self._auth_finish(None, reason)
                self._error(_ABANDONED[cause])

    def _auth_finish(self, user: str | None, reason: str) -> None:
        assert self._auth is not None
        self._enter("auth-done")
        self.authenticated = user
        self._emit(AuthDone(mechanism=self._auth.name, user=user, reason=reason))
        self._auth = None

    def _auth_response(self, raw: bytes | object) -> None:
        """A client line inside the SASL exchange (RFC 4954 4)."""
        assert self._auth is not None
        line = raw if raw is TOO_LONG else self._strip_line_end(raw)  # type: ignore[arg-type]
        if isinstance(line, Reply):  # the 500 for a bare CR or LF, as for a command line
            self._auth_finish(None, Exchange.abandon(Cause.BARE_NEWLINE).reason)
            self._error(line)
        else:
            self._auth_step(self._auth.respond(line))

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


def _address_reply(error: AddressError, enhanced: str, role: str, utf8: bool) -> Reply:
    if not utf8 and "SMTPUTF8" in str(error):
        return Reply(code=553, enhanced="5.6.7", text=f"Error: non-ASCII {role} address needs SMTPUTF8 (RFC 6531)")
    return Reply(code=501, enhanced=enhanced, text=f"Error: bad {role} address syntax: {error}")
