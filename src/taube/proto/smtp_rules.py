"""The SMTP engine's rules as data: the line limits and why, which command is valid in which
state (:data:`ALLOWED`), what leads from one state to the next (:data:`TRANSITIONS`, applied only
by ``SMTPConnection._enter``), and the reply to a command out of sequence (:data:`OUT_OF_SEQUENCE`).
"""

from __future__ import annotations

import re
from typing import Final

from . import replies as R
from .replies import Reply
from .sasl_exchange import Cause
from .smtp_events import State

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
