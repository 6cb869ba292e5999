"""SMTP replies: a code (RFC 5321 4.2), an enhanced status code (RFC 3463, RFC 2034) and text.

The catalogue below is the one place where the server's wording lives, so that the same situation
always gets the same reply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Reply", "SMTPError"]

# RFC 3463 2: class "." subject "." detail; the class must agree with the reply code (RFC 2034).
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """One SMTP reply (RFC 5321 4.2), possibly multi-line, with its enhanced status code
    (RFC 3463, RFC 2034): the server's replies and the replies the delivery client receives.

    ``enhanced`` is ``None`` for the replies RFC 2034 section 3 exempts (greeting, HELO/EHLO),
    and for a received reply without one. A received reply (:meth:`parse`) has its lines joined
    into one ``text``, without the code and the enhanced code.
    """

    code: int
    enhanced: str | None
    text: str | tuple[str, ...]

    @classmethod
    def parse(cls, code: int, message: str) -> Reply:
        """A received reply from its code and its message (lines joined with ``\\n``, each
        without its code, as aiosmtplib gives them). The enhanced code is taken from the first
        line (RFC 2034 4) when its class agrees with the reply code, and removed from every line
        that repeats it."""
        lines = message.split("\n")
        enhanced: str | None = None
        match = _ENHANCED.match(lines[0])
        if match and int(match.group(1)) == code // 100:
            enhanced = match.group(0)
            lines = [line[len(enhanced):].lstrip() if line.startswith(enhanced) else line
                     for line in lines]
        text = " ".join(line for line in (s.strip() for s in lines) if line)
        return cls(code=code, enhanced=enhanced, text=text)

    @property
    def lines(self) -> tuple[str, ...]:
        return (self.text,) if isinstance(self.text, str) else self.text

    @property
    def is_positive(self) -> bool:
        """2xx or 3xx: positive completion or intermediate (RFC 5321 4.2.1)."""
        return 200 <= self.code < 400

    @property
    def ok(self) -> bool:
        """2xx: positive completion (RFC 5321 4.2.1)."""
        return 200 <= self.code < 300

    @property
    def temporary(self) -> bool:
        """4xx: transient negative completion (RFC 5321 4.2.1)."""
        return 400 <= self.code < 500

    def status(self) -> str:
        """The enhanced status code, or one derived from the reply class (RFC 3463 3.1)."""
        if self.enhanced:
            return self.enhanced
        if self.ok:
            return "2.0.0"
        return "4.0.0" if self.temporary else "5.0.0"

    def diagnostic(self) -> str:
        """The DSN Diagnostic-Code field value (RFC 3464 2.3.6), diagnostic-type "smtp"."""
        return f"smtp; {self}"

    def encode(self) -> bytes:
        """Wire form: ``250-first`` ... ``250 last`` (RFC 5321 4.2.1), each line with CRLF.

        RFC 2034 section 4: the enhanced code starts the text of every line of a multi-line reply.
        """
        lines = self.lines or ("",)
        out = []
        last = len(lines) - 1
        for i, line in enumerate(lines):
            sep = " " if i == last else "-"
            text = f"{self.enhanced} {line}" if self.enhanced else line
            out.append(f"{self.code}{sep}{text}\r\n")
        return "".join(out).encode("utf-8")

    def __str__(self) -> str:
        return " ".join(p for p in (str(self.code), self.enhanced, " / ".join(self.lines)) if p)


class SMTPError(Exception):
    """A decision that ends in a negative reply: the reply for the client, the reason for the log."""

    def __init__(self, reply: Reply, reason: str = "") -> None:
        super().__init__(str(reply) if not reason else f"{reply} ({reason})")
        self.reply = reply
        self.reason = reason


# --- the catalogue -------------------------------------------------------------------------
OK = Reply(code=250, enhanced="2.0.0", text="Ok")
SENDER_OK = Reply(code=250, enhanced="2.1.0", text="Ok")
RECIPIENT_OK = Reply(code=250, enhanced="2.1.5", text="Ok")
START_DATA = Reply(code=354, enhanced=None, text="End data with <CR><LF>.<CR><LF>")
RESET_OK = Reply(code=250, enhanced="2.0.0", text="Ok")
NOOP_OK = Reply(code=250, enhanced="2.0.0", text="Ok")
VRFY_AMBIGUOUS = Reply(code=252, enhanced="2.0.0", text="Cannot VRFY user, but will accept message and attempt delivery")

LINE_TOO_LONG = Reply(code=500, enhanced="5.5.2", text="Error: line too long")
# RFC 5321 2.3.8: a command line ends with CRLF only (Postfix: smtpd_forbid_bare_newline).
BARE_LF_IN_COMMAND = Reply(code=500, enhanced="5.5.2", text="Error: bare <LF> received")
BARE_CR_IN_COMMAND = Reply(code=500, enhanced="5.5.2", text="Error: bare <CR> received")
# RFC 2920 3.1 broken, or talk before the greeting (Postfix: smtpd_forbid_unauth_pipelining,
# postscreen's pregreet test): the wording is Postfix's, so that client logs read the same.
SYNCHRONIZATION = Reply(code=554, enhanced="5.5.0", text="Error: SMTP protocol synchronization")
# An HTTP request or a mail header line sent as a command (Postfix: smtpd_forbidden_commands).
FORBIDDEN_COMMAND = Reply(code=221, enhanced="2.7.0", text="Error: I can break rules, too. Goodbye.")
BAD_CHARACTERS = Reply(code=500, enhanced="5.5.2", text="Error: invalid characters in command")
UNRECOGNIZED = Reply(code=500, enhanced="5.5.2", text="Error: command not recognized")
NOT_IMPLEMENTED = Reply(code=502, enhanced="5.5.1", text="Error: command not implemented")
VRFY_DISABLED = Reply(code=502, enhanced="5.5.1", text="VRFY command is disabled")
EXPN_DISABLED = Reply(code=502, enhanced="5.5.1", text="EXPN command is disabled")
NEED_HELO = Reply(code=503, enhanced="5.5.1", text="Error: send HELO/EHLO first")
NESTED_MAIL = Reply(code=503, enhanced="5.5.1", text="Error: nested MAIL command")
NEED_MAIL = Reply(code=503, enhanced="5.5.1", text="Error: need MAIL command")
NEED_RCPT = Reply(code=503, enhanced="5.5.1", text="Error: need RCPT command")
NO_VALID_RECIPIENTS = Reply(code=554, enhanced="5.5.1", text="Error: no valid recipients")
TOO_MANY_RECIPIENTS = Reply(code=452, enhanced="4.5.3", text="Error: too many recipients")
MESSAGE_TOO_BIG = Reply(code=552, enhanced="5.3.4", text="Error: message size exceeds fixed maximum message size")
HEADER_TOO_LARGE = Reply(code=552, enhanced="5.3.4", text="Message header too large")  # Postfix: header_size_limit
BARE_NEWLINE = Reply(code=554, enhanced="5.5.2", text="Error: bare <CR> or <LF> in message text, use <CR><LF> (RFC 5321 2.3.8)")
TEXT_LINE_TOO_LONG = Reply(code=554, enhanced="5.6.0", text="Error: message text line longer than 1000 octets (RFC 5321 4.5.3.1.6)")
TOO_MANY_HOPS = Reply(code=554, enhanced="5.4.6", text="Error: too many hops (mail loop?)")
UNSUPPORTED_PARAMETER = Reply(code=555, enhanced="5.5.4", text="Error: unsupported parameter")
IN_TRANSACTION = Reply(code=503, enhanced="5.5.1", text="Error: MAIL transaction in progress")
READY_FOR_TLS = Reply(code=220, enhanced="2.0.0", text="Ready to start TLS")
TLS_ALREADY_ACTIVE = Reply(code=503, enhanced="5.5.1", text="Error: TLS already active")
AUTH_REQUIRED = Reply(code=530, enhanced="5.7.0", text="Authentication required")
AUTH_OK = Reply(code=235, enhanced="2.7.0", text="Authentication successful")
AUTH_FAILED = Reply(code=535, enhanced="5.7.8", text="Error: authentication failed")
AUTH_CANCELLED = Reply(code=501, enhanced="5.7.0", text="Authentication cancelled")  # RFC 4954 4: the client's "*"
AUTH_LINE_TOO_LONG = Reply(code=500, enhanced="5.5.6", text="Authentication Exchange line is too long")  # RFC 4954 6
ALREADY_AUTHENTICATED = Reply(code=503, enhanced="5.5.1", text="Error: already authenticated")
NEED_EHLO_FOR_AUTH = Reply(code=503, enhanced="5.5.1", text="Error: send EHLO first")
UNKNOWN_MECHANISM = Reply(code=504, enhanced="5.5.4", text="Error: unrecognized authentication type")
ENCRYPTION_REQUIRED = Reply(code=538, enhanced="5.7.11", text="Encryption required for requested authentication mechanism")
CANNOT_DECODE = Reply(code=501, enhanced="5.5.2", text="Error: cannot decode response")
TRANSIENT_FAILURE = Reply(code=451, enhanced="4.3.0", text="Error: internal error, please try again later")
STORAGE_FULL = Reply(code=452, enhanced="4.3.1", text="Error: insufficient system storage")
STORAGE_ERROR = Reply(code=451, enhanced="4.3.0", text="Error: cannot store the message, please try again later")
# RFC 3461 section 4 (DSN parameters): what each one must look like.
BAD_RET = Reply(code=501, enhanced="5.5.4", text="Syntax: RET=FULL|HDRS (RFC 3461 4.3)")
BAD_ENVID = Reply(code=501, enhanced="5.5.4", text="Syntax: ENVID=<xtext of printable ASCII, at most 100 characters> (RFC 3461 4.4)")
BAD_NOTIFY = Reply(code=501, enhanced="5.5.4", text="Syntax: NOTIFY=NEVER or NOTIFY=SUCCESS,FAILURE,DELAY, each at most once (RFC 3461 4.1)")
BAD_ORCPT = Reply(code=501, enhanced="5.5.4", text="Syntax: ORCPT=<addr-type>;<xtext of printable ASCII>, at most 500 characters (RFC 3461 4.2)")
# RFC 1985 (ETRN).
ETRN_SYNTAX = Reply(code=501, enhanced="5.5.4", text="Syntax: ETRN [@|#]<domain>")


def syntax(usage: str) -> Reply:
    """``501 5.5.4 Syntax: <usage>`` for a known command with bad arguments (RFC 3463 5.5.4)."""
    return Reply(code=501, enhanced="5.5.4", text=f"Syntax: {usage}")


def closing(hostname: str, enhanced: str, why: str) -> Reply:
    """A 421: RFC 5321 4.2 wants the server's name first in the text."""
    return Reply(code=421, enhanced=enhanced, text=f"{hostname} {why}, closing transmission channel")


