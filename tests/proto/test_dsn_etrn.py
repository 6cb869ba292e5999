"""RFC 3461 DSN parameters (RET, ENVID, NOTIFY, ORCPT), their xtext, and RFC 1985 ETRN in the engine."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taube.proto.address import AddressError, xtext_decode, xtext_encode
from taube.proto.replies import Reply
from taube.proto.smtp import (
    PARAM_LINE_MAX,
    Closed,
    Decision,
    Etrn,
    MailFrom,
    RcptTo,
    SMTPConfig,
)
from tests.proto.helpers import accept_all, codes, drive

EHLO = b"EHLO client.test\r\n"
MAIL = b"MAIL FROM:<a@x.test>\r\n"
ETRN_ON = SMTPConfig(hostname="mx.test", etrn=True)


def events_of(kind: type, data: bytes, **kwargs) -> list:
    _, events = drive(data, **kwargs)
    return [e for e in events if isinstance(e, kind)]


# --- xtext (RFC 3461 section 4) ---------------------------------------------------------------
@pytest.mark.parametrize(("xtext", "text"), [
    ("", ""),
    ("QQ+2Bxyz", "QQ+xyz"),
    ("+2B", "+"),
    ("+3D", "="),
    ("a+20b", "a b"),
    ("bob+2Bx@example.test", "bob+x@example.test"),
    ("!~", "!~"),
    ("+C3+BC", "ü"),
])
def test_xtext_examples(xtext: str, text: str) -> None:
    assert xtext_decode(xtext) == text
    assert xtext_encode(text) == xtext


@pytest.mark.parametrize("bad", [
    "a+", "a+2", "+2b", "+zz", "a=b", "a b", "\x7f", "é", "a\tb", "+C3",  # lone UTF-8 lead octet
])
def test_xtext_decode_rejects(bad: str) -> None:
    with pytest.raises(AddressError):
        xtext_decode(bad)


@given(st.text())
def test_xtext_round_trip(text: str) -> None:
    encoded = xtext_encode(text)
    assert all("\x21" <= ch <= "\x7e" and ch != "=" for ch in encoded)
    assert xtext_decode(encoded) == text


@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="+=")))
def test_xtext_plain_characters_stand_for_themselves(text: str) -> None:
    assert xtext_encode(text) == text
    assert xtext_decode(text) == text


# --- MAIL: RET and ENVID ---------------------------------------------------------------------
def mail_with(params: str) -> tuple[list[str], list[MailFrom]]:
    out, events = drive(EHLO + b"MAIL FROM:<a@x.test> " + params.encode() + b"\r\nQUIT\r\n")
    return codes(out)[1:-1], [e for e in events if isinstance(e, MailFrom)]


@pytest.mark.parametrize(("params", "ret", "envid"), [
    ("RET=FULL", "FULL", None),
    ("RET=HDRS", "HDRS", None),
    ("ret=hdrs", "HDRS", None),
    ("RET=Full", "FULL", None),
    ("ENVID=QQ+2Bxyz", None, "QQ+xyz"),
    ("envid=abc", None, "abc"),
    ("ENVID=a+20b", None, "a b"),
    ("ENVID=" + "x" * 100, None, "x" * 100),
    ("RET=HDRS ENVID=id1 BODY=8BITMIME SIZE=10", "HDRS", "id1"),
])
def test_mail_dsn_parameters_accepted(params: str, ret: str | None, envid: str | None) -> None:
    replies, mails = mail_with(params)
    assert replies == ["250 2.1.0"]
    assert (mails[0].ret, mails[0].envid) == (ret, envid)


def test_mail_without_dsn_parameters() -> None:
    replies, mails = mail_with("")
    assert replies == ["250 2.1.0"]
    assert (mails[0].ret, mails[0].envid) == (None, None)


@pytest.mark.parametrize(("params", "reply"), [
    ("RET", "501 5.5.4"),
    ("RET=", "501 5.5.4"),
    ("RET=NONE", "501 5.5.4"),
    ("RET=FULL,HDRS", "501 5.5.4"),
    ("RET=FULL RET=HDRS", "501 5.5.4"),  # at most once
    ("RET=FULL ret=FULL", "501 5.5.4"),
    ("ENVID", "501 5.5.4"),
    ("ENVID=", "501 5.5.4"),
    ("ENVID=" + "x" * 101, "501 5.5.4"),  # RFC 3461 4.4: 100 characters
    ("ENVID=a+2", "501 5.5.4"),
    ("ENVID=a+2b", "501 5.5.4"),  # hexchar digits are upper case
    ("ENVID=a+0Ab", "501 5.5.4"),  # decodes to a control character
    ("ENVID=+C3+BC", "501 5.5.4"),  # decodes to non-ASCII
    ("ENVID=a ENVID=b", "501 5.5.4"),
    ("NOTIFY=NEVER", "555 5.5.4"),  # a RCPT parameter
    ("ORCPT=rfc822;a@b", "555 5.5.4"),
])
def test_mail_dsn_parameters_rejected(params: str, reply: str) -> None:
    replies, mails = mail_with(params)
    assert replies == [reply]
    assert mails == []


def test_mail_bad_parameter_replies_say_what_is_wrong() -> None:
    out, _ = drive(EHLO + b"MAIL FROM:<a@x> RET=NONE\r\nMAIL FROM:<a@x> ENVID=a+2\r\n"
                   b"MAIL FROM:<a@x> RET=FULL RET=FULL\r\nQUIT\r\n")
    text = out.decode()
    assert "501 5.5.4 Syntax: RET=FULL|HDRS (RFC 3461 4.3)\r\n" in text
    assert "501 5.5.4 Syntax: ENVID=" in text
    assert "501 5.5.4 Error: duplicate parameter RET\r\n" in text


def test_dsn_parameters_need_ehlo() -> None:
    out, _ = drive(b"HELO c\r\nMAIL FROM:<a@x> RET=FULL\r\nMAIL FROM:<a@x>\r\n"
                   b"RCPT TO:<b@y> NOTIFY=NEVER\r\nQUIT\r\n")
    assert codes(out) == ["250", "555 5.5.4", "250 2.1.0", "555 5.5.4", "221 2.0.0"]


# --- RCPT: NOTIFY and ORCPT ------------------------------------------------------------------
def rcpt_with(params: str) -> tuple[list[str], list[RcptTo]]:
    out, events = drive(EHLO + MAIL + b"RCPT TO:<b@y.test> " + params.encode() + b"\r\nQUIT\r\n")
    return codes(out)[2:-1], [e for e in events if isinstance(e, RcptTo)]


@pytest.mark.parametrize(("params", "notify", "orcpt"), [
    ("NOTIFY=NEVER", ("NEVER",), None),
    ("notify=never", ("NEVER",), None),
    ("NOTIFY=SUCCESS", ("SUCCESS",), None),
    ("NOTIFY=FAILURE", ("FAILURE",), None),
    ("NOTIFY=DELAY", ("DELAY",), None),
    ("NOTIFY=SUCCESS,FAILURE", ("SUCCESS", "FAILURE"), None),
    ("NOTIFY=delay,Failure,SUCCESS", ("SUCCESS", "FAILURE", "DELAY"), None),
    ("NOTIFY=FAILURE,DELAY", ("FAILURE", "DELAY"), None),
    ("ORCPT=rfc822;bob+2Bx@example.test", None, "rfc822;bob+x@example.test"),
    ("ORCPT=RFC822;b@y.test", None, "RFC822;b@y.test"),
    ("ORCPT=utf-8;j+5Cx{00FC}rgen@y.test", None, "utf-8;j\\x{00FC}rgen@y.test"),
    ("ORCPT=rfc822;a+20b@y.test", None, "rfc822;a b@y.test"),
    ("ORCPT=rfc822;a;b@y.test", None, "rfc822;a;b@y.test"),  # only the first ";" separates
    ("NOTIFY=SUCCESS ORCPT=rfc822;b@y.test", ("SUCCESS",), "rfc822;b@y.test"),
    ("ORCPT=rfc822;" + "x" * 493, None, "rfc822;" + "x" * 493),  # 500 characters in all
])
def test_rcpt_dsn_parameters_accepted(params: str, notify: tuple[str, ...] | None, orcpt: str | None) -> None:
    replies, rcpts = rcpt_with(params)
    assert replies == ["250 2.1.5"]
    assert (rcpts[0].notify, rcpts[0].orcpt) == (notify, orcpt)


def test_rcpt_without_dsn_parameters() -> None:
    replies, rcpts = rcpt_with("")
    assert replies == ["250 2.1.5"]
    assert (rcpts[0].notify, rcpts[0].orcpt) == (None, None)


@pytest.mark.parametrize(("params", "reply"), [
    ("NOTIFY", "501 5.5.4"),
    ("NOTIFY=", "501 5.5.4"),
    ("NOTIFY=ALWAYS", "501 5.5.4"),
    ("NOTIFY=NEVER,SUCCESS", "501 5.5.4"),  # NEVER alone
    ("NOTIFY=SUCCESS,NEVER", "501 5.5.4"),
    ("NOTIFY=SUCCESS,SUCCESS", "501 5.5.4"),  # no duplicates
    ("NOTIFY=SUCCESS,", "501 5.5.4"),
    ("NOTIFY=,FAILURE", "501 5.5.4"),
    ("NOTIFY=SUCCESS,,DELAY", "501 5.5.4"),
    ("NOTIFY=NEVER NOTIFY=NEVER", "501 5.5.4"),
    ("ORCPT", "501 5.5.4"),
    ("ORCPT=", "501 5.5.4"),
    ("ORCPT=b@y.test", "501 5.5.4"),  # no addr-type
    ("ORCPT=;b@y.test", "501 5.5.4"),
    ("ORCPT=rfc822;", "501 5.5.4"),
    ("ORCPT=rfc822;b+2x@y.test", "501 5.5.4"),
    ("ORCPT=rfc822;b+00@y.test", "501 5.5.4"),  # a NUL
    ("ORCPT=rfc822;+C3+BC@y.test", "501 5.5.4"),  # not US-ASCII
    ("ORCPT=rfc(822;b@y.test", "501 5.5.4"),  # addr-type is an atom
    ("ORCPT=rfc822;" + "x" * 494, "501 5.5.4"),  # 501 characters
    ("ORCPT=rfc822;a@y ORCPT=rfc822;b@y", "501 5.5.4"),
    ("RET=FULL", "555 5.5.4"),  # a MAIL parameter
    ("ENVID=x", "555 5.5.4"),
    ("X-UNKNOWN=1", "555 5.5.4"),
    ("NOTIFY=NEVER FOO", "555 5.5.4"),
])
def test_rcpt_dsn_parameters_rejected(params: str, reply: str) -> None:
    replies, rcpts = rcpt_with(params)
    assert replies == [reply]
    assert rcpts == []


def test_rcpt_bad_parameter_replies_say_what_is_wrong() -> None:
    out, _ = drive(EHLO + MAIL + b"RCPT TO:<b@y> NOTIFY=NEVER,DELAY\r\nRCPT TO:<b@y> ORCPT=b@y\r\nQUIT\r\n")
    text = out.decode()
    assert "501 5.5.4 Syntax: NOTIFY=NEVER or NOTIFY=SUCCESS,FAILURE,DELAY" in text
    assert "501 5.5.4 Syntax: ORCPT=<addr-type>;<xtext" in text


def test_maximal_mail_and_rcpt_lines_fit() -> None:
    local = "l" * 64
    domain = ".".join(["d" * 63] * 3) + "." + "d" * 61  # 253 octets
    path = f"<{local}@{domain[:256 - len(local) - 3]}>"
    assert len(path) == 256
    mail = (f"MAIL FROM:{path} SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID={'+2B' * 33}x\r\n").encode()
    rcpt = (f"RCPT TO:{path} NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;{'y' * 493}\r\n").encode()
    assert len(mail) <= PARAM_LINE_MAX and len(rcpt) <= PARAM_LINE_MAX
    out, events = drive(EHLO + mail + rcpt + b"QUIT\r\n")
    assert codes(out) == ["250", "250 2.1.0", "250 2.1.5", "221 2.0.0"]
    assert [e for e in events if isinstance(e, MailFrom)][0].envid == "+" * 33 + "x"


# --- EHLO and HELP ---------------------------------------------------------------------------
def ehlo_keywords(config: SMTPConfig) -> list[str]:
    out, _ = drive(EHLO + b"QUIT\r\n", config=config)
    return [line[4:] for line in out.decode().split("\r\n")[1:] if line.startswith("250")]


def test_ehlo_lists_dsn_always_and_etrn_when_enabled() -> None:
    plain = ehlo_keywords(SMTPConfig(hostname="mx.test"))
    assert "DSN" in plain and "ETRN" not in plain
    full = ehlo_keywords(SMTPConfig(hostname="mx.test", etrn=True, tls_available=True,
                                    auth_mechanisms=("PLAIN",), auth_requires_tls=False))
    assert full == ["PIPELINING", "SIZE 26214400", "VRFY", "ETRN", "STARTTLS", "AUTH PLAIN",
                    "AUTH=PLAIN", "ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "SMTPUTF8"]


def test_help_lists_etrn() -> None:
    out, _ = drive(b"HELP\r\nQUIT\r\n")
    assert b" ETRN" in out


# --- ETRN (RFC 1985) -------------------------------------------------------------------------
@pytest.mark.parametrize(("argument", "domain", "subdomains", "queue_name", "node"), [
    ("example.org", "example.org", False, None, "example.org"),
    ("Example.ORG", "example.org", False, None, "example.org"),
    ("@example.org", "example.org", True, None, "@example.org"),
    ("@sub.example.org", "sub.example.org", True, None, "@sub.example.org"),
    ("localhost", "localhost", False, None, "localhost"),
    ("#queue1", None, False, "queue1", "#queue1"),
    ("#q.with-punct!", None, False, "q.with-punct!", "#q.with-punct!"),
    (" example.org ", "example.org", False, None, "example.org"),
])
def test_etrn_forms(argument: str, domain: str | None, subdomains: bool, queue_name: str | None,
                    node: str) -> None:
    out, events = drive(EHLO + f"ETRN {argument}\r\nQUIT\r\n".encode(), config=ETRN_ON)
    etrns = [e for e in events if isinstance(e, Etrn)]
    assert len(etrns) == 1
    e = etrns[0]
    assert (e.domain, e.subdomains, e.queue_name, e.node) == (domain, subdomains, queue_name, node)
    assert codes(out) == ["250", "250 2.0.0", "221 2.0.0"]  # accept() without a reply: 250
    assert f"250 2.0.0 OK, queuing for node {node} started\r\n".encode() in out


@pytest.mark.parametrize("argument", [
    "", "@", "#", "a b", "exa_mple.org", "-bad.org", "@@example.org", "example..org",
    "[192.0.2.1]", "@[192.0.2.1]", "bücher.example", "#qué", "x" * 300,
])
def test_etrn_syntax_errors(argument: str) -> None:
    line = b"ETRN" + (b" " + argument.encode() if argument else b"") + b"\r\n"
    out, events = drive(EHLO + line + b"QUIT\r\n", config=ETRN_ON)
    assert codes(out) == ["250", "501 5.5.4", "221 2.0.0"]
    assert b"Syntax: ETRN [@|#]<domain>" in out
    assert not any(isinstance(e, Etrn) for e in events)


@pytest.mark.parametrize(("data", "expected"), [
    (b"ETRN example.org\r\n", ["503 5.5.1"]),  # before HELO/EHLO
    (b"HELO c\r\nETRN example.org\r\n", ["250", "250 2.0.0"]),  # RFC 1985 does not need EHLO
    (EHLO + MAIL + b"ETRN example.org\r\n", ["250", "250 2.1.0", "503 5.5.1"]),
    (EHLO + MAIL + b"RCPT TO:<b@y>\r\nETRN example.org\r\n", ["250", "250 2.1.0", "250 2.1.5", "503 5.5.1"]),
    (EHLO + MAIL + b"RSET\r\nETRN example.org\r\n", ["250", "250 2.1.0", "250 2.0.0", "250 2.0.0"]),
    (EHLO + b"ETRN example.org\r\nETRN @example.org\r\n", ["250", "250 2.0.0", "250 2.0.0"]),
])
def test_etrn_states(data: bytes, expected: list[str]) -> None:
    out, _ = drive(data + b"QUIT\r\n", config=ETRN_ON)
    assert codes(out) == expected + ["221 2.0.0"]


def test_etrn_in_transaction_says_why() -> None:
    out, _ = drive(EHLO + MAIL + b"ETRN example.org\r\nQUIT\r\n", config=ETRN_ON)
    assert b"503 5.5.1 Error: MAIL transaction in progress\r\n" in out


@pytest.mark.parametrize("data", [
    b"ETRN example.org\r\n",
    EHLO + b"ETRN example.org\r\n",
    EHLO + b"ETRN\r\n",
    EHLO + MAIL + b"ETRN example.org\r\n",
])
def test_etrn_disabled_is_502_in_any_state(data: bytes) -> None:
    out, events = drive(data + b"QUIT\r\n")
    assert codes(out)[-2:] == ["502 5.5.1", "221 2.0.0"]
    assert not any(isinstance(e, Etrn) for e in events)


@pytest.mark.parametrize(("reply", "expected"), [
    (Reply(code=251, enhanced="2.0.0", text="OK, no messages waiting for node example.org"), "251 2.0.0"),
    (Reply(code=253, enhanced="2.0.0", text="OK, 3 pending messages for node example.org started"), "253 2.0.0"),
    (Reply(code=458, enhanced="4.3.0", text="Unable to queue messages for node example.org"), "458 4.3.0"),
    (Reply(code=459, enhanced="4.7.1", text="Node example.org not allowed: no"), "459 4.7.1"),
])
def test_etrn_answers_are_the_sessions(reply: Reply, expected: str) -> None:
    def answer(event: Decision) -> Reply | None:
        return reply if isinstance(event, Etrn) else accept_all(event)

    out, events = drive(EHLO + b"ETRN example.org\r\nMAIL FROM:<a@x>\r\nQUIT\r\n", config=ETRN_ON, answer=answer)
    assert codes(out) == ["250", expected, "250 2.1.0", "221 2.0.0"]
    assert isinstance(events[-1], Closed)


def test_etrn_bytewise_same_as_whole() -> None:
    data = EHLO + b"ETRN @example.org\r\nETRN #q\r\nETRN\r\nQUIT\r\n"
    assert drive(data, config=ETRN_ON)[0] == drive(data, config=ETRN_ON, bytewise=True)[0]
