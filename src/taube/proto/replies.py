"""SMTP replies: a code (RFC 5321 4.2), an enhanced status code (RFC 3463, RFC 2034) and text.

The catalogue below is the one place where the server's wording lives, so that the same situation
always gets the same reply.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Reply", "SMTPError"]


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply, possibly multi-line.

    ``enhanced`` is ``None`` for the replies RFC 2034 section 3 exempts (greeting, HELO/EHLO).
    """

    code: int
    enhanced: str | None
    text: str | tuple[str, ...]

    @property
    def lines(self) -> tuple[str, ...]:
        return (self.text,) if isinstance(self.text, str) else self.text

    @property
    def is_positive(self) -> bool:
        return 200 <= self.code < 400

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
OK = Reply(250, "2.0.0", "Ok")
SENDER_OK = Reply(250, "2.1.0", "Ok")
RECIPIENT_OK = Reply(250, "2.1.5", "Ok")
START_DATA = Reply(354, None, "End data with <CR><LF>.<CR><LF>")
RESET_OK = Reply(250, "2.0.0", "Ok")
NOOP_OK = Reply(250, "2.0.0", "Ok")
VRFY_AMBIGUOUS = Reply(252, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery")

LINE_TOO_LONG = Reply(500, "5.5.2", "Error: line too long")
# RFC 5321 2.3.8: a command line ends with CRLF only (Postfix: smtpd_forbid_bare_newline).
BARE_LF_IN_COMMAND = Reply(500, "5.5.2", "Error: bare <LF> received")
BARE_CR_IN_COMMAND = Reply(500, "5.5.2", "Error: bare <CR> received")
# RFC 2920 3.1 broken, or talk before the greeting (Postfix: smtpd_forbid_unauth_pipelining,
# postscreen's pregreet test): the wording is Postfix's, so that client logs read the same.
SYNCHRONIZATION = Reply(554, "5.5.0", "Error: SMTP protocol synchronization")
# An HTTP request or a mail header line sent as a command (Postfix: smtpd_forbidden_commands).
FORBIDDEN_COMMAND = Reply(221, "2.7.0", "Error: I can break rules, too. Goodbye.")
BAD_CHARACTERS = Reply(500, "5.5.2", "Error: invalid characters in command")
UNRECOGNIZED = Reply(500, "5.5.2", "Error: command not recognized")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Error: command not implemented")
VRFY_DISABLED = Reply(502, "5.5.1", "VRFY command is disabled")
EXPN_DISABLED = Reply(502, "5.5.1", "EXPN command is disabled")
NEED_HELO = Reply(503, "5.5.1", "Error: send HELO/EHLO first")
NESTED_MAIL = Reply(503, "5.5.1", "Error: nested MAIL command")
NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
NEED_RCPT = Reply(503, "5.5.1", "Error: need RCPT command")
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "Error: no valid recipients")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Error: too many recipients")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Error: message size exceeds fixed maximum message size")
HEADER_TOO_LARGE = Reply(552, "5.3.4", "Message header too large")  # Postfix: header_size_limit
BARE_NEWLINE = Reply(554, "5.5.2", "Error: bare <CR> or <LF> in message text, use <CR><LF> (RFC 5321 2.3.8)")
TEXT_LINE_TOO_LONG = Reply(554, "5.6.0", "Error: message text line longer than 1000 octets (RFC 5321 4.5.3.1.6)")
TOO_MANY_HOPS = Reply(554, "5.4.6", "Error: too many hops (mail loop?)")
UNSUPPORTED_PARAMETER = Reply(555, "5.5.4", "Error: unsupported parameter")
IN_TRANSACTION = Reply(503, "5.5.1", "Error: MAIL transaction in progress")
READY_FOR_TLS = Reply(220, "2.0.0", "Ready to start TLS")
TLS_ALREADY_ACTIVE = Reply(503, "5.5.1", "Error: TLS already active")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_FAILED = Reply(535, "5.7.8", "Error: authentication failed")
AUTH_CANCELLED = Reply(501, "5.7.0", "Authentication cancelled")  # RFC 4954 4: the client's "*"
AUTH_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication Exchange line is too long")  # RFC 4954 6
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Error: already authenticated")
NEED_EHLO_FOR_AUTH = Reply(503, "5.5.1", "Error: send EHLO first")
UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Error: unrecognized authentication type")
ENCRYPTION_REQUIRED = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
CANNOT_DECODE = Reply(501, "5.5.2", "Error: cannot decode response")
TRANSIENT_FAILURE = Reply(451, "4.3.0", "Error: internal error, please try again later")
STORAGE_FULL = Reply(452, "4.3.1", "Error: insufficient system storage")
# RFC 3461 section 4 (DSN parameters): what each one must look like.
BAD_RET = Reply(501, "5.5.4", "Syntax: RET=FULL|HDRS (RFC 3461 4.3)")
BAD_ENVID = Reply(501, "5.5.4", "Syntax: ENVID=<xtext of printable ASCII, at most 100 characters> (RFC 3461 4.4)")
BAD_NOTIFY = Reply(501, "5.5.4", "Syntax: NOTIFY=NEVER or NOTIFY=SUCCESS,FAILURE,DELAY, each at most once (RFC 3461 4.1)")
BAD_ORCPT = Reply(501, "5.5.4", "Syntax: ORCPT=<addr-type>;<xtext of printable ASCII>, at most 500 characters (RFC 3461 4.2)")
# RFC 1985 (ETRN).
ETRN_SYNTAX = Reply(501, "5.5.4", "Syntax: ETRN [@|#]<domain>")


def syntax(usage: str) -> Reply:
    """``501 5.5.4 Syntax: <usage>`` for a known command with bad arguments (RFC 3463 5.5.4)."""
    return Reply(501, "5.5.4", f"Syntax: {usage}")


def closing(hostname: str, enhanced: str, why: str) -> Reply:
    """A 421: RFC 5321 4.2 wants the server's name first in the text."""
    return Reply(421, enhanced, f"{hostname} {why}, closing transmission channel")


def bad_parameters(why: str) -> Reply:
    """``501 5.5.4`` for an ESMTP parameter list that does not parse (RFC 5321 4.1.2)."""
    return Reply(501, "5.5.4", f"Error: {why}")


def etrn_started(node: str) -> Reply:
    """RFC 1985: 250, the run was started (without a count)."""
    return Reply(250, "2.0.0", f"OK, queuing for node {node} started")


def etrn_nothing_waiting(node: str) -> Reply:
    """RFC 1985: 251, nothing is queued for the node."""
    return Reply(251, "2.0.0", f"OK, no messages waiting for node {node}")


def etrn_pending(node: str, count: int) -> Reply:
    """RFC 1985: 253, a run was started for ``count`` messages."""
    return Reply(253, "2.0.0", f"OK, {count} pending messages for node {node} started")


def etrn_unable(node: str) -> Reply:
    """RFC 1985: 458, the server cannot start a run for the node (now)."""
    return Reply(458, "4.3.0", f"Unable to queue messages for node {node}")


def etrn_not_allowed(node: str, why: str) -> Reply:
    """RFC 1985: 459, this client may not ask for the node."""
    return Reply(459, "4.7.1", f"Node {node} not allowed: {why}")

