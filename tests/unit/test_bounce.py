"""Delivery status notifications: RFC 3464 structure, returned content, sanitizing, line limits."""

from __future__ import annotations

import email
import email.policy
import io
from email.message import EmailMessage

import pytest

from taube.queue.bounce import (
    MAX_HEADER_SECTION,
    RecipientReport,
    build_dsn,
    should_bounce,
)

HOST = "mail.example.com"
SENDER = "alice@example.com"
ARRIVAL = 1_700_000_000.0
NOW = 1_700_000_200.5
ORIGINAL = (
    b"Received: from client.example.net\r\n"
    b"From: Alice <alice@example.com>\r\n"
    b"Subject: lunch\r\n"
    b"\r\n"
    b"See you at noon.\r\n"
    b"-- \r\n"
    b"Alice\r\n"
)


def failed(address: str = "bob@example.org", **changes: object) -> RecipientReport:
    fields: dict[str, object] = {
        "address": address,
        "original": None,
        "action": "failed",
        "status": "5.1.1",
        "diagnostic": "smtp; 550 5.1.1 <bob@example.org>: no such user",
        "remote_mta": "mx.example.org",
        "last_attempt": NOW - 10,
    }
    fields.update(changes)
    return RecipientReport(**fields)  # type: ignore[arg-type]


def dsn(
    reports: list[RecipientReport], original: bytes = ORIGINAL, **options: object
) -> bytes:
    return build_dsn(
        reporting_mta=HOST,
        original_sender=SENDER,
        queue_id="8GqZ3bT1A2b3c",
        arrival=ARRIVAL,
        reports=reports,
        original=io.BytesIO(original),
        now=NOW,
        **options,  # type: ignore[arg-type]
    )


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert not message.defects
    return message


def parts(message: EmailMessage) -> list[EmailMessage]:
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    found = list(message.iter_parts())
    assert len(found) == 3
    return found  # type: ignore[return-value]


def status_blocks(message: EmailMessage) -> list[EmailMessage]:
    status = parts(message)[1]
    assert status.get_content_type() == "message/delivery-status"
    blocks = status.get_payload()
    assert isinstance(blocks, list)
    return blocks


def assert_wire_format(data: bytes) -> None:
    """CRLF everywhere, no bare CR or LF, no line over 998 octets (RFC 5322 2.1.1)."""
    assert data.endswith(b"\r\n")
    for line in data[:-2].split(b"\r\n"):
        assert b"\r" not in line and b"\n" not in line
        assert len(line) <= 998


