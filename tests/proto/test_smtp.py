"""The SMTP engine, table-driven: (bytes in) -> (replies out, events), fed whole and byte by byte."""

from __future__ import annotations

import pytest

from taube.proto.replies import Reply
from taube.proto.smtp import (
    Closed,
    DataAborted,
    DataStart,
    EndOfData,
    Hello,
    LocalProtocolError,
    MailFrom,
    RcptTo,
    Reset,
    SMTPConfig,
    SMTPConnection,
)
from tests.proto.helpers import codes, content, drive, refusing

EHLO = b"EHLO client.test\r\n"
ENVELOPE = EHLO + b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"

CASES = [
    # (name, input, expected final reply codes)
    ("helo", b"HELO client.test\r\nQUIT\r\n", ["250", "221 2.0.0"]),
    ("ehlo lowercase", b"ehlo client.test\r\nquit\r\n", ["250", "221 2.0.0"]),
    ("seed dialogue", ENVELOPE + b"Subject: Test\r\n\r\nDies ist eine Testnachricht\r\n.\r\nQUIT\r\n",
     ["250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"]),
    ("mail before helo", b"MAIL FROM:<a@x.test>\r\nQUIT\r\n", ["503 5.5.1", "221 2.0.0"]),
    ("rcpt before mail", EHLO + b"RCPT TO:<b@y.test>\r\nQUIT\r\n", ["250", "503 5.5.1", "221 2.0.0"]),
    ("data before rcpt", EHLO + b"DATA\r\nQUIT\r\n", ["250", "503 5.5.1", "221 2.0.0"]),
    ("nested mail", EHLO + b"MAIL FROM:<a@x.test>\r\nMAIL FROM:<a@x.test>\r\nQUIT\r\n",
     ["250", "250 2.1.0", "503 5.5.1", "221 2.0.0"]),
    ("unknown command", b"FOO bar\r\nQUIT\r\n", ["500 5.5.2", "221 2.0.0"]),
    ("not implemented", b"TURN\r\nQUIT\r\n", ["502 5.5.1", "221 2.0.0"]),
    ("helo without name", b"HELO\r\nQUIT\r\n", ["501 5.5.4", "221 2.0.0"]),
    ("mail syntax", EHLO + b"MAIL <a@x.test>\r\nQUIT\r\n", ["250", "501 5.5.4", "221 2.0.0"]),
    ("bad sender", EHLO + b"MAIL FROM:<a b@x.test>\r\nQUIT\r\n", ["250", "501 5.1.7", "221 2.0.0"]),
    ("bad recipient", EHLO + b"MAIL FROM:<>\r\nRCPT TO:<@>\r\nQUIT\r\n",
     ["250", "250 2.1.0", "501 5.1.3", "221 2.0.0"]),
    ("unknown mail parameter", EHLO + b"MAIL FROM:<a@x.test> FOO=BAR\r\nQUIT\r\n", ["250", "555 5.5.4", "221 2.0.0"]),
    ("unknown rcpt parameter", EHLO + b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test> X=1\r\nQUIT\r\n",
     ["250", "250 2.1.0", "555 5.5.4", "221 2.0.0"]),
    ("parameter after HELO", b"HELO c\r\nMAIL FROM:<a@x.test> SIZE=10\r\nQUIT\r\n", ["250", "555 5.5.4", "221 2.0.0"]),
    ("size too big", EHLO + b"MAIL FROM:<a@x.test> SIZE=999999999999\r\nQUIT\r\n", ["250", "552 5.3.4", "221 2.0.0"]),
    ("bad body", EHLO + b"MAIL FROM:<a@x.test> BODY=9BIT\r\nQUIT\r\n", ["250", "501 5.5.4", "221 2.0.0"]),
    ("body and size ok", EHLO + b"MAIL FROM:<a@x.test> BODY=8BITMIME SIZE=100\r\nQUIT\r\n",
     ["250", "250 2.1.0", "221 2.0.0"]),
    ("utf8 without smtputf8", EHLO + "MAIL FROM:<jürgen@x.test>\r\nQUIT\r\n".encode(), ["250", "553 5.6.7", "221 2.0.0"]),
    ("utf8 with smtputf8", EHLO + "MAIL FROM:<jürgen@x.test> SMTPUTF8\r\nRCPT TO:<ö@y.test>\r\nQUIT\r\n".encode(),
     ["250", "250 2.1.0", "250 2.1.5", "221 2.0.0"]),
    ("rset", EHLO + b"MAIL FROM:<a@x.test>\r\nRSET\r\nRCPT TO:<b@y.test>\r\nQUIT\r\n",
     ["250", "250 2.1.0", "250 2.0.0", "503 5.5.1", "221 2.0.0"]),
    ("rset with argument", b"RSET x\r\nQUIT\r\n", ["501 5.5.4", "221 2.0.0"]),
    ("noop with argument", b"NOOP whatever\r\nQUIT\r\n", ["250 2.0.0", "221 2.0.0"]),
    ("help", b"HELP\r\nQUIT\r\n", ["214 2.0.0", "221 2.0.0"]),
    ("vrfy", b"VRFY someone\r\nQUIT\r\n", ["252 2.0.0", "221 2.0.0"]),
    ("vrfy without argument", b"VRFY\r\nQUIT\r\n", ["501 5.5.4", "221 2.0.0"]),
    ("data with argument", EHLO + b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA x\r\nQUIT\r\n",
     ["250", "250 2.1.0", "250 2.1.5", "501 5.5.4", "221 2.0.0"]),
    ("null sender", EHLO + b"MAIL FROM:<>\r\nQUIT\r\n", ["250", "250 2.1.0", "221 2.0.0"]),
    ("space after colon", EHLO + b"MAIL FROM: <a@x.test>\r\nRCPT TO: <b@y.test>\r\nQUIT\r\n",
     ["250", "250 2.1.0", "250 2.1.5", "221 2.0.0"]),
    ("bare LF in a command line", b"HELO c\nQUIT\r\nQUIT\r\n", ["500 5.5.2", "221 2.0.0"]),
    ("NUL in command", b"HELO c\x00d\r\nQUIT\r\n", ["500 5.5.2", "221 2.0.0"]),
    ("invalid utf-8", b"HELO \xff\r\nQUIT\r\n", ["500 5.5.2", "221 2.0.0"]),
    ("command line too long", b"NOOP " + b"x" * 600 + b"\r\nQUIT\r\n", ["500 5.5.2", "221 2.0.0"]),
    ("huge line below the hard cap", b"NOOP " + b"x" * 60_000 + b"\r\nQUIT\r\n", ["500 5.5.2", "221 2.0.0"]),
    ("empty message", ENVELOPE + b".\r\nQUIT\r\n", ["250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"]),
    ("two transactions", ENVELOPE + b"a\r\n.\r\n" + b"MAIL FROM:<c@x.test>\r\nRCPT TO:<d@y.test>\r\nDATA\r\nb\r\n.\r\nQUIT\r\n",
     ["250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"]),
    ("bare LF in data rejected", ENVELOPE + b"a\nb\r\n.\r\nQUIT\r\n",
     ["250", "250 2.1.0", "250 2.1.5", "354", "554 5.5.2", "221 2.0.0"]),
    ("text line too long", ENVELOPE + b"x" * 1001 + b"\r\n.\r\nQUIT\r\n",
     ["250", "250 2.1.0", "250 2.1.5", "354", "554 5.6.0", "221 2.0.0"]),
    ("text line of 998 is fine", ENVELOPE + b"x" * 998 + b"\r\n.\r\nQUIT\r\n",
     ["250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"]),
    ("loop", ENVELOPE + b"Received: x\r\n" * 100 + b"\r\nbody\r\n.\r\nQUIT\r\n",
     ["250", "250 2.1.0", "250 2.1.5", "354", "554 5.4.6", "221 2.0.0"]),
    ("99 hops pass", ENVELOPE + b"Received: x\r\n" * 99 + b"\r\nbody\r\n.\r\nQUIT\r\n",
     ["250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"]),
    ("source route accepted", EHLO + b"MAIL FROM:<@a.test,@b.test:a@x.test>\r\nQUIT\r\n", ["250", "250 2.1.0", "221 2.0.0"]),
    ("bare postmaster", EHLO + b"MAIL FROM:<>\r\nRCPT TO:<Postmaster>\r\nQUIT\r\n", ["250", "250 2.1.0", "250 2.1.5", "221 2.0.0"]),
]


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize(("name", "data", "expected"), CASES, ids=[c[0] for c in CASES])
def test_dialogue(name: str, data: bytes, expected: list[str], bytewise: bool) -> None:
    out, events = drive(data, bytewise=bytewise)
    assert codes(out) == expected
    assert isinstance(events[-1], Closed)


