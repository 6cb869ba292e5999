"""SMTP smuggling (CVE-2023-51764 family) and fuzz invariants for the whole engine."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taube.proto.smtp import Closed, DataAborted, EndOfData, MailFrom, RcptTo, SMTPConfig
from tests.proto.helpers import codes, content, drive

ENVELOPE = b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"
SMUGGLED = b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\nSpoofed\r\n"

FALSE_ENDS = [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\r.\r", b"\n.\r"]


@pytest.mark.parametrize("false_end", FALSE_ENDS, ids=[repr(f) for f in FALSE_ENDS])
@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_false_end_never_starts_a_second_message(false_end: bytes, bytewise: bool) -> None:
    data = ENVELOPE + b"Subject: hi\r\n\r\nbody" + false_end + SMUGGLED + b".\r\nQUIT\r\n"
    out, events = drive(data, bytewise=bytewise)
    assert sum(isinstance(e, MailFrom) for e in events) == 1
    assert sum(isinstance(e, RcptTo) for e in events) == 1
    assert not any(isinstance(e, EndOfData) for e in events)
    assert any(isinstance(e, DataAborted) for e in events)
    assert codes(out)[-2:] == ["554 5.5.2", "221 2.0.0"]


@pytest.mark.parametrize("false_end", FALSE_ENDS, ids=[repr(f) for f in FALSE_ENDS])
def test_false_end_in_normalize_mode_stays_content(false_end: bytes) -> None:
    data = ENVELOPE + b"body" + false_end + SMUGGLED + b".\r\nQUIT\r\n"
    out, events = drive(data, config=SMTPConfig(hostname="h", normalize_bare_newlines=True))
    assert sum(isinstance(e, MailFrom) for e in events) == 1
    assert sum(isinstance(e, EndOfData) for e in events) == 1
    assert b"evil@x.test" in content(events)
    assert codes(out)[-2:] == ["250 2.0.0", "221 2.0.0"]


REPLY_LINE = re.compile(rb"^[2-5]\d\d[ -].*$")


@given(st.binary(max_size=3000))
@settings(max_examples=400)
def test_any_bytes_give_replies_never_exceptions(blob: bytes) -> None:
    out, events = drive(b"EHLO c\r\n" + blob)
    assert isinstance(events[-1], Closed)
    for line in out.split(b"\r\n")[:-1]:
        assert REPLY_LINE.match(line), line


command_words = st.sampled_from([
    b"EHLO c", b"HELO c", b"MAIL FROM:<a@x.test>", b"MAIL FROM:<>", b"RCPT TO:<b@y.test>", b"DATA",
    b"RSET", b"NOOP", b"VRFY x", b"HELP", b".", b"..", b"body", b"", b"\x00", b"MAIL FROM:<a@x> SIZE=5",
])
line_ends = st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\r\n"])


@given(st.lists(st.tuples(command_words, line_ends), max_size=40), st.booleans())
@settings(max_examples=400)
def test_dialogue_fuzz_whole_equals_bytewise(lines: list[tuple[bytes, bytes]], normalize: bool) -> None:
    data = b"".join(w + e for w, e in lines)
    config = SMTPConfig(hostname="h", normalize_bare_newlines=normalize, max_errors=1000)
    whole = drive(data, config=config)
    assert whole[0] == drive(data, config=config, bytewise=True)[0]
    # every accepted message ended with a real CRLF.CRLF in the input
    ends = sum(isinstance(e, EndOfData) for e in whole[1])
    assert ends <= data.count(b"\r\n.\r\n")
