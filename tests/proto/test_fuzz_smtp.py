"""Property tests for the SMTP engine, driven as ``net/smtp_session.py`` drives it.

1. Random bytes in random chunks (CR, LF, NUL, high bytes, long runs without a line end, dots,
   command fragments): the engine raises nothing, everything it sends is a well-formed reply,
   and after ``Closed`` it sends nothing more.
2. Memory stays bounded: whatever the engine holds (line buffer, DATA decoder carry, queued
   events and output, SASL state) stays under a fixed bound after every read, also for megabytes
   without a line end.
3. A valid session gives the same bytes however it is split: pipelined in one piece, byte by
   byte and at random points; and with ``strict_pipelining`` a polite client (one that waits for
   the reply where RFC 2920 and RFC 3207/4954 say so) gets the same replies however each of its
   groups is split, and is never taken for a pipelining violation.
4. Random command sequences (valid and invalid verbs, in random states) get exactly one reply per
   command (a DATA transfer counts as one), except for the closing 421 that may follow the last.

The session side answers every decision as a real session may: accept, or reject with one of the
negative replies the real session sends, chosen by hypothesis per decision (see ``Policy``).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import example, given, note
from hypothesis import strategies as st

from taube.proto import sasl
from taube.proto.dotstuff import stuff
from taube.proto.smtp import (
    DataAborted,
    EndOfData,
    MailFrom,
    SMTPConfig,
    State,
)
from tests.proto.fuzzing import (
    SECRET,
    Policy,
    answers,
    assert_same,
    bytewise,
    command_lines,
    cuts,
    examples,
    fixed_sasl_randomness,
    fuzz_input,
    lines_of,
    lookalike_spellings,
    split,
)
from tests.proto.smtp_driver import Driver, config, replies


# --- configurations ------------------------------------------------------------------------------
@st.composite
def configs(draw: st.DrawFn, strict: bool | None = None) -> SMTPConfig:
    """Engine configurations across the features: TLS, AUTH, submission, ETRN, limits."""
    tls = draw(st.sampled_from(["none", "available", "active"]))
    auth = draw(st.booleans())
    return config(
        strict=draw(st.integers(0, 3)) == 3 if strict is None else strict,
        connect_decision=draw(st.booleans()),
        normalize_bare_newlines=draw(st.booleans()),
        tls_available=tls == "available",
        tls_active=tls == "active",
        auth_mechanisms=sasl.MECHANISMS if auth else (),
        auth_requires_tls=draw(st.booleans()),
        auth_required=auth and draw(st.integers(0, 3)) == 3,
        etrn=draw(st.booleans()),
        vrfy=draw(st.booleans()),
        max_errors=draw(st.sampled_from([1000, 1000, 20, 3])),
        max_message_size=draw(st.sampled_from([26214400, 2048])),
        max_header_size=draw(st.sampled_from([102400, 1024])),
        max_recipients=draw(st.sampled_from([100, 2])),
    )


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


PLAIN_IR = b64(b"\0alice@example.test\0" + SECRET.encode())

# --- 1. random bytes --------------------------------------------------------------------------------
TOKENS = [
    b"\r\n", b"\n", b"\r", b"\x00", b" ", b"\t", b".", b"..", b"\r\n.\r\n", b"\n.\n", b"\r\n.\n", b".\r\n",
    b"\xff", b"\x80", b"\xc3\xa9", b"\xed\xa0\x80", b"\xe2\x80\xa8", b"\x1b[0m",
    b"EHLO client.test\r\n", b"HELO c\r\n", b"ehlo x\n", b"MAIL FROM:<a@example.test>\r\n",
    b"MAIL FROM:<> SIZE=100 BODY=8BITMIME RET=HDRS ENVID=x+2By\r\n", b"MAIL FROM:<j\xc3\xb6rg@example.test> SMTPUTF8\r\n",
    b"RCPT TO:<b@example.org>\r\n", b"RCPT TO:<postmaster> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b@example.org\r\n",
    b"DATA\r\n", b"DATA", b"RSET\r\n", b"NOOP\r\n", b"QUIT\r\n", b"VRFY alice\r\n", b"EXPN staff\r\n",
    b"ETRN @example.test\r\n", b"HELP\r\n", b"STARTTLS\r\n", b"AUTH PLAIN\r\n", b"AUTH PLAIN " + PLAIN_IR + b"\r\n",
    b"AUTH LOGIN\r\n", b"AUTH CRAM-MD5\r\n", b"AUTH SCRAM-SHA-256 " + b64(b"n,,n=alice,r=abcdef") + b"\r\n",
    PLAIN_IR + b"\r\n", b"*\r\n", b"=\r\n", b"YWxpY2U=\r\n", b"BDAT 10 LAST\r\n",
    b"GET / HTTP/1.1\r\n", b"Host: mx.test\r\n", b"Subject: hello\r\n", b"Received: from x\r\n",
    b"USER alice\r\n", b"MAIL FROM:<a@example.test> SIZE=99999999999\r\n",
]
RUNS = [b"A", b".", b"\r", b" ", b"\x00", b"\xff"]  # long runs without a line end
LINE_RUNS = [b"a\r\n", b"\n", b"\r\n", b"RCPT TO:<b@example.org>\r\n"]  # many lines
# How the random input ends: as it is, or with the end of a message (and more after it).
ENDINGS = [b"", b"\r\n.\r\n", b"\r\n.\r\nMAIL FROM:<a@example.test>\r\n", b".\r\nQUIT\r\n", b"\r\n.\r\nDATA\r\n"]
fuzz_bytes = st.tuples(
    fuzz_input(TOKENS, RUNS, LINE_RUNS, binary_max=2000, run_max=80000),
    st.sampled_from(ENDINGS),
).map(b"".join)
EHLO, MAIL, RCPT = b"EHLO client.test\r\n", b"MAIL FROM:<a@example.test>\r\n", b"RCPT TO:<b@example.org>\r\n"
ENVELOPE = EHLO + MAIL + RCPT + b"DATA\r\n"
# Where the random input starts: each prefix line is sent after the reply to the one before, so
# that deep states are reached whatever the configuration (strict pipelining included).
prefixes = st.sampled_from([EHLO, b"", EHLO + MAIL, EHLO + MAIL + RCPT, ENVELOPE, ENVELOPE + b"Subject: x\r\n",
                            EHLO + b"AUTH LOGIN\r\n", EHLO + b"AUTH PLAIN\r\n", b"HELO client.test\r\n"])


@examples(400)
@given(cfg=configs(), prefix=prefixes, blob=fuzz_bytes, at=cuts, numbers=answers,
       end=st.sampled_from(["eof", "timeout", "open"]))
def test_random_bytes_get_only_replies(cfg: SMTPConfig, prefix: bytes, blob: bytes, at: list[int],
                                       numbers: list[int], end: str) -> None:
    """Properties 1 and 2: no exception, only well-formed replies, nothing after Closed, and
    bounded memory after every read. And no message ends but at a line that is a dot followed
    by CRLF (RFC 5321 4.1.1.4): the content of one message never becomes another."""
    driver = Driver(cfg, Policy(numbers), check_memory=True)
    data = prefix + blob
    for line in lines_of(prefix):
        driver.feed(line)
    for chunk in split(blob, at):
        driver.feed(chunk)
    if end == "eof":
        driver.feed(b"")
        assert driver.closed, "the peer closed but the engine did not"
    elif end == "timeout":
        driver.timeout()
    replies(bytes(driver.out))
    ends = sum(isinstance(e, (EndOfData, DataAborted)) for e in driver.events)
    assert ends <= data.count(b"\n.\r\n"), "a message ended without CRLF . CRLF"
    if driver.closed:
        driver.feed(b"EHLO again\r\nQUIT\r\n")  # asserts that nothing comes out


def play_stream(cfg: SMTPConfig, data: bytes, numbers: list[int],
                chunking: Callable[[bytes], list[bytes]], prefix: bytes = b"") -> Driver:
    """``prefix`` line by line, then ``data`` cut at STARTTLS and into reads by ``chunking``."""
    driver = Driver(cfg, Policy(numbers))
    for line in lines_of(prefix):
        driver.feed(line)
    driver.feed_stream(data, chunking)
    return driver


@examples(400)
@given(cfg=configs(strict=False), prefix=prefixes, blob=fuzz_bytes, at=cuts, numbers=answers)
# Found by the long profile: a text line over 1000 octets that pushes the message past
# max_message_size gets 552 5.3.4 when it arrives in one read, but 554 5.6.0 when it arrives in
# pieces (the decoder drops the overlong part unread, so it never counts toward the size).
@example(cfg=config(max_message_size=2048), prefix=ENVELOPE, blob=b"A" * 2047 + b"\r\n.\r\n", at=[], numbers=[])
# Found by the long profile: SMTP smuggling by read boundaries. In one read, a line of 998 octets
# and CR CR LF (a bare CR) keeps the next ". CRLF" message content, as the decoder means to; but
# when a read ends after the two CRs (or anywhere in a longer run of CRs past 1000 octets), the
# overlong line is dropped down to its last CR, the bare CR before it is forgotten, the dot ends
# the data, and the lines after it run as commands: a second, smuggled message is accepted.
@example(cfg=config(), prefix=ENVELOPE, at=[], numbers=[], blob=b"A" * 998 + b"\r\r\n.\r\n"
         b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\nSpoofed\r\n.\r\n")
def test_random_bytes_split_anywhere_same_replies(cfg: SMTPConfig, prefix: bytes, blob: bytes,
                                                  at: list[int], numbers: list[int]) -> None:
    """Without strict pipelining, how the input is cut into reads (which the client does not
    control: TCP segments) changes nothing, whatever the input."""
    with fixed_sasl_randomness():
        whole = play_stream(cfg, blob, numbers, lambda s: [s], prefix)
        assert_same(play_stream(cfg, blob, numbers, lambda s: split(s, at), prefix), whole)
        if len(blob) <= 4000:
            assert_same(play_stream(cfg, blob, numbers, bytewise, prefix), whole)


SMUGGLED = b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\nSpoofed\r\n.\r\n"


@pytest.mark.parametrize("normalize", [False, True], ids=["reject", "normalize"])
@pytest.mark.parametrize("line", [b"A" * 998 + b"\r\r\n", b"\r" * 3000 + b"\n", b"A" * 500 + b"\r" * 700 + b"\n"],
                         ids=["998+CRCRLF", "3000CR+LF", "500+700CR+LF"])
def test_read_boundaries_never_end_the_data_early(line: bytes, normalize: bool) -> None:
    """The smuggling case above in two reads cut at every point of the line: the dot after an
    overlong line with a bare CR is content however the line arrives, so the lines after it are
    never commands (RFC 5321 4.1.1.4; CVE-2023-51764 and its kin)."""
    cfg = config(normalize_bare_newlines=normalize)
    data = line + b".\r\n" + SMUGGLED + b"QUIT\r\n"
    one = play_stream(cfg, data, [], lambda s: [s], ENVELOPE)
    assert sum(isinstance(e, MailFrom) for e in one.events) == 1
    for cut in range(900, len(line) + 1):
        assert_same(play_stream(cfg, data, [], lambda s: [s[:cut], s[cut:]], ENVELOPE), one)


# --- 2. megabytes without a line end ---------------------------------------------------------------
MEGABYTES_PREFIXES = {
    "connected": b"",
    "greeted": b"EHLO client.test\r\n",
    "mail": b"EHLO client.test\r\nMAIL FROM:<a@example.test>\r\n",
    "data": ENVELOPE,
    "data-after-line": ENVELOPE + b"Subject: x\r\n",
    "auth": b"EHLO client.test\r\nAUTH LOGIN\r\n",
}


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
@pytest.mark.parametrize("filler", [b"A", b"\r", b".", b"\xff\x00"], ids=["letters", "cr", "dots", "binary"])
@pytest.mark.parametrize("state", list(MEGABYTES_PREFIXES))
def test_megabytes_without_line_end_stay_bounded(state: str, filler: bytes, strict: bool) -> None:
    """Property 2: 4 MiB without LF, read 64 KiB at a time, in every state: the engine holds no
    more than its fixed bound after each read, and answers with at most a few replies."""
    cfg = config(strict=strict, auth_mechanisms=sasl.MECHANISMS, auth_requires_tls=False,
                 normalize_bare_newlines=filler == b"\r")
    driver = Driver(cfg, Policy([0]), check_memory=True)
    driver.feed_megabytes(MEGABYTES_PREFIXES[state], filler)
    replies(bytes(driver.out))


# --- 3. valid sessions, split anywhere --------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    """One thing the client sends: a command line, the message content, a SASL response."""

    kind: str
    data: bytes
    needs: int | None = None  # a polite client sends it only after a reply with this code


# RFC 2920 3.1: EHLO, DATA, VRFY, EXPN, TURN, QUIT and NOOP end a group; RFC 3207 and RFC 4954:
# so do STARTTLS, AUTH and every SASL response. Everything else may be pipelined, the message
# content included (it may start a group).
ENDS_GROUP = frozenset({"ehlo", "helo", "data", "noop", "vrfy", "expn", "quit", "starttls", "auth", "sasl"})

LOCAL_PARTS = ["alice", "bob.smith", "x+tag", '"quoted local"', "o'hara", "Postmaster"]
DOMAINS = ["example.test", "mail.example.org", "[192.0.2.7]", "[IPv6:2001:db8::7]"]
addresses = st.builds("{}@{}".format, st.sampled_from(LOCAL_PARTS), st.sampled_from(DOMAINS))
HEADERS = ["Subject: hello", "From: Alice <alice@example.test>", "To: bob@example.org",
           "Received: from a by b; Thu, 3 Dec 2026 10:00:00 +0000", "X-Dots: ...", "Message-ID: <1@x>"]
BODY_LINES = [".", "..", ".leading dot", "", " ", "-- ", "From me", "Subject: not a header", "a" * 998,
              "\u00fcml\u00e4ut", "QUIT", "DATA", ". ", "\t."]
text_lines = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80)


@st.composite
def message_content(draw: st.DrawFn) -> bytes:
    """Message content as sent: dot-stuffed (RFC 5321 4.5.2), ending with CRLF . CRLF."""
    headers = draw(st.lists(st.sampled_from(HEADERS), max_size=4))
    body = draw(st.lists(st.one_of(st.sampled_from(BODY_LINES), text_lines), max_size=12))
    message = "\r\n".join(headers + [""] + body) + "\r\n" if headers or body else ""
    return stuff(message.encode("utf-8")) + b".\r\n"


@st.composite
def mail_command(draw: st.DrawFn, esmtp: bool) -> bytes:
    sender = draw(st.one_of(st.just(""), addresses))
    params = []
    if esmtp:
        if draw(st.booleans()):
            params.append(f"SIZE={draw(st.integers(0, 2000))}")
        if draw(st.booleans()):
            params.append(draw(st.sampled_from(["BODY=7BIT", "BODY=8BITMIME", "body=8bitmime"])))
        if draw(st.booleans()):
            params.append(draw(st.sampled_from(["RET=FULL", "RET=HDRS"])))
        if draw(st.booleans()):
            params.append("ENVID=" + draw(st.sampled_from(["QQ314159", "x+2By", "a" * 100])))
        if draw(st.booleans()):
            params.append("SMTPUTF8")
            if draw(st.booleans()):
                sender = "j\u00f6rg@ex\u00e4mple.test"
    return " ".join([f"MAIL FROM:<{sender}>", *params]).encode("utf-8") + b"\r\n"


@st.composite
def rcpt_command(draw: st.DrawFn, esmtp: bool) -> bytes:
    recipient = draw(st.one_of(st.just("postmaster"), addresses))
    params = []
    if esmtp:
        if draw(st.booleans()):
            params.append("NOTIFY=" + draw(st.sampled_from(["NEVER", "SUCCESS", "FAILURE,DELAY", "success,failure,delay"])))
        if draw(st.booleans()):
            params.append("ORCPT=rfc822;" + draw(st.sampled_from(["bob@example.org", "x+2Btag@example.org"])))
    return " ".join([f"RCPT TO:<{recipient}>", *params]).encode() + b"\r\n"


@st.composite
def smtp_sessions(draw: st.DrawFn, cfg: SMTPConfig) -> list[Item]:
    """A session a correct client may send: greeting, transactions, the other commands, AUTH,
    STARTTLS (and a new EHLO after it), QUIT."""
    items: list[Item] = []

    def greet() -> bool:
        esmtp = draw(st.booleans()) or draw(st.booleans())  # EHLO three times out of four
        domain = draw(st.sampled_from(["client.example", "mail.example.org", "[192.0.2.1]"]))
        items.append(Item("ehlo" if esmtp else "helo", f"{'EHLO' if esmtp else 'HELO'} {domain}\r\n".encode()))
        return esmtp

    esmtp = greet()
    tls = cfg.tls_active
    for _ in range(draw(st.integers(0, 6))):
        action = draw(st.sampled_from(["transaction", "transaction", "transaction", "rset", "noop", "vrfy",
                                       "help", "expn", "etrn", "auth", "ehlo", "starttls"]))
        if action == "transaction":
            items.append(Item("mail", draw(mail_command(esmtp))))
            for _ in range(draw(st.integers(1, 3))):
                items.append(Item("rcpt", draw(rcpt_command(esmtp))))
            if draw(st.integers(0, 4)):
                items.append(Item("data", b"DATA\r\n"))
                items.append(Item("content", draw(message_content()), needs=354))
            else:
                items.append(Item("rset", b"RSET\r\n"))
        elif action == "rset":
            items.append(Item("rset", b"RSET\r\n"))
        elif action == "noop":
            items.append(Item("noop", draw(st.sampled_from([b"NOOP\r\n", b"NOOP anything\r\n"]))))
        elif action == "vrfy":
            items.append(Item("vrfy", b"VRFY " + draw(st.sampled_from([b"alice", b"<bob@example.org>"])) + b"\r\n"))
        elif action == "help":
            items.append(Item("help", draw(st.sampled_from([b"HELP\r\n", b"HELP MAIL\r\n"]))))
        elif action == "expn":
            items.append(Item("expn", b"EXPN staff\r\n"))
        elif action == "etrn":
            items.append(Item("etrn", draw(st.sampled_from([b"ETRN example.test\r\n", b"ETRN @example.org\r\n"]))))
        elif action == "ehlo":
            esmtp = greet()
        elif action == "starttls" and cfg.tls_available and not tls:
            items.append(Item("starttls", b"STARTTLS\r\n"))
            tls = True
            esmtp = greet()  # RFC 3207 4.2: everything starts again
        elif action == "auth":
            user = draw(st.sampled_from([b"alice@example.test", b"bob"]))
            how = draw(st.sampled_from(["plain-initial", "plain", "login", "cancel"]))
            if how == "plain-initial":
                authzid = draw(st.sampled_from([b"", user]))
                items.append(Item("auth", b"AUTH PLAIN " + b64(authzid + b"\0" + user + b"\0" + SECRET.encode()) + b"\r\n"))
            elif how == "plain":
                items.append(Item("auth", b"AUTH PLAIN\r\n"))
                items.append(Item("sasl", b64(b"\0" + user + b"\0" + SECRET.encode()) + b"\r\n", needs=334))
            elif how == "login":
                items.append(Item("auth", b"AUTH LOGIN\r\n"))
                items.append(Item("sasl", b64(user) + b"\r\n", needs=334))
                items.append(Item("sasl", b64(SECRET.encode()) + b"\r\n", needs=334))
            else:
                items.append(Item("auth", b"AUTH LOGIN\r\n"))
                items.append(Item("sasl", b"*\r\n", needs=334))
    if draw(st.integers(0, 3)):
        items.append(Item("quit", b"QUIT\r\n"))
    return items


@st.composite
def session_configs(draw: st.DrawFn, strict: bool) -> SMTPConfig:
    tls = draw(st.sampled_from(["none", "available", "active"]))
    return config(
        strict=strict,
        connect_decision=draw(st.booleans()),
        normalize_bare_newlines=draw(st.booleans()),
        tls_available=tls == "available",
        tls_active=tls == "active",
        auth_mechanisms=("PLAIN", "LOGIN"),
        auth_requires_tls=draw(st.booleans()),
        etrn=draw(st.booleans()),
        max_errors=draw(st.sampled_from([1000, 20])),
        max_header_size=draw(st.sampled_from([102400, 1024])),
    )


@st.composite
def valid_sessions(draw: st.DrawFn, strict: bool) -> tuple[SMTPConfig, list[Item]]:
    cfg = draw(session_configs(strict))
    return cfg, draw(smtp_sessions(cfg))


def play_pipelined(cfg: SMTPConfig, items: Sequence[Item], numbers: list[int],
                   chunking: Callable[[bytes], list[bytes]]) -> Driver:
    """The whole session as one stream, cut only after STARTTLS (the handshake), then into
    reads by ``chunking``; the client does not wait for any reply."""
    return play_stream(cfg, b"".join(item.data for item in items), numbers, chunking)


def play_polite(cfg: SMTPConfig, items: Sequence[Item], numbers: list[int],
                chunking: Callable[[bytes], list[bytes]]) -> Driver:
    """A client that pipelines only what RFC 2920 allows and only after EHLO announced
    PIPELINING: each group is sent (cut into reads by ``chunking``) after every reply to the
    previous one; content and SASL responses are sent only after 354 and 334."""
    driver = Driver(cfg, Policy(numbers))
    group = bytearray()
    last: tuple[int, list[str]] | None = None
    pipelining = False
    for item in items:
        if item.needs is not None and (last is None or last[0] != item.needs):
            continue  # the reply said no: a client does not send what was not asked for
        group += item.data
        if item.kind not in ENDS_GROUP and pipelining:
            continue
        out = b"".join(driver.feed(chunk) for chunk in chunking(bytes(group)))
        group.clear()
        got = replies(out)
        last = got[-1] if got else last
        if item.kind == "ehlo":
            pipelining = last is not None and last[0] == 250 and "PIPELINING" in last[1]
        elif item.kind == "helo" or (item.kind == "starttls" and last is not None and last[0] == 220):
            pipelining = False
    for chunk in chunking(bytes(group)):
        driver.feed(chunk)
    driver.feed(b"")
    return driver


@examples(400)
@given(case=valid_sessions(strict=False), numbers=answers, at=cuts)
def test_valid_session_pipelined_same_replies_however_split(
        case: tuple[SMTPConfig, list[Item]], numbers: list[int], at: list[int]) -> None:
    """Property 3, default configuration: the session sent in one piece, byte by byte, and cut
    at random points gives the same replies and the same events."""
    cfg, items = case
    note(b"".join(i.data for i in items).decode("utf-8", "replace"))
    whole = play_pipelined(cfg, items, numbers, lambda s: [s])
    replies(bytes(whole.out))
    assert_same(play_pipelined(cfg, items, numbers, bytewise), whole)
    assert_same(play_pipelined(cfg, items, numbers, lambda s: split(s, at)), whole)


@examples(400)
@given(case=valid_sessions(strict=True), numbers=answers, at=cuts)
def test_valid_session_polite_client_strict_pipelining(
        case: tuple[SMTPConfig, list[Item]], numbers: list[int], at: list[int]) -> None:
    """Property 3 with strict_pipelining: a client that waits for the reply where it must gets
    the same replies however each group is cut, and is never told "554 5.5.0" (protocol
    synchronization)."""
    cfg, items = case
    note(b"".join(i.data for i in items).decode("utf-8", "replace"))
    whole = play_polite(cfg, items, numbers, lambda s: [s])
    for code, lines in replies(bytes(whole.out)):
        assert not (code == 554 and lines[0].startswith("5.5.0")), f"polite client refused: {lines}"
    assert_same(play_polite(cfg, items, numbers, bytewise), whole)
    assert_same(play_polite(cfg, items, numbers, lambda s: split(s, at)), whole)


# --- 4. random command sequences ----------------------------------------------------------------------
VERBS = ["HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "HELP", "VRFY", "EXPN", "ETRN",
         "STARTTLS", "AUTH", "BDAT", "SEND", "TURN", "XCLIENT", "helo", "mail", "rcpt", "Data", "X", "",
         "GET", "POST", "CONNECT", "USER", "Host:", "MAIL FROM:", "RCPT TO:"]
ARGS = ["", "client.test", "FROM:<a@example.test>", "FROM:<>", "TO:<b@example.org>", "TO:<postmaster>",
        "FROM:<a@example.test> SIZE=10", "FROM:<a@example.test> BODY=8BITMIME SMTPUTF8 RET=FULL",
        "FROM:<a@example.test> SIZE=x", "FROM:<a@example.test> FOO=bar", "TO:<b@example.org> NOTIFY=NEVER",
        "TO:<b@example.org> NOTIFY=NEVER,SUCCESS", "TO:<b@example.org> ORCPT=rfc822;b@example.org",
        "FROM:a@example.test", "TO:<>", "FROM:<a@example.test", "PLAIN", "PLAIN " + PLAIN_IR.decode(), "PLAIN !!",
        "LOGIN", "LOGIN YWxpY2U=", "CRAM-MD5", "SCRAM-SHA-256", "GSSAPI", "@example.test", "#queue",
        "example.test", "/ HTTP/1.1", "x y z", "  spaced  ", "\u00e9"]
RAW_LINES = [".", "..", "*", "=", "YWxpY2U=", PLAIN_IR.decode(), "Subject: hi", "", " ", "\x00", "\t",
             b64(b"n,,n=alice,r=abc").decode(), "alice 0123456789abcdef0123456789abcdef"]
GOOD_LINES = ["EHLO client.test", "HELO client.test", "MAIL FROM:<a@example.test>", "MAIL FROM:<>",
              "MAIL FROM:<a@example.test> SIZE=10 BODY=8BITMIME", "RCPT TO:<b@example.org>",
              "RCPT TO:<postmaster>", "RCPT TO:<b@example.org> NOTIFY=SUCCESS", "DATA", "hello", ".",
              "RSET", "NOOP", "QUIT", "HELP", "VRFY alice", "EXPN staff", "ETRN example.test", "STARTTLS",
              "AUTH PLAIN " + PLAIN_IR.decode(), "AUTH LOGIN", "YWxpY2U=", "AUTH CRAM-MD5",
              "AUTH SCRAM-SHA-256", "*"]
random_command_lines = command_lines(GOOD_LINES, VERBS, ARGS, RAW_LINES)


@examples(400)
@given(cfg=configs(), prefix=prefixes, lines=random_command_lines, numbers=answers, at=cuts)
def test_command_sequences_one_reply_each(cfg: SMTPConfig, prefix: bytes, lines: list[bytes],
                                          numbers: list[int], at: list[int]) -> None:
    """Property 4: each command line (the client waiting for its reply) gets exactly one reply,
    multi-line replies counting as one and a DATA transfer (content and final dot) as one; the
    line that makes the engine close may get a second (the 421). Without strict pipelining the
    same lines sent all at once, or cut at random points, get the same replies."""
    with fixed_sasl_randomness():
        driver = Driver(cfg, Policy(numbers), check_memory=True)
        in_transfer = -1  # replies so far to the DATA transfer under way; -1: none
        lines = lines_of(prefix) + lines
        for line in lines:
            if driver.closed:
                driver.feed(line)  # asserts that nothing comes out
                continue
            before = driver.conn.state
            count = len(replies(driver.feed(line)))
            if before is State.DATA:
                in_transfer += count
                if driver.conn.state is State.DATA and not driver.closed:
                    assert in_transfer <= 1, f"{in_transfer} replies inside a DATA transfer"
                    continue
                count, in_transfer = in_transfer, -1
            if driver.closed:
                assert 1 <= count <= 2, f"{count} replies to {line!r}, the last before closing"
            else:
                assert count == 1, f"{count} replies to {line!r} in state {before}"
            if driver.conn.state is State.DATA:
                in_transfer = 0
        driver.feed(b"")
        if cfg.strict_pipelining:
            return  # all at once is not what a client may send here
        data = b"".join(lines)
        assert_same(play_stream(cfg, data, numbers, lambda s: [s]), driver)
        assert_same(play_stream(cfg, data, numbers, lambda s: split(s, at)), driver)


# --- 4b. only ASCII verbs are commands ----------------------------------------------------------------
# Characters whose str.upper() is ASCII: the sharp s, the dotless i, the long s and the Latin
# ligatures. RFC 5321 2.4 and 4.1.1: verbs and keywords are ASCII, case-insensitive in ASCII
# (Postfix compares with strcasecmp); "MAıL" is not MAIL, or the engine and any filter in front
# of it read the same line differently.


_TLS_AUTH = {"tls_available": True, "auth_mechanisms": ("PLAIN",), "auth_requires_tls": False}
LOOKALIKE_CASES = [
    (spelled + rest, expected)
    for word, rest, expected in [
        ("MAIL", " FROM:<a@example.test>", 500), ("RSET", "", 500), ("QUIT", "", 500),
        ("STARTTLS", "", 500), ("AUTH", " PLAIN " + PLAIN_IR.decode(), 500),
    ]
    for spelled in lookalike_spellings(word)
] + [("AUTH " + spelled + " " + PLAIN_IR.decode(), 504) for spelled in lookalike_spellings("PLAIN")]


@pytest.mark.parametrize(("line", "expected"), LOOKALIKE_CASES, ids=[c[0].encode("unicode_escape").decode()
                                                                     for c in LOOKALIKE_CASES])
def test_non_ascii_lookalike_verbs_are_not_commands(line: str, expected: int) -> None:
    """A verb (or SASL mechanism name) spelled with a character that only upper-cases to ASCII
    is unknown: 500 (504 for a mechanism), never the command it resembles."""
    driver = Driver(config(**_TLS_AUTH), Policy([0]))
    driver.feed(b"EHLO client.test\r\n")
    got = replies(driver.feed(line.encode("utf-8") + b"\r\n"))
    assert [code for code, _ in got] == [expected], f"{line!r} was taken for a command: {got}"