def test_whole_and_bytewise_give_identical_bytes() -> None:
    for _, data, _ in CASES:
        assert drive(data)[0] == drive(data, bytewise=True)[0]


def test_greeting_and_ehlo_extensions() -> None:
    conn = SMTPConnection(SMTPConfig(hostname="mail.example.test", max_message_size=12345))
    assert conn.data_to_send() == b"220 mail.example.test ESMTP taube\r\n"
    out, _ = drive(EHLO + b"QUIT\r\n", config=SMTPConfig(hostname="mail.example.test", max_message_size=12345))
    lines = out.decode().split("\r\n")
    assert lines[0] == "250-mail.example.test"
    keywords = [line[4:] for line in lines if line.startswith("250")]
    for kw in ("PIPELINING", "SIZE 12345", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8", "VRFY"):
        assert kw in keywords
    assert lines[len(keywords) - 1].startswith("250 ")


def test_vrfy_not_listed_when_off() -> None:
    out, _ = drive(EHLO + b"QUIT\r\n", config=SMTPConfig(hostname="h", vrfy=False))
    assert b"VRFY" not in out


def test_dot_unstuffing_and_content() -> None:
    body = b"Subject: x\r\n\r\n..leading dot\r\n.\r\n"
    _, events = drive(ENVELOPE + body + b"QUIT\r\n")
    assert content(events) == b"Subject: x\r\n\r\n.leading dot\r\n"


def test_pipelined_replies_in_one_flush() -> None:
    """RFC 2920: MAIL, RCPT, RCPT, DATA in one packet get all four replies, in order."""
    conn = SMTPConnection(SMTPConfig(hostname="h"))
    conn.data_to_send()
    conn.receive_data(EHLO)
    assert isinstance(conn.next_event(), Hello)
    conn.accept()
    conn.data_to_send()
    conn.receive_data(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nDATA\r\n")
    seen = []
    while True:
        ev = conn.next_event()
        if not isinstance(ev, (MailFrom, RcptTo, DataStart)):
            break
        seen.append(type(ev))
        conn.accept()
    assert seen == [MailFrom, RcptTo, RcptTo, DataStart]
    out = conn.data_to_send().decode()
    assert [line[:3] for line in out.split("\r\n") if line] == ["250", "250", "250", "354"]


def test_rejected_rcpt_then_data_is_554() -> None:
    refuse_rcpt = refusing(RcptTo, Reply(code=550, enhanced="5.1.1", text="unknown"))
    out, _ = drive(ENVELOPE + b"QUIT\r\n", answer=refuse_rcpt)
    assert codes(out) == ["250", "250 2.1.0", "550 5.1.1", "554 5.5.1", "221 2.0.0"]


def test_too_many_recipients() -> None:
    rcpts = b"".join(b"RCPT TO:<u%d@y.test>\r\n" % i for i in range(4))
    out, _ = drive(EHLO + b"MAIL FROM:<a@x>\r\n" + rcpts + b"QUIT\r\n",
                   config=SMTPConfig(hostname="h", max_recipients=3))
    assert codes(out)[-2] == "452 4.5.3"


def test_message_size_limit_enforced_on_content() -> None:
    big = b"x" * 900 + b"\r\n"
    out, events = drive(ENVELOPE + big * 3 + b".\r\nQUIT\r\n", config=SMTPConfig(hostname="h", max_message_size=2000))
    assert "552 5.3.4" in codes(out)
    assert any(isinstance(e, DataAborted) for e in events)
    assert not any(isinstance(e, EndOfData) for e in events)
    assert len(content(events)) <= 2000


def test_too_many_errors_closes_with_421() -> None:
    out, events = drive(b"FOO\r\n" * 20, config=SMTPConfig(hostname="h", max_errors=3))
    assert codes(out) == ["500 5.5.2", "500 5.5.2", "500 5.5.2", "421 4.7.0"]
    assert isinstance(events[-1], Closed)


def test_rset_emits_reset_only_in_transaction() -> None:
    _, events = drive(EHLO + b"RSET\r\nMAIL FROM:<a@x>\r\nRSET\r\nQUIT\r\n")
    assert sum(isinstance(e, Reset) for e in events) == 1


def test_peer_close_mid_data() -> None:
    _, events = drive(ENVELOPE + b"half a message")
    assert isinstance(events[-1], Closed)
    assert not any(isinstance(e, EndOfData) for e in events)


def test_end_of_data_reject_resets_transaction() -> None:
    refuse_end = refusing(EndOfData, Reply(code=452, enhanced="4.3.1", text="full"))
    out, _ = drive(ENVELOPE + b"x\r\n.\r\nRCPT TO:<b@y>\r\nQUIT\r\n", answer=refuse_end)
    assert codes(out)[-3:] == ["452 4.3.1", "503 5.5.1", "221 2.0.0"]


def test_api_misuse_raises() -> None:
    conn = SMTPConnection(SMTPConfig(hostname="h"))
    with pytest.raises(LocalProtocolError):
        conn.accept()
    conn.data_to_send()  # the greeting first: input before it would close the connection
    conn.receive_data(EHLO)
    conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.reject(Reply(code=250, enhanced=None, text="yes"))


def test_close_with_421() -> None:
    conn = SMTPConnection(SMTPConfig(hostname="h"))
    conn.data_to_send()
    conn.close_with(Reply(code=421, enhanced="4.3.2", text="h Service shutting down"))
    assert conn.data_to_send() == b"421 4.3.2 h Service shutting down\r\n"
    assert isinstance(conn.next_event(), Closed)


def test_commands_after_quit_are_ignored() -> None:
    out, events = drive(b"QUIT\r\nHELO x\r\n")
    assert codes(out) == ["221 2.0.0"]
    assert [type(e) for e in events] == [Closed]