def bad_parameters(why: str) -> Reply:
    """``501 5.5.4`` for an ESMTP parameter list that does not parse (RFC 5321 4.1.2)."""
    return Reply(code=501, enhanced="5.5.4", text=f"Error: {why}")


def etrn_started(node: str) -> Reply:
    """RFC 1985: 250, the run was started (without a count)."""
    return Reply(code=250, enhanced="2.0.0", text=f"OK, queuing for node {node} started")


def etrn_nothing_waiting(node: str) -> Reply:
    """RFC 1985: 251, nothing is queued for the node."""
    return Reply(code=251, enhanced="2.0.0", text=f"OK, no messages waiting for node {node}")


def etrn_pending(node: str, count: int) -> Reply:
    """RFC 1985: 253, a run was started for ``count`` messages."""
    return Reply(code=253, enhanced="2.0.0", text=f"OK, {count} pending messages for node {node} started")


def etrn_unable(node: str) -> Reply:
    """RFC 1985: 458, the server cannot start a run for the node (now)."""
    return Reply(code=458, enhanced="4.3.0", text=f"Unable to queue messages for node {node}")


def etrn_not_allowed(node: str, why: str) -> Reply:
    """RFC 1985: 459, this client may not ask for the node."""
    return Reply(code=459, enhanced="4.7.1", text=f"Node {node} not allowed: {why}")

