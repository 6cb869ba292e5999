"""Delivery status notifications (bounces, delay warnings, success reports), as a pure function.

:func:`build_dsn` turns what the queue knows about a message (its envelope, the outcome per
recipient, the stored message) into one complete RFC 3464 report, a ``multipart/report``
(RFC 6522) with three parts:

1. ``text/plain``: a human-readable explanation, one paragraph per recipient;
2. ``message/delivery-status`` (RFC 3464 section 2): per-message fields, then one block of
   per-recipient fields for each recipient;
3. the returned message: ``message/rfc822`` (the whole message, RFC 3461 section 4.3
   ``RET=FULL``) or ``text/rfc822-headers`` (its header section only, ``RET=HDRS``, or when the
   whole message is too large or not fit to be embedded as it is).

The report is sent with the null reverse-path ``<>`` (RFC 5321 section 4.5.5, RFC 3461 section
6.2) so that it can never cause another report; :func:`should_bounce` tells whether a sender may
receive one at all. Nothing here does I/O apart from reading the original message.

Output: CRLF line ends, no line longer than 998 octets (RFC 5322 section 2.1.1). Text that
comes from elsewhere (remote replies, host names, the envelope id) is made harmless before it
goes into a header field: control characters (CR and LF included) become spaces, non-ASCII
characters become RFC 6533 section 3 ``\\x{HHHH}`` escapes, and long values are folded.
Apart from ``Date``, ``Message-ID`` and the MIME boundary, which are derived from ``queue_id``
and ``now``, the output depends only on the arguments.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import BinaryIO, Literal

__all__ = ["RecipientReport", "build_dsn", "should_bounce", "single_line"]

Action = Literal["failed", "delayed", "delivered", "relayed"]
ReturnContent = Literal["full", "headers"]

_ACTIONS: tuple[Action, ...] = ("failed", "delayed", "delivered", "relayed")
# RFC 3464 section 2.3.4 / RFC 3463 section 2: class "." subject "." detail.
_STATUS = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")
# RFC 3464 section 2.3.6: diagnostic-type ";" *text, the type being an atom (e.g. "smtp").
_DIAGNOSTIC = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*)\s*;\s*(.*)", re.DOTALL)
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]+")
_SPACES = re.compile(r" {2,}")
_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOUNDARY_UNSAFE = re.compile(r"[^0-9A-Za-z'()+_,\-./:=?]")

# RFC 5322 section 2.1.1: at most 998 octets per line, excluding CRLF; 78 recommended.
_MAX_LINE = 998
_FOLD_WIDTH = 78
# Longest piece of an unbreakable token put on one (folded) line; well below _MAX_LINE so that
# a field name or an indentation still fits.
_HARD_PIECE = 900
# The header section returned as text/rfc822-headers is cut (at a line end) beyond this many
# octets, like Postfix's header_size_limit: a header section without end must not exhaust memory.
MAX_HEADER_SECTION = 100 * 1024
_READ_SIZE = 64 * 1024

_SUBJECTS: dict[Action, str] = {
    "failed": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
    "delivered": "Successful Mail Delivery Report",
    "relayed": "Successful Mail Delivery Report",
}

_HEADINGS: dict[Action, str] = {
    "failed": "Your message could not be delivered to the following recipients; delivery "
    "failed permanently and will not be tried again:",
    "delayed": "Delivery to the following recipients has been delayed. This is a warning "
    "only: the mail system will keep trying, you do not need to send the message again:",
    "delivered": "Your message was delivered to the following recipients:",
    "relayed": "Your message was passed on to the following recipients' mail systems, which "
    "may not send further notifications:",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class RecipientReport:
    """The outcome for one recipient: one per-recipient block of RFC 3464 section 2.3.

    ``address`` becomes ``Final-Recipient`` (2.3.2), ``original`` ``Original-Recipient``
    (2.3.1; pass None when it is unknown), ``action`` ``Action`` (2.3.3), ``status`` the RFC 3463
    code in ``Status`` (2.3.4), ``remote_mta`` the host in ``Remote-MTA`` (2.3.5),
    ``diagnostic`` ``Diagnostic-Code`` (2.3.6) as ``"type; text"`` (e.g. ``"smtp; 550 5.1.1 no
    such user"``; text without a type is reported as ``X-Taube``), ``last_attempt`` the time of
    ``Last-Attempt-Date`` (2.3.7), seconds since the epoch.
    """

    address: str
    original: str | None
    action: Action
    status: str
    diagnostic: str | None
    remote_mta: str | None
    last_attempt: float | None


def should_bounce(sender: str) -> bool:
    """Whether a report may be sent to ``sender``: not to the null reverse-path ``""``.

    RFC 5321 section 6.1 and 3.6.3 (and RFC 3461 section 6.2): a message with the null sender
    is itself a notification and must never cause another one, or two systems could bounce
    messages to each other forever. The caller logs the failure or tells the postmaster instead.
    """
    return sender != ""


def build_dsn(
    *,
    reporting_mta: str,
    original_sender: str,
    queue_id: str,
    arrival: float,
    reports: Sequence[RecipientReport],
    original: BinaryIO,
    return_content: ReturnContent = "full",
    envid: str | None = None,
    now: float,
    max_full_size: int = 10 * 1024 * 1024,
) -> bytes:
    """The complete RFC 3464 report on ``reports``, to be sent from ``<>`` to ``original_sender``.

    ``reporting_mta`` is this host's name (``Reporting-MTA``, RFC 3464 section 2.2.2, and the
    domain of ``MAILER-DAEMON``); ``arrival`` the time the message was received
    (``Arrival-Date``, 2.2.5); ``envid`` the RFC 3461 section 4.4 ENVID of the transaction,
    already decoded from xtext (``Original-Envelope-Id``, RFC 3464 section 2.2.1); ``now`` the
    time of the report (``Date``, ``Message-ID`` and the MIME boundary derive from it and
    ``queue_id``).

    ``original`` is read from its current position (for a queued message: the data file, after
    seeking to ``body_offset`` past the ``Return-Path`` line) and not rewound. With
    ``return_content="full"`` (RFC 3461 section 4.3, RET=FULL) the whole message is returned as
    ``message/rfc822`` if it is at most ``max_full_size`` octets and has no line longer than
    998 octets; otherwise, and with ``"headers"`` (RET=HDRS), only its header section is
    returned as ``text/rfc822-headers`` (RFC 6522 section 4), at most
    :data:`MAX_HEADER_SECTION` octets of it. At most ``max_full_size`` octets of the message
    are held in memory, and with ``"headers"`` nothing past its header section is read.

    Line ends of the original are normalized to CRLF. If it has 8-bit octets (8BITMIME or
    SMTPUTF8 mail), the parts carrying them and the report as a whole are declared
    ``Content-Transfer-Encoding: 8bit``; the report is then to be relayed with ``BODY=8BITMIME``.

    Raises ValueError for an empty ``reports``, a null ``original_sender`` (see
    :func:`should_bounce`), a ``reporting_mta`` that is not a host name, an address with
    control characters or angle brackets, or a ``status`` that is not an RFC 3463 code.
    """
    if not reports:
        raise ValueError("a delivery status notification needs at least one recipient")
    if not should_bounce(original_sender):
        raise ValueError("no notification is sent to the null sender <> (RFC 5321 6.1)")
    if not _HOSTNAME.fullmatch(reporting_mta):
        raise ValueError(f"reporting MTA is not a host name: {reporting_mta!r}")
    _check_address(original_sender)
    for report in reports:
        _check_address(report.address)
        if report.original is not None:
            _check_address(report.original)
        if report.action not in _ACTIONS:
            raise ValueError(f"unknown DSN action {report.action!r}")
        if not _STATUS.fullmatch(report.status):
            raise ValueError(f"not an RFC 3463 status code: {report.status!r}")

    returned = _read_original(
        original, full=return_content == "full", limit=max_full_size
    )
    actions = {report.action for report in reports}
    subject = _subject(actions)
    headers_only = returned.full is None

    notification = _notification(
        reporting_mta, queue_id, reports, returned, max_full_size
    )
    notification_8bit = not notification.isascii()
    status_part = _delivery_status(reporting_mta, queue_id, arrival, envid, reports)
    if returned.full is not None:
        original_part = bytes(returned.full)
    else:
        original_part = b"".join(line + b"\r\n" for line in returned.headers)
    original_8bit = not original_part.isascii()

    described = "Undelivered Message" if "failed" in actions else "Message"
    if headers_only:
        original_type, original_description = (
            "text/rfc822-headers",
            f"{described} Headers",
        )
    else:
        original_type, original_description = "message/rfc822", described

    parts: list[tuple[list[str], bytes]] = [
        (
            [
                "Content-Description: Notification",
                "Content-Type: text/plain; charset="
                + ("utf-8" if notification_8bit else "us-ascii"),
                *(["Content-Transfer-Encoding: 8bit"] if notification_8bit else []),
            ],
            notification.encode("utf-8"),
        ),
        (
            [
                "Content-Description: Delivery report",
                "Content-Type: message/delivery-status",
            ],
            status_part.encode("ascii"),
        ),
        (
            [
                f"Content-Description: {original_description}",
                f"Content-Type: {original_type}",
                *(["Content-Transfer-Encoding: 8bit"] if original_8bit else []),
            ],
            original_part,
        ),
    ]
    boundary = _boundary(queue_id, now, reporting_mta, [body for _, body in parts])

    date = _date(now)
    micros = int(now * 1_000_000) % 1_000_000
    stamp = f"{datetime.fromtimestamp(now, UTC):%Y%m%d%H%M%S}.{micros:06d}"
    message_id = f"<{stamp}.{_boundary_safe(queue_id) or 'dsn'}@{reporting_mta}>"
    header_lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{original_sender}>",
        f"Subject: {subject}",
        f"Date: {date}",
        f"Message-ID: {message_id}",
        # RFC 3834 section 5: responses generated automatically, here to a message received.
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f' boundary="{boundary}"',
    ]
    if notification_8bit or original_8bit:
        header_lines.append("Content-Transfer-Encoding: 8bit")

    out: list[bytes] = [
        "\r\n".join(header_lines).encode("utf-8"),
        b"\r\n\r\nThis is a MIME-encapsulated message.\r\n",
    ]
    delimiter = f"\r\n--{boundary}".encode("ascii")
    for part_headers, body in parts:
        out.append(delimiter + b"\r\n")
        out.append("\r\n".join(part_headers).encode("ascii") + b"\r\n\r\n")
        out.append(body)
    out.append(delimiter + b"--\r\n")
    return b"".join(out)


@dataclass(frozen=True, slots=True)
class _Returned:
    """What :func:`_read_original` found: lines without their line ends."""

    headers: list[
        bytes
    ]  # the header section, folded where too long, cut at MAX_HEADER_SECTION
    # The whole message with CRLF line ends, or None when it is not returned whole. One buffer,
    # not a list of lines: a message of millions of empty lines would cost ~40 octets a line.
    full: bytearray | None
    too_big: bool  # the whole message was wanted but is larger than the limit
    long_lines: (
        bool  # the whole message was wanted but has lines longer than 998 octets
    )


def _read_original(stream: BinaryIO, *, full: bool, limit: int) -> _Returned:
    """Read the header section of ``stream`` and, if ``full``, the whole message up to ``limit``.

    Stops reading as soon as the outcome is known: after the header section when only it is
    wanted or the whole message cannot be returned, so memory stays within ``limit`` plus
    :data:`MAX_HEADER_SECTION` (plus one read buffer).
    """
    headers: list[bytes] = []
    header_size = 0
    header_cut = cut_in_field = False
    in_header = True
    whole: bytearray | None = bytearray() if full else None
    whole_size = 0
    too_big = long_lines = False

    for piece, continued in _pieces(stream):
        if in_header:
            if piece == b"" and not continued:
                in_header = False
            elif not header_cut:
                # RFC 5322 section 2.2.3: a line break before white space is folding; an overlong
                # header line is broken up so (unfolding it then adds one space).
                line = b" " + piece if continued else piece
                if header_size + len(line) + 2 > MAX_HEADER_SECTION:
                    header_cut = True
                    cut_in_field = line[:1] in (b" ", b"\t")
                else:
                    headers.append(line)
                    header_size += len(line) + 2
        if whole is not None:
            whole_size += len(piece) + 2
            if continued:
                whole, long_lines = None, True
            elif whole_size > limit:
                whole, too_big = None, True
            else:
                whole += piece
                whole += b"\r\n"
        if whole is None and (not in_header or header_cut):
            break
    if cut_in_field:
        # Do not end on half a field: drop what was kept of the one cut, start line included.
        while headers and headers[-1][:1] in (b" ", b"\t"):
            headers.pop()
        if headers:
            headers.pop()
    return _Returned(
        headers=headers, full=whole, too_big=too_big, long_lines=long_lines
    )


def _pieces(stream: BinaryIO) -> Iterator[tuple[bytes, bool]]:
    """The lines of ``stream`` without line ends (CRLF, LF or a lone CR), in chunked reads.

    A line longer than 998 octets comes as several pieces of at most that length; all but the
    first are flagged ``continued``. No more than one read buffer and one line piece is held.
    """
    pending = b""
    continued = False
    while True:
        chunk = stream.read(_READ_SIZE)
        if not chunk:
            break
        data = pending + chunk
        # A final CR may be the first half of a CRLF split across two reads: keep it for later.
        cr = data.endswith(b"\r")
        lines = _LINE_END.split(data[:-1] if cr else data)
        for line in lines[:-1]:
            yield from _split_long(line, continued)
            continued = False
        pending = lines[-1]
        while len(pending) > _MAX_LINE:
            yield pending[:_HARD_PIECE], continued
            pending, continued = pending[_HARD_PIECE:], True
        if cr:
            pending += b"\r"
    if pending:
        # At most one line, ended by a lone CR or not at all.
        line = _LINE_END.split(pending)[0]
        yield from _split_long(line, continued)


def _split_long(line: bytes, continued: bool) -> Iterator[tuple[bytes, bool]]:
    """``line`` (the rest of a line) in pieces of at most 998 octets, flagged as in _pieces."""
    while len(line) > _MAX_LINE:
        yield line[:_HARD_PIECE], continued
        line, continued = line[_HARD_PIECE:], True
    yield line, continued


def _check_address(address: str) -> None:
    """Envelope addresses go into header fields as they are; they were checked when received,
    so a control character or an angle bracket here is a programming error."""
    if _CONTROLS.search(address) or "<" in address or ">" in address:
        raise ValueError(f"not an envelope address: {address!r}")


def single_line(text: str) -> str:
    """``text`` on one line: every run of control characters (CR, LF, TAB, ...) becomes one
    space, runs of spaces are collapsed, the ends are stripped. Multi-line SMTP replies thus
    become one line, and nothing a remote server says can start a header field of its own."""
    return _SPACES.sub(" ", _CONTROLS.sub(" ", text)).strip()


def _escape(text: str) -> str:
    """``text`` with non-ASCII characters as RFC 6533 section 3 ``\\x{HHHH}`` escapes, so that
    ``message/delivery-status`` stays US-ASCII as RFC 3464 section 2.1.1 requires."""
    return "".join(c if c.isascii() else f"\\x{{{ord(c):X}}}" for c in text)


def _address_field(name: str, address: str) -> str:
    """An address-type field of RFC 3464 section 2.3.1/2.3.2: ``rfc822`` for ASCII addresses,
    ``utf-8`` (RFC 6533 section 3, utf-8-addr-xtext) for internationalized ones."""
    if address.isascii():
        return _field(name, f"rfc822; {address}")
    xtext = "".join(
        c if c.isascii() and c not in "+=\\" and c > " " else f"\\x{{{ord(c):X}}}"
        for c in address
    )
    return _field(name, f"utf-8; {xtext}")


def _field(name: str, value: str) -> str:
    """``name: value``, sanitized and folded (RFC 5322 section 2.2.3) into lines of at most
    78 characters where white space allows, never more than 998: a longer unbroken token is
    cut into pieces on continuation lines. Lines are joined with CRLF, no final CRLF."""
    words = [w for w in _escape(single_line(value)).split(" ") if w]
    lines: list[str] = []
    current = f"{name}:"
    for word in words:
        pieces = [word[i : i + _HARD_PIECE] for i in range(0, len(word), _HARD_PIECE)]
        for piece in pieces:
            if (
                len(current) + 1 + len(piece) <= _FOLD_WIDTH
                or current.strip() == f"{name}:"
            ):
                current += " " + piece
            else:
                lines.append(current)
                current = " " + piece
            if (
                len(current) > _MAX_LINE
            ):  # a field name plus a hard piece: cannot happen
                raise AssertionError("folded line too long")
    lines.append(current)
    return "\r\n".join(lines)


def _date(timestamp: float) -> str:
    """RFC 5322 section 3.3 date-time, in UTC: the form RFC 3464 section 2.4.1 uses."""
    return format_datetime(datetime.fromtimestamp(timestamp, UTC))


def _subject(actions: set[Action]) -> str:
    """A failure report if anything failed, else a delay warning, else a success report."""
    for action in _ACTIONS:
        if action in actions:
            return _SUBJECTS[action]
    raise AssertionError("no action")  # pragma: no cover - reports is not empty


def _diagnostic(diagnostic: str) -> tuple[str, str]:
    """(type, text) of a Diagnostic-Code value; text without a type is ``X-Taube`` (RFC 3464
    section 2.3.6: types not registered with IANA start with ``X-``)."""
    cleaned = single_line(diagnostic)
    match = _DIAGNOSTIC.fullmatch(cleaned)
    if match:
        return match.group(1), match.group(2)
    return "X-Taube", cleaned


def _delivery_status(
    reporting_mta: str,
    queue_id: str,
    arrival: float,
    envid: str | None,
    reports: Sequence[RecipientReport],
) -> str:
    """The ``message/delivery-status`` body (RFC 3464 section 2.1): per-message fields, then a
    block of per-recipient fields for each recipient, blocks separated by empty lines."""
    per_message = [
        _field("Reporting-MTA", f"dns; {reporting_mta}"),
        _field("X-Taube-Queue-ID", queue_id),
    ]
    if envid is not None:
        per_message.append(_field("Original-Envelope-Id", envid))
    per_message.append(_field("Arrival-Date", _date(arrival)))
    blocks = ["\r\n".join(per_message)]
    for report in reports:
        fields = [_address_field("Final-Recipient", report.address)]
        if report.original is not None:
            fields.append(_address_field("Original-Recipient", report.original))
        fields.append(_field("Action", report.action))
        fields.append(_field("Status", report.status))
        if report.remote_mta is not None:
            fields.append(_field("Remote-MTA", f"dns; {report.remote_mta}"))
        if report.diagnostic is not None:
            kind, text = _diagnostic(report.diagnostic)
            fields.append(_field("Diagnostic-Code", f"{kind}; {text}"))
        if report.last_attempt is not None:
            fields.append(_field("Last-Attempt-Date", _date(report.last_attempt)))
        blocks.append("\r\n".join(fields))
    return "\r\n\r\n".join(blocks) + "\r\n"


def _recipient_paragraph(report: RecipientReport) -> str:
    """One recipient of the human-readable part, wrapped: address, where from, what happened."""
    text = f"<{report.address}>"
    if report.original is not None and report.original != report.address:
        text += f" (expanded from <{report.original}>)"
    if report.diagnostic is not None:
        reply = _diagnostic(report.diagnostic)[1]
        if report.remote_mta is not None:
            text += f": host {single_line(report.remote_mta)} said: {reply}"
        else:
            text += f": {reply}"
    elif report.remote_mta is not None:
        text += f": via host {single_line(report.remote_mta)}"
    text += f" (status {report.status})"
    return textwrap.fill(
        text,
        width=_FOLD_WIDTH,
        subsequent_indent="    ",
        break_long_words=True,
        break_on_hyphens=False,
    )


def _notification(
    reporting_mta: str,
    queue_id: str,
    reports: Sequence[RecipientReport],
    returned: _Returned,
    max_full_size: int,
) -> str:
    """The ``text/plain`` first part (RFC 6522 section 3): what happened, for people."""

    def paragraph(text: str) -> str:
        return textwrap.fill(text, width=_FOLD_WIDTH, break_on_hyphens=False)

    sections = [
        paragraph(
            f"This is the mail system at host {reporting_mta}. This is a report on the "
            f"delivery of your message (queue id {single_line(queue_id)})."
        )
    ]
    for action in _ACTIONS:
        mine = [report for report in reports if report.action == action]
        if mine:
            sections.append(paragraph(_HEADINGS[action]))
            sections.extend(_recipient_paragraph(report) for report in mine)
    if returned.full is not None:
        sections.append(paragraph("Your message is attached below."))
    else:
        note = "Only the header section of your message is attached below"
        if returned.too_big:
            note += f", as the message is larger than {max_full_size} octets"
        elif returned.long_lines:
            note += ", as the message has lines longer than 998 octets"
        sections.append(paragraph(note + "."))
    if "failed" in {report.action for report in reports}:
        sections.append(
            paragraph(
                "If you need help, send mail to the postmaster and include this report. "
                "You may delete your own text from the attached message."
            )
        )
    sections.append("                   The mail system")
    return "\n\n".join(sections).replace("\n", "\r\n") + "\r\n"


def _boundary_safe(text: str) -> str:
    """``text`` with every character that may not appear in a MIME boundary dropped."""
    return _BOUNDARY_UNSAFE.sub("", text)


def _boundary(
    queue_id: str, now: float, reporting_mta: str, bodies: Sequence[bytes]
) -> str:
    """A boundary like Postfix's ``<queue id>.<time>/<host>`` (RFC 2046 section 5.1.1: at most
    70 characters); a suffix is added while a body contains it, so it is certainly unique."""
    base = f"{_boundary_safe(queue_id)[:24]}.{int(now)}/{reporting_mta}"[:64]
    candidate, counter = base, 0
    while any(f"--{candidate}".encode("ascii") in body for body in bodies):
        counter += 1
        candidate = f"{base}={counter}"
    return candidate