def test_failure_report_structure() -> None:
    data = dsn([failed(original="b@example.net")], envid="QQ314159")
    assert_wire_format(data)
    message = parse(data)
    assert message["From"] == f"Mail Delivery System <MAILER-DAEMON@{HOST}>"
    assert f"\r\nTo: <{SENDER}>\r\n".encode() in data
    assert message["To"].addresses[0].addr_spec == SENDER
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["MIME-Version"] == "1.0"
    assert message["Date"] == "Tue, 14 Nov 2023 22:16:40 +0000"
    assert message["Message-ID"] == f"<20231114221640.500000.8GqZ3bT1A2b3c@{HOST}>"

    text, _, returned = parts(message)
    assert text.get_content_type() == "text/plain"
    body = text.get_content()
    assert "<bob@example.org> (expanded from <b@example.net>)" in body
    assert "host mx.example.org said:" in body
    assert "no such user" in body

    per_message, recipient = status_blocks(message)
    assert per_message["Reporting-MTA"] == f"dns; {HOST}"
    assert per_message["X-Taube-Queue-ID"] == "8GqZ3bT1A2b3c"
    assert per_message["Original-Envelope-Id"] == "QQ314159"
    assert per_message["Arrival-Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert recipient["Final-Recipient"] == "rfc822; bob@example.org"
    assert recipient["Original-Recipient"] == "rfc822; b@example.net"
    assert recipient["Action"] == "failed"
    assert recipient["Status"] == "5.1.1"
    assert recipient["Remote-MTA"] == "dns; mx.example.org"
    assert (
        recipient["Diagnostic-Code"]
        == "smtp; 550 5.1.1 <bob@example.org>: no such user"
    )
    assert recipient["Last-Attempt-Date"] == "Tue, 14 Nov 2023 22:16:30 +0000"

    assert returned.get_content_type() == "message/rfc822"
    inner = returned.get_payload()[0]
    assert inner["Subject"] == "lunch"
    assert inner.as_bytes(policy=email.policy.SMTP) == ORIGINAL


def test_output_is_deterministic() -> None:
    assert dsn([failed()]) == dsn([failed()])


def test_optional_fields_left_out() -> None:
    report = failed(diagnostic=None, remote_mta=None, last_attempt=None)
    per_message, recipient = status_blocks(parse(dsn([report])))
    assert "Original-Envelope-Id" not in per_message
    assert set(recipient.keys()) == {"Final-Recipient", "Action", "Status"}


def test_returned_message_is_byte_exact_in_the_output() -> None:
    data = dsn([failed()])
    assert b"Content-Type: message/rfc822\r\n\r\n" + ORIGINAL + b"\r\n--" in data


def test_headers_only() -> None:
    message = parse(dsn([failed()], return_content="headers"))
    text, _, returned = parts(message)
    assert returned.get_content_type() == "text/rfc822-headers"
    headers = returned.get_content()
    assert "Subject: lunch" in headers
    assert "See you at noon" not in headers
    assert "Only the header section" in text.get_content()


def test_headers_only_does_not_read_the_body() -> None:
    stream = io.BytesIO(ORIGINAL + b"x" * (1 << 20) + b"\r\n")
    build_dsn(
        reporting_mta=HOST,
        original_sender=SENDER,
        queue_id="Q1",
        arrival=ARRIVAL,
        reports=[failed()],
        original=stream,
        return_content="headers",
        now=NOW,
    )
    assert stream.tell() < 1 << 17


def test_too_big_original_falls_back_to_headers() -> None:
    big = ORIGINAL + (b"y" * 70 + b"\r\n") * 1000
    data = dsn([failed()], big, max_full_size=len(big) - 1)
    assert_wire_format(data)
    text, _, returned = parts(parse(data))
    assert returned.get_content_type() == "text/rfc822-headers"
    assert "Subject: lunch" in returned.get_content()
    assert b"y" * 70 not in data
    assert f"larger than {len(big) - 1} octets" in text.get_content()


def test_original_of_exactly_the_limit_is_returned_whole() -> None:
    _, _, returned = parts(parse(dsn([failed()], max_full_size=len(ORIGINAL))))
    assert returned.get_content_type() == "message/rfc822"


def test_original_with_overlong_lines_is_returned_as_headers() -> None:
    original = (
        b"Subject: x\r\nX-Long: " + b"h" * 3000 + b"\r\n\r\n" + b"b" * 5000 + b"\r\n"
    )
    data = dsn([failed()], original)
    assert_wire_format(data)
    text, _, returned = parts(parse(data))
    assert returned.get_content_type() == "text/rfc822-headers"
    assert b"b" * 100 not in data
    assert "longer than 998 octets" in text.get_content()
    # The long header line is folded, not lost.
    assert (
        returned.get_content().replace("\r\n ", "").replace("\n ", "").count("h")
        == 3000
    )


def test_bare_line_ends_in_the_original_are_normalized() -> None:
    original = b"Subject: lf\nX-A: 1\r\n\nbody\rmore\n"
    data = dsn([failed()], original)
    assert_wire_format(data)
    assert b"Subject: lf\r\nX-A: 1\r\n\r\nbody\r\nmore\r\n\r\n--" in data


def test_crlf_split_across_reads() -> None:
    # 64 KiB reads: put the CR of a CRLF at the end of the first read.
    line = b"z" * 900 + b"\r\n"
    body = line * 72  # 902 * 72 = 64944 octets
    pad = 65536 - len(b"Subject: s\r\n\r\n") - len(body) - 1
    original = b"Subject: s\r\n\r\n" + body + b"p" * pad + b"\r\nend\r\n"
    data = dsn([failed()], original)
    assert_wire_format(data)
    assert b"p" * pad + b"\r\nend\r\n\r\n--" in data


def test_huge_header_section_is_cut() -> None:
    original = b"".join(b"X-Filler-%06d: %s\r\n" % (i, b"f" * 60) for i in range(5000))
    data = dsn([failed()], original, return_content="headers")
    assert_wire_format(data)
    headers = parts(parse(data))[2].get_content()
    assert 0 < len(headers) <= MAX_HEADER_SECTION
    assert headers.endswith(("f\r\n", "f\n"))


def test_header_section_cut_inside_a_field_drops_that_field() -> None:
    start = b"X-Start: 1\r\n"
    long_field = b"X-Long: a\r\n" + b"".join(
        b" %s\r\n" % (b"c" * 70) for _ in range(3000)
    )
    data = dsn(
        [failed()], start + long_field + b"\r\nbody\r\n", return_content="headers"
    )
    headers = parts(parse(data))[2].get_content()
    assert "X-Start: 1" in headers
    assert "X-Long" not in headers
    assert "c" * 70 not in headers


def test_several_recipients_with_mixed_actions() -> None:
    reports = [
        failed("bob@example.org"),
        failed(
            "carol@example.org",
            action="delayed",
            status="4.4.1",
            diagnostic="smtp; 421 4.4.1 try again later",
            remote_mta="mx2.example.org",
        ),
        failed(
            "dave@example.net",
            action="delivered",
            status="2.0.0",
            diagnostic="smtp; 250 2.0.0 Ok: queued",
            remote_mta="mx.example.net",
        ),
        failed("erin@example.net", action="relayed", status="2.0.0", diagnostic=None),
    ]
    message = parse(dsn(reports))
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    blocks = status_blocks(message)
    assert len(blocks) == 5
    summary = [(b["Final-Recipient"], b["Action"], b["Status"]) for b in blocks[1:]]
    assert summary == [
        ("rfc822; bob@example.org", "failed", "5.1.1"),
        ("rfc822; carol@example.org", "delayed", "4.4.1"),
        ("rfc822; dave@example.net", "delivered", "2.0.0"),
        ("rfc822; erin@example.net", "relayed", "2.0.0"),
    ]
    assert blocks[2]["Remote-MTA"] == "dns; mx2.example.org"
    assert blocks[2]["Diagnostic-Code"] == "smtp; 421 4.4.1 try again later"
    assert "Diagnostic-Code" not in blocks[4]
    text = parts(message)[0].get_content()
    assert (
        text.index("bob@")
        < text.index("carol@")
        < text.index("dave@")
        < text.index("erin@")
    )


@pytest.mark.parametrize(
    ("actions", "subject"),
    [
        (["delayed"], "Delayed Mail (still being retried)"),
        (["delayed", "delivered"], "Delayed Mail (still being retried)"),
        (["delivered"], "Successful Mail Delivery Report"),
        (["relayed", "delivered"], "Successful Mail Delivery Report"),
        (["delivered", "failed"], "Undelivered Mail Returned to Sender"),
    ],
)
def test_subject_follows_the_actions(actions: list[str], subject: str) -> None:
    status = {
        "failed": "5.0.0",
        "delayed": "4.0.0",
        "delivered": "2.0.0",
        "relayed": "2.0.0",
    }
    reports = [
        failed(f"r{i}@example.org", action=a, status=status[a])
        for i, a in enumerate(actions)
    ]
    assert parse(dsn(reports))["Subject"] == subject


def test_crlf_injection_in_diagnostic_is_harmless() -> None:
    evil = "smtp; 550 no\r\nBcc: victim@example.net\r\n\r\nAction: delivered\nX-Evil: 1\x00"
    report = failed(diagnostic=evil, remote_mta="mx.example.org\r\nX-Host: evil")
    data = dsn([report], envid="id\r\nX-Env: evil")
    assert_wire_format(data)
    message = parse(data)
    assert message["Bcc"] is None
    per_message, recipient = status_blocks(message)
    assert per_message["X-Env"] is None
    assert "X-Env: evil" in per_message["Original-Envelope-Id"]
    assert recipient["Action"] == "failed"
    assert recipient["X-Evil"] is None
    assert recipient["X-Host"] is None
    assert recipient["Bcc"] is None
    assert recipient["Diagnostic-Code"].startswith(
        "smtp; 550 no Bcc: victim@example.net"
    )
    assert "\x00" not in recipient["Diagnostic-Code"]
    for line in data.split(b"\r\n"):
        assert not line.startswith((b"Bcc:", b"X-Evil:", b"X-Host:", b"X-Env:"))


def test_multiline_smtp_reply_becomes_one_field() -> None:
    diagnostic = (
        "smtp; 550-5.7.1 blocked\r\n550-5.7.1 see https://example.org\r\n550 5.7.1 bye"
    )
    _, recipient = status_blocks(parse(dsn([failed(diagnostic=diagnostic)])))
    assert recipient["Diagnostic-Code"] == (
        "smtp; 550-5.7.1 blocked 550-5.7.1 see https://example.org 550 5.7.1 bye"
    )


def test_long_diagnostic_is_folded() -> None:
    diagnostic = "smtp; 550 " + " ".join(["word"] * 400) + " " + "x" * 2500
    data = dsn([failed(diagnostic=diagnostic)])
    assert_wire_format(data)
    _, recipient = status_blocks(parse(data))
    value = recipient["Diagnostic-Code"]
    assert value.startswith("smtp; 550 word word")
    assert value.replace(" ", "").endswith("x" * 2500)


def test_diagnostic_without_type() -> None:
    _, recipient = status_blocks(parse(dsn([failed(diagnostic="connection refused")])))
    assert recipient["Diagnostic-Code"] == "X-Taube; connection refused"


def test_non_ascii_is_escaped_in_the_status_part() -> None:
    report = failed("jörg@example.org", diagnostic="smtp; 550 unbekannt: jörg")
    data = dsn([report])
    assert_wire_format(data)
    message = parse(data)
    text, status, _ = parts(message)
    assert "jörg@example.org" in text.get_content()
    status_bytes = status.as_bytes()
    assert status_bytes.isascii()
    _, recipient = status_blocks(message)
    assert recipient["Final-Recipient"] == "utf-8; j\\x{F6}rg@example.org"
    assert recipient["Diagnostic-Code"] == "smtp; 550 unbekannt: j\\x{F6}rg"


def test_eight_bit_original_is_declared() -> None:
    original = "Subject: Grüße\r\n\r\nHallo\r\n".encode()
    data = dsn([failed()], original)
    message = parse(data)
    assert message["Content-Transfer-Encoding"] == "8bit"
    assert parts(message)[2]["Content-Transfer-Encoding"] == "8bit"


def test_seven_bit_report_has_no_transfer_encoding() -> None:
    assert parse(dsn([failed()]))["Content-Transfer-Encoding"] is None


def test_boundary_not_in_content() -> None:
    first = dsn([failed()])
    boundary = parse(first).get_boundary()
    assert boundary is not None
    original = ORIGINAL + b"--" + boundary.encode() + b"\r\n"
    data = dsn([failed()], original)
    message = parse(data)
    assert message.get_boundary() != boundary
    inner = parts(message)[2].get_payload()[0]
    assert inner.as_bytes(policy=email.policy.SMTP) == original


def test_empty_original() -> None:
    data = dsn([failed()], b"")
    assert_wire_format(data)
    assert len(parts(parse(data))) == 3


@pytest.mark.parametrize(
    "changes",
    [
        {"status": "5.1"},
        {"status": "6.0.0"},
        {"action": "expanded"},
        {"address": "bob@example.org\r\nBcc: x@y"},
        {"original": "<b@example.net>"},
    ],
)
def test_invalid_reports_are_rejected(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        dsn([failed(**changes)])


def test_no_reports_rejected() -> None:
    with pytest.raises(ValueError):
        dsn([])


def test_null_sender_and_bad_host_rejected() -> None:
    common = {
        "queue_id": "Q",
        "arrival": ARRIVAL,
        "reports": [failed()],
        "original": io.BytesIO(ORIGINAL),
        "now": NOW,
    }
    with pytest.raises(ValueError):
        build_dsn(reporting_mta=HOST, original_sender="", **common)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        build_dsn(  # type: ignore[arg-type]
            reporting_mta="mail.example.com\r\nX: y", original_sender=SENDER, **common
        )


def test_should_bounce() -> None:
    assert should_bounce("") is False
    assert should_bounce(SENDER) is True
    assert should_bounce("MAILER-DAEMON@example.org") is True


def test_returning_a_message_of_tiny_lines_costs_about_its_size() -> None:
    """A message of a million empty lines is returned whole; it is held as one buffer, not as a
    million line objects (which cost about 40 octets each)."""
    import tracemalloc

    original = b"Subject: many lines\r\n\r\n" + b"\r\n" * 1_000_000  # 2 MB
    tracemalloc.start()
    try:
        report = dsn([failed()], original)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert original in report
    assert peak < 8 * len(original), peak
