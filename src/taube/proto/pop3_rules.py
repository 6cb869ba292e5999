"""The POP3 engine's rules as data: the line limits and why, which command is valid in which
state (:data:`ALLOWED`), what leads from one state to the next (:data:`TRANSITIONS`, applied only
by ``POP3Connection._enter``), the default ``-ERR`` texts, and what the session's answers must
look like (a listing of unique RFC 1939 unique-ids, one-line reply texts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from . import sasl
from .common import LocalProtocolError
from .pop3_events import ApopLogin, Decision, Login, MailboxOpen, POP3Config, Retrieve, StartTLS, State, Update
from .sasl_exchange import Cause

# RFC 2449 section 4: a command line is at most 255 octets with CRLF.
COMMAND_LINE_MAX: Final = 255
# RFC 5034 section 4: clients keep AUTH with an initial response within that limit, but both
# sides must handle the longest response their mechanisms produce, whatever the line limits.
# Dovecot's login processes take SASL responses of up to 8192 octets and hang up beyond
# (LOGIN_MAX_AUTH_BUF_SIZE); every mechanism we offer fits in far less (a PLAIN response with a
# 1000-character password is about 1.5 KB of base64).
AUTH_LINE_MAX: Final = 8192
# No line of any kind is longer, so input without a line end beyond it is not POP3: "-ERR line
# too long" and close at once, without waiting for a line end that may never come.
HARD_LINE_MAX: Final = AUTH_LINE_MAX
_UID: Final = re.compile(r"[\x21-\x7e]{1,70}")  # RFC 1939 section 7, UIDL unique-id
_DIGEST: Final = re.compile(r"[0-9a-fA-F]{32}")  # RFC 1939 section 7, APOP digest
_TIMESTAMP: Final = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]+>")  # RFC 1939 section 7, msg-id


# --- the transition table ------------------------------------------------------------------
_AUTHORIZATION = frozenset({State.AUTHORIZATION})
_TRANSACTION = frozenset({State.TRANSACTION})
_BOTH = _AUTHORIZATION | _TRANSACTION
ALLOWED: Final[dict[str, frozenset[State]]] = {
    "USER": _AUTHORIZATION,
    "PASS": _AUTHORIZATION,
    "APOP": _AUTHORIZATION,
    "AUTH": _AUTHORIZATION,  # RFC 5034 section 4
    "STLS": _AUTHORIZATION,  # RFC 2595 section 4
    "CAPA": _BOTH,  # RFC 2449 section 5
    "QUIT": _BOTH,
    "STAT": _TRANSACTION,
    "LIST": _TRANSACTION,
    "RETR": _TRANSACTION,
    "TOP": _TRANSACTION,
    "DELE": _TRANSACTION,
    "NOOP": _TRANSACTION,
    "RSET": _TRANSACTION,
    "UIDL": _TRANSACTION,
}

# What happens, by state, and the state it leads to. :meth:`POP3Connection._enter` applies it and
# is the only place that changes ``state``; a state of None stands for every state not named.
_S = State
TRANSITIONS: Final[dict[tuple[State | None, str], State]] = {
    (_S.AUTHORIZATION, "user"): _S.USER,  # USER accepted: PASS may follow
    (_S.USER, "next-command"): _S.AUTHORIZATION,  # whatever comes next, PASS included
    (_S.AUTHORIZATION, "starttls"): _S.TLS_HANDSHAKE,
    (_S.TLS_HANDSHAKE, "tls-started"): _S.AUTHORIZATION,  # RFC 2595 section 4: start afresh
    (_S.AUTHORIZATION, "auth-step"): _S.AUTH,  # a challenge or a look-up
    (_S.AUTH, "auth-step"): _S.AUTH,
    (_S.AUTHORIZATION, "verified"): _S.AUTHORIZATION,  # MailboxOpen is asked next
    (_S.AUTH, "verified"): _S.AUTHORIZATION,
    (_S.AUTHORIZATION, "login-failed"): _S.AUTHORIZATION,
    (_S.AUTH, "login-failed"): _S.AUTHORIZATION,
    (_S.AUTHORIZATION, "mailbox-open"): _S.TRANSACTION,
    (_S.TRANSACTION, "retrieve"): _S.CONTENT,
    (_S.CONTENT, "end-content"): _S.TRANSACTION,
    (_S.TRANSACTION, "quit"): _S.UPDATE,
    (None, "close"): _S.CLOSED,
    (None, "peer-closed"): _S.CLOSED,
}

_USAGE: Final = {
    "USER": "USER name",
    "PASS": "PASS string",
    "APOP": "APOP name digest",
    "STLS": "STLS",
    "CAPA": "CAPA",
    "QUIT": "QUIT",
    "STAT": "STAT",
    "LIST": "LIST [msg]",
    "RETR": "RETR msg",
    "TOP": "TOP msg n",
    "DELE": "DELE msg",
    "NOOP": "NOOP",
    "RSET": "RSET",
    "UIDL": "UIDL [msg]",
}

_PLAINTEXT_REFUSED: Final = "[AUTH] Plaintext authentication disallowed without TLS (use STLS first)"
_AUTH_FAILED: Final = "[AUTH] Authentication failed"
# The -ERR text for a SASL exchange the client side ended (RFC 5034 section 4).
_ABANDONED: Final = {
    Cause.TOO_LONG: "line too long",
    Cause.CANCELLED: "authentication cancelled",
    Cause.BAD_BASE64: "bad base64 in the response",
}
_REJECT_DEFAULTS: Final[dict[type[Decision], str]] = {
    Login: _AUTH_FAILED,
    ApopLogin: _AUTH_FAILED,
    MailboxOpen: "[SYS/TEMP] Unable to open the maildrop",
    StartTLS: "[SYS/TEMP] TLS is not available now",
    Retrieve: "[SYS/TEMP] Unable to read the message",
    Update: "[SYS/TEMP] Some deleted messages not removed",
}


@dataclass(slots=True)
class _Message:
    size: int
    uid: str
    deleted: bool = False


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _classify_mechanisms(config: POP3Config) -> tuple[tuple[str, ...], frozenset[str]]:
    """The configured mechanisms sasl knows (upper case, in order), and those of them that send
    the password itself (:attr:`sasl.Mechanism.plaintext`)."""
    known: list[str] = []
    plaintext: set[str] = set()
    for name in config.sasl_mechanisms:
        mech = sasl.create(name, hostname=config.hostname)
        if mech is not None:
            known.append(name.upper())
            if mech.plaintext:
                plaintext.add(name.upper())
    return tuple(known), frozenset(plaintext)


def _displayable(user: str) -> bool:
    """Whether a verified user name may be echoed: printable and short, so the reply stays one
    line within RFC 2449's 512 octets even for a SASL name that carries controls."""
    return user.isprintable() and len(user.encode()) <= 128


def _check_text(text: str) -> None:
    if not text or "\r" in text or "\n" in text:
        raise LocalProtocolError("a reply text is one non-empty line")


def _check_listing(messages: list[_Message]) -> None:
    """RFC 1939 section 7: unique-ids are 1-70 characters 0x21-0x7E, unique in the maildrop."""
    if len({m.uid for m in messages}) != len(messages):
        raise LocalProtocolError("UIDs must be unique")
    for m in messages:
        if m.size < 0 or not _UID.fullmatch(m.uid):
            raise LocalProtocolError(f"bad listing entry ({m.size}, {m.uid!r})")
