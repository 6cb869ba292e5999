"""The SMTP engine's vocabulary: its states, the events :meth:`SMTPConnection.next_event
<taube.proto.smtp.SMTPConnection.next_event>` returns, and :class:`SMTPConfig`.

The rules: every event is a frozen, slotted, keyword-only dataclass; a :class:`Decision` must be
answered (accept() or reject()) before the engine reads on; the other events only inform.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from . import sasl
from .address import Path
from .replies import Reply


class State(enum.Enum):
    CONNECTED = "connected"  # greeting sent, no HELO/EHLO yet
    GREETED = "greeted"  # HELO/EHLO done, no transaction
    MAIL = "mail"  # MAIL accepted, no recipient yet
    RCPT = "rcpt"  # at least one recipient accepted
    DATA = "data"  # receiving the message content
    AUTH = "auth"  # inside a SASL exchange: lines are responses, not commands
    TLS_HANDSHAKE = "tls-handshake"  # 220 sent after STARTTLS: nothing is read until tls_started()
    CLOSED = "closed"  # QUIT or 421 sent: flush and close


# --- events --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of everything next_event() returns."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision(Event):
    """An event the session must answer with accept() or reject() before reading on."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Connect(Decision):
    """Only with ``SMTPConfig(connect_decision=True)``, and first: may this client be greeted?
    accept() queues the 220 greeting (``reply`` replaces it), reject(reply) queues that reply
    (a ``554 5.7.1`` for a listed client, a ``421 4.7.0`` over a limit) and closes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello(Decision):
    esmtp: bool
    domain: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MailFrom(Decision):
    path: Path
    params: dict[str, str | None] = field(default_factory=dict)
    size: int | None = None  # RFC 1870 SIZE= declared by the client
    body: str | None = None  # RFC 1652 BODY=7BIT|8BITMIME
    smtputf8: bool = False  # RFC 6531
    ret: str | None = None  # RFC 3461 4.3 RET=FULL|HDRS, upper case
    envid: str | None = None  # RFC 3461 4.4 ENVID, decoded from xtext


@dataclass(frozen=True, slots=True, kw_only=True)
class RcptTo(Decision):
    path: Path
    params: dict[str, str | None] = field(default_factory=dict)
    # RFC 3461 4.1 NOTIFY, upper case: ("NEVER",) or a subset of SUCCESS, FAILURE, DELAY in
    # that order; None when not given.
    notify: tuple[str, ...] | None = None
    orcpt: str | None = None  # RFC 3461 4.2 ORCPT decoded from xtext: "rfc822;user@example.org"


@dataclass(frozen=True, slots=True, kw_only=True)
class DataStart(Decision):
    """DATA with at least one recipient: accept() sends 354."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EndOfData(Decision):
    """The final dot: commit the message, then accept(250 ... queued as) or reject()."""

    size: int
    received_count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Vrfy(Decision):
    argument: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Expn(Decision):
    argument: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Etrn(Decision):
    """ETRN (RFC 1985): start a queue run for ``domain`` (with ``subdomains`` for ``@domain``)
    or for the named queue ``#queue_name``. Answer with accept(250/251/252/253 reply) or
    reject(458/459 reply); accept() without a reply sends a plain 250."""

    domain: str | None  # lower case; None for a #queue_name
    subdomains: bool = False
    queue_name: str | None = None

    @property
    def node(self) -> str:
        """The argument as RFC 1985 replies name it: ``example.org``, ``@example.org``, ``#q``."""
        if self.queue_name is not None:
            return "#" + self.queue_name
        return ("@" if self.subdomains else "") + (self.domain or "")


@dataclass(frozen=True, slots=True, kw_only=True)
class StartTLS(Decision):
    """accept() sends ``220 2.0.0`` and drops unread input; then the session does the handshake
    and calls :meth:`SMTPConnection.tls_started` (or closes if it fails)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthStart(Decision):
    """AUTH with a mechanism we offer: accept() starts the SASL exchange, reject() refuses
    (for example 421 for a client blocked after too many failures)."""

    mechanism: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthLookup(Decision):
    """The SASL mechanism needs the directory: answer with :meth:`SMTPConnection.auth_resolve`
    (True/False for CheckPassword, the secret or None for NeedSecret, ScramCredentials or None
    for NeedScram)."""

    request: sasl.CheckPassword | sasl.NeedSecret | sasl.NeedScram


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthDone(Event):
    """The outcome of an AUTH exchange (the reply is already queued, not yet flushed)."""

    mechanism: str
    user: str | None  # the authenticated user, None on failure
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class DataChunk(Event):
    """Unstuffed message content; the chunks concatenated are the message."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class DataAborted(Event):
    """The message was refused at its end; the engine has sent ``reply``. Discard the content."""

    reply: Reply


@dataclass(frozen=True, slots=True, kw_only=True)
class Reset(Event):
    """The transaction was abandoned (RSET, HELO/EHLO, or a violation that closes the
    connection): drop envelope and content."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Closed(Event):
    """The engine is done (QUIT answered, 421 sent, or the peer closed): flush and close."""

    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SMTPConfig:
    """What the engine must know; the session builds it from the settings."""

    hostname: str
    max_message_size: int = 26214400
    max_recipients: int = 100
    max_errors: int = 20  # Postfix: smtpd_hard_error_limit
    normalize_bare_newlines: bool = False  # bare CR/LF in data and commands: False rejects them
    # RFC 2920 3.1 enforced on unauthenticated clients (554 5.5.0 and close). Off here so that
    # tests may feed pipelined input freely; the session turns it on from [smtp] strict_pipelining.
    strict_pipelining: bool = False
    max_header_size: int = 102400  # octets of the header section (Postfix: header_size_limit)
    vrfy: bool = True  # list VRFY in EHLO (Postfix does unless disable_vrfy_command)
    greeting_text: str = "ESMTP taube"
    tls_available: bool = False  # a certificate is there: offer STARTTLS
    tls_active: bool = False  # implicit TLS (RFC 8314): encrypted from the first byte
    auth_mechanisms: tuple[str, ...] = ()  # SASL mechanisms offered (RFC 4954)
    auth_requires_tls: bool = True  # no AUTH before TLS: not listed, and 538 5.7.11
    auth_legacy_line: bool = True  # also "AUTH=..." for old Outlook versions
    auth_required: bool = False  # submission (RFC 6409): MAIL needs AUTH first, else 530 5.7.0
    etrn: bool = False  # offer ETRN (RFC 1985); off: 502 5.5.1
    extra_extensions: tuple[str, ...] = ()  # further EHLO keywords from the session
    # Emit a Connect decision before the greeting, so that a connect-stage check (DNSBL, limits,
    # pregreet) can refuse with a 554 greeting. Off: the 220 is queued by the constructor.
    connect_decision: bool = False
