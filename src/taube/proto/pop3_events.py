"""The POP3 engine's vocabulary: its states, the events :meth:`POP3Connection.next_event
<taube.proto.pop3.POP3Connection.next_event>` returns, and :class:`POP3Config`.

The rules: every event is a frozen, slotted, keyword-only dataclass; a :class:`Decision` must be
answered before the engine reads on; the other events only inform.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from . import sasl


class State(enum.Enum):
    AUTHORIZATION = "authorization"  # RFC 1939 section 4: until the maildrop is open
    USER = "user"  # AUTHORIZATION after an accepted USER: the next command may be PASS
    AUTH = "auth"  # inside a SASL exchange: lines are responses, not commands
    TLS_HANDSHAKE = "tls-handshake"  # +OK sent after STLS: nothing is read until tls_started()
    TRANSACTION = "transaction"  # RFC 1939 section 5: the maildrop is open and locked
    CONTENT = "content"  # a RETR/TOP answer is being streamed by send_content()
    UPDATE = "update"  # RFC 1939 section 6: QUIT received, deletions pending
    CLOSED = "closed"  # final reply queued: flush and close


# --- events --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of everything next_event() returns."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision(Event):
    """An event the session must answer (accept()/reject() or the method its docstring names)
    before reading on."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Login(Decision):
    """USER and PASS (RFC 1939 section 7): accept() if the password is right, else reject()."""

    user: str
    password: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ApopLogin(Decision):
    """APOP (RFC 1939 section 7): accept() if ``digest`` (lower-case hex) is
    MD5(``timestamp`` + the user's shared secret), else reject()."""

    user: str
    digest: str
    timestamp: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthLookup(Decision):
    """The SASL mechanism needs the directory: answer with :meth:`POP3Connection.auth_resolve`
    (True/False for CheckPassword, the secret or None for NeedSecret, ScramCredentials or None
    for NeedScram), as in the SMTP engine."""

    request: sasl.CheckPassword | sasl.NeedSecret | sasl.NeedScram


@dataclass(frozen=True, slots=True, kw_only=True)
class MailboxOpen(Decision):
    """Credentials are verified: lock and list the maildrop (RFC 1939 section 4), then
    :meth:`POP3Connection.accept_mailbox`, or reject() with ``[IN-USE]`` (RFC 2449 section 8.1.2)
    when it is locked, ``[SYS/TEMP]`` (RFC 3206) when it cannot be opened."""

    user: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LoginFailed(Event):
    """Authentication failed; the ``-ERR`` is queued but not yet flushed, so the session can
    delay it to slow down password guessing. ``user`` is None when the client never named one."""

    user: str | None
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StartTLS(Decision):
    """STLS (RFC 2595 section 4): accept() sends ``+OK`` and drops unread input; the session
    does the handshake and calls :meth:`POP3Connection.tls_started` (or closes if it fails)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Retrieve(Decision):
    """RETR (``lines`` None) or TOP (``lines`` body lines after the header): accept(), then
    send_content() the whole message as stored (CRLF line ends) and end_content(). The engine
    dot-stuffs and, for TOP, cuts after the header and ``lines`` body lines itself."""

    number: int
    uid: str
    lines: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Update(Decision):
    """QUIT in TRANSACTION (RFC 1939 section 6): remove ``deleted_uids``, then accept(); if that
    failed, reject() (default ``[SYS/TEMP]``). Either way the connection closes."""

    deleted_uids: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Closed(Event):
    """The engine is done (QUIT answered, too many errors, or the peer closed): flush and close."""

    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class POP3Config:
    """What the engine must know; the session builds it from the settings."""

    hostname: str
    timestamp: str  # RFC 1939 section 7: "<process-ID.clock@hostname>", unique per greeting
    tls_available: bool = False  # a certificate is there: offer STLS
    tls_active: bool = False  # implicit TLS (RFC 8314, port 995): encrypted from the first byte
    sasl_mechanisms: tuple[str, ...] = ()  # RFC 5034, names as in sasl.MECHANISMS
    plaintext_requires_tls: bool = True  # USER/PASS, PLAIN, LOGIN only under TLS (RFC 2595 section 2)
    user_command: bool = True  # offer USER/PASS at all
    apop: bool = False  # offer APOP (needs plaintext-equivalent secrets)
    expire: str = "NEVER"  # RFC 2449 section 6.7
    login_delay: int = 0  # RFC 2449 section 6.5, seconds
    implementation: str = "taube"  # RFC 2449 section 6.9; not listed when empty
    max_errors: int = 10
