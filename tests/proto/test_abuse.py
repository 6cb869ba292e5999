"""What abusive clients get from the engines: pipelining discipline, talk before the greeting,
bare CR/LF in commands, overlong lines and the hard cap, HTTP and header probes, the header
section limit, SASL cancel and overlong responses. Table-driven; every case is fed whole and one
byte at a time (for pipelining, "whole" means one write per list item, and byte by byte the
input is paced, so the strict engine must answer as the lenient one does)."""

from __future__ import annotations

import base64
import time
import tracemalloc
from collections.abc import Iterable

import pytest

from taube.proto import sasl
from taube.proto.dotstuff import DataDecoder
from taube.proto.pop3 import POP3Config, POP3Connection
from taube.proto.pop3 import Closed as POP3Closed
from taube.proto.pop3 import Decision as POP3Decision
from taube.proto.smtp import (
    AUTH_LINE_MAX,
    HARD_LINE_MAX,
    NEED_DATA,
    AuthDone,
    Closed,
    DataAborted,
    DataChunk,
    DataStart,
    EndOfData,
    Event,
    Hello,
    MailFrom,
    RcptTo,
    Reset,
    SMTPConfig,
    SMTPConnection,
    State,
)
from tests.mime import nested_mime as _nested_mime
from tests.proto.helpers import accept_all, codes, content, reads, run_engine, session

STRICT = SMTPConfig(hostname="mx.test", strict_pipelining=True)
LENIENT = SMTPConfig(hostname="mx.test", strict_pipelining=False)
AUTH_CONFIG = SMTPConfig(hostname="mx.test", strict_pipelining=True, tls_available=True, tls_active=True,
                         auth_mechanisms=("PLAIN", "LOGIN"))
AUTH_LENIENT = SMTPConfig(hostname="mx.test", tls_available=True, tls_active=True, auth_mechanisms=("PLAIN", "LOGIN"))
PASSWORD = b"geheim"
PLAIN_OK = base64.b64encode(b"\0alice@x.test\0" + PASSWORD)

EHLO = b"EHLO c.test\r\n"
MAIL = b"MAIL FROM:<a@x.test>\r\n"
RCPT = b"RCPT TO:<b@y.test>\r\n"
DATA = b"DATA\r\n"
BODY = b"Subject: hi\r\n\r\nhello\r\n.\r\n"
QUIT = b"QUIT\r\n"
SYNC = "554 5.5.0"


def run(chunks: bytes | Iterable[bytes], config: SMTPConfig = STRICT, *, bytewise: bool = False,
        answer=accept_all) -> tuple[bytes, list[Event], SMTPConnection]:
    """helpers.session, with AuthLookup answered (any PLAIN/LOGIN password ``geheim`` is
    right)."""
    return session(chunks, config=config, answer=answer, lookup=check_password, bytewise=bytewise)


def check_password(request: object) -> bool:
    assert isinstance(request, sasl.CheckPassword)
    return request.password == PASSWORD.decode()


def types(events: list[Event]) -> list[type]:
    return [type(e) for e in events]


# --- pipelining (RFC 2920 3.1, Postfix smtpd_forbid_unauth_pipelining) ----------------------
PIPELINING = [
    # (name, writes, config, final reply codes when each write arrives in one read)
    ("legal group after EHLO", [EHLO, MAIL + RCPT + RCPT + DATA, BODY + QUIT], STRICT,
     ["250", "250 2.1.0", "250 2.1.5", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"]),
    ("commands after the final dot", [EHLO, MAIL + RCPT + DATA, BODY + MAIL + RCPT + DATA, BODY + QUIT], STRICT,
     ["250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0",
      "221 2.0.0"]),
    ("RSET and NOOP may be pipelined after EHLO", [EHLO, b"NOOP\r\nRSET\r\n" + MAIL + b"RSET\r\n" + QUIT], STRICT,
     ["250", "250 2.0.0", "250 2.0.0", "250 2.1.0", "250 2.0.0", "221 2.0.0"]),
    ("input after QUIT is ignored", [EHLO, QUIT + MAIL + RCPT], STRICT, ["250", "221 2.0.0"]),
    ("QUIT before EHLO with more after it", [QUIT + EHLO], STRICT, ["221 2.0.0"]),
    ("EHLO with MAIL in one write", [EHLO + MAIL + RCPT], STRICT, [SYNC]),
    ("HELO with MAIL in one write", [b"HELO c.test\r\n" + MAIL], STRICT, [SYNC]),
    ("anything pipelined after HELO", [b"HELO c.test\r\n", MAIL + RCPT], STRICT, ["250", SYNC]),
    ("anything pipelined before EHLO", [b"NOOP\r\n" + EHLO], STRICT, [SYNC]),
    ("message sent with DATA", [EHLO, MAIL + RCPT + DATA + BODY + QUIT], STRICT,
     ["250", "250 2.1.0", "250 2.1.5", SYNC]),
    ("EHLO pipelined after a legal group", [EHLO, MAIL + b"EHLO again\r\n" + RCPT], STRICT,
     ["250", "250 2.1.0", SYNC]),
    ("lenient: EHLO with MAIL in one write", [EHLO + MAIL + RCPT + QUIT], LENIENT,
     ["250", "250 2.1.0", "250 2.1.5", "221 2.0.0"]),
    ("lenient: message sent with DATA", [EHLO, MAIL + RCPT + DATA + BODY + QUIT], LENIENT,
     ["250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"]),
    ("AUTH with MAIL in one write", [EHLO, b"AUTH PLAIN " + PLAIN_OK + b"\r\n" + MAIL], AUTH_CONFIG,
     ["250", SYNC]),
    ("authenticated clients may pipeline anything",
     [EHLO, b"AUTH PLAIN " + PLAIN_OK + b"\r\n", EHLO + MAIL + RCPT + DATA + BODY + QUIT], AUTH_CONFIG,
     ["250", "235 2.7.0", "250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"]),
    ("STARTTLS with EHLO in one write", [EHLO, b"STARTTLS\r\n" + EHLO],
     SMTPConfig(hostname="mx.test", strict_pipelining=True, tls_available=True), ["250", SYNC]),
]


@pytest.mark.parametrize(("name", "writes", "config", "expected"), PIPELINING, ids=[c[0] for c in PIPELINING])
def test_pipelining(name: str, writes: list[bytes], config: SMTPConfig, expected: list[str]) -> None:
    out, events, conn = run(writes, config)
    assert codes(out) == expected
    if expected[-1] == SYNC:
        assert out.endswith(b"554 5.5.0 Error: SMTP protocol synchronization\r\n")
        assert not any(isinstance(e, (EndOfData, DataStart, DataChunk)) for e in events)
        assert events[-1] == Closed(reason=events[-1].reason) and "pipelining" in events[-1].reason
        assert conn.state is State.CLOSED
    # paced input (one byte per read) is never a violation: strict then answers as lenient does
    lenient = SMTPConfig(**{**_fields(config), "strict_pipelining": False})
    assert run(writes, config, bytewise=True)[0] == run(writes, lenient)[0]


def _fields(config: SMTPConfig) -> dict:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


def test_pipelining_violation_drops_the_open_transaction() -> None:
    """MAIL and RCPT were accepted, then DATA came with the message: the session is told to drop
    the envelope (Reset) before Closed, and no DataStart ever reaches it (no spool file)."""
    out, events, _ = run([EHLO, MAIL + RCPT + DATA + BODY], STRICT)
    assert types(events) == [Hello, MailFrom, RcptTo, Reset, Closed]


def test_violation_runs_nothing_of_the_input() -> None:
    out, events, _ = run([EHLO + MAIL + RCPT + DATA + BODY + QUIT], STRICT)
    assert codes(out) == [SYNC]
    assert types(events) == [Closed]


# --- talking before the greeting ---------------------------------------------------------
def test_input_before_the_greeting_closes_without_greeting() -> None:
    conn = SMTPConnection(STRICT)
    conn.receive_data(EHLO + MAIL)  # the session's greet delay found this waiting
    event = conn.next_event()
    assert event == Closed(reason="input before the greeting")
    assert conn.data_to_send() == b"554 5.5.0 Error: SMTP protocol synchronization\r\n"
    conn.receive_data(b"NOOP\r\n")
    assert isinstance(conn.next_event(), Closed)
    assert conn.data_to_send() == b""


@pytest.mark.parametrize("config", [STRICT, LENIENT], ids=["strict", "lenient"])
def test_pregreet_applies_whatever_the_pipelining_setting(config: SMTPConfig) -> None:
    conn = SMTPConnection(config)
    conn.receive_data(b"\r\n")
    assert isinstance(conn.next_event(), Closed)
    assert conn.data_to_send().startswith(b"554 5.5.0")


def test_peer_closing_before_the_greeting_is_no_pregreet() -> None:
    conn = SMTPConnection(STRICT)
    conn.receive_data(b"")
    assert conn.next_event() == Closed(reason="peer closed the connection")
    assert conn.data_to_send().startswith(b"220 ")


def test_input_after_the_greeting_was_taken_runs() -> None:
    conn = SMTPConnection(STRICT)
    assert conn.data_to_send().startswith(b"220 ")
    conn.receive_data(EHLO)
    assert isinstance(conn.next_event(), Hello)


# --- bare CR and bare LF in command lines ------------------------------------------------
BARE = [
    # (name, input, config, expected final replies)
    ("bare LF", b"EHLO x\nNOOP\r\n" + QUIT, None, ["500 5.5.2", "221 2.0.0"]),
    ("bare CR", b"EHLO x\rNOOP\r\n" + QUIT, None, ["500 5.5.2", "221 2.0.0"]),
    ("CR CR LF", b"NOOP\r\r\n" + QUIT, None, ["500 5.5.2", "221 2.0.0"]),
    ("LF-only lines are one line until CRLF", b"HELO x\nMAIL FROM:<a@x>\nRCPT TO:<b@y>\n" + QUIT + QUIT, None,
     ["500 5.5.2", "221 2.0.0"]),
    ("normalize: LF ends a line", b"EHLO x\nNOOP\r\n" + QUIT, True, ["250", "250 2.0.0", "221 2.0.0"]),
    ("normalize: CR CR LF", b"NOOP\r\r\n" + QUIT, True, ["250 2.0.0", "221 2.0.0"]),
]


@pytest.mark.parametrize(("name", "data", "normalize", "expected"), BARE, ids=[c[0] for c in BARE])
@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_bare_newlines_in_commands(name: str, data: bytes, normalize: bool | None, expected: list[str],
                                   bytewise: bool) -> None:
    config = SMTPConfig(hostname="mx.test", normalize_bare_newlines=bool(normalize))
    out, events, _ = run(data, config, bytewise=bytewise)
    assert codes(out) == expected
    if not normalize:
        assert not any(isinstance(e, (Hello, MailFrom, RcptTo)) for e in events)  # nothing of it ran


def test_bare_newline_reply_text() -> None:
    out, _, _ = run(b"EHLO x\nNOOP\r\nEHLO x\rNOOP\r\n" + QUIT, SMTPConfig(hostname="h"))
    assert out.split(b"\r\n")[:2] == [b"500 5.5.2 Error: bare <LF> received", b"500 5.5.2 Error: bare <CR> received"]


def test_crlf_split_across_reads() -> None:
    """A CR at the end of one read and its LF at the start of the next are one CRLF."""
    out, events, _ = run([b"EHLO x\r", b"\nNOOP\r", b"\n" + QUIT], SMTPConfig(hostname="h"))
    assert codes(out) == ["250", "250 2.0.0", "221 2.0.0"]
    long_noop = b"NOOP " + b"x" * (AUTH_LINE_MAX + 100)  # dropped while skipped: the CR is kept
    out, _, _ = run([long_noop + b"\r", b"\n" + QUIT], SMTPConfig(hostname="h"))
    assert codes(out) == ["500 5.5.2", "221 2.0.0"]


def test_bare_newlines_count_as_errors() -> None:
    out, events, _ = run(b"NOOP\nx\r\n" * 5, SMTPConfig(hostname="h", max_errors=3))
    assert codes(out) == ["500 5.5.2", "500 5.5.2", "500 5.5.2", "421 4.7.0"]


def test_bare_newline_in_a_sasl_response_ends_the_exchange() -> None:
    out, events, conn = run(EHLO + b"AUTH LOGIN\r\nYWxp\nY2U=\r\n" + MAIL + QUIT, AUTH_LENIENT)
    assert codes(out) == ["250", "334", "500 5.5.2", "250 2.1.0", "221 2.0.0"]
    assert [e.user for e in events if isinstance(e, AuthDone)] == [None]


# --- long lines and the hard cap ---------------------------------------------------------
LONG = [
    ("512 octets", b"NOOP " + b"x" * 505 + b"\r\n" + QUIT, ["250 2.0.0", "221 2.0.0"]),
    ("513 octets", b"NOOP " + b"x" * 506 + b"\r\n" + QUIT, ["500 5.5.2", "221 2.0.0"]),
    ("MAIL with parameters up to 1536", EHLO + b"MAIL FROM:<a@x.test> ENVID=" + b"e" * 100 + b" " * 1407 + b"\r\n"
     + QUIT, ["250", "250 2.1.0", "221 2.0.0"]),
    ("MAIL over 1536", EHLO + b"MAIL FROM:<a@x.test> ENVID=" + b"e" * 100 + b" " * 1408 + b"\r\n" + QUIT,
     ["250", "500 5.5.2", "221 2.0.0"]),
    ("over the buffer, under the hard cap", b"NOOP " + b"x" * (HARD_LINE_MAX - 7) + b"\r\n" + QUIT,
     ["500 5.5.2", "221 2.0.0"]),
    ("one octet over the hard cap", b"NOOP " + b"x" * (HARD_LINE_MAX - 6) + b"\r\n" + QUIT,
     ["500 5.5.2", "421 4.7.0"]),
    ("bare LFs do not end a line for the hard cap", b"NOOP\n" * (HARD_LINE_MAX // 5 + 1) + b"\r\n" + QUIT,
     ["500 5.5.2", "421 4.7.0"]),
]


@pytest.mark.parametrize(("name", "data", "expected"), LONG, ids=[c[0] for c in LONG])
@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_long_lines(name: str, data: bytes, expected: list[str], bytewise: bool) -> None:
    out, _, _ = run(data, SMTPConfig(hostname="h"), bytewise=bytewise)
    assert codes(out) == expected


def test_hard_cap_closes_without_waiting_for_a_line_end() -> None:
    conn = SMTPConnection(SMTPConfig(hostname="mx.test"))
    conn.data_to_send()
    fed = 0
    while True:
        conn.receive_data(b"x" * 4096)
        fed += 4096
        event = conn.next_event()
        assert len(conn._lines) <= AUTH_LINE_MAX + 1  # noqa: SLF001 - never more buffered
        if event is not NEED_DATA:
            break
        assert conn.data_to_send() == b""
    assert event == Closed(reason="line without end too long")
    assert HARD_LINE_MAX < fed <= HARD_LINE_MAX + 4096
    assert conn.data_to_send() == (b"500 5.5.2 Error: line too long\r\n"
                                   b"421 4.7.0 mx.test Error: line too long, closing transmission channel\r\n")


def test_hard_cap_inside_a_transaction_drops_it() -> None:
    _, events, _ = run([EHLO, MAIL, b"x" * (HARD_LINE_MAX + 1)], SMTPConfig(hostname="h"))
    assert types(events) == [Hello, MailFrom, Reset, Closed]


def test_hard_cap_inside_sasl() -> None:
    out, events, _ = run([EHLO, b"AUTH LOGIN\r\n", b"Q" * (HARD_LINE_MAX + 1)], AUTH_LENIENT)
    assert codes(out)[-2:] == ["500 5.5.6", "421 4.7.0"]
    assert [e.user for e in events if isinstance(e, AuthDone)] == [None]


# --- HTTP and header probes (Postfix smtpd_forbidden_commands) -----------------------------
GOODBYE = b"221 2.7.0 Error: I can break rules, too. Goodbye.\r\n"
PROBES = [
    b"GET / HTTP/1.1\r\nHost: mx.test\r\n\r\n",
    b"POST /cgi-bin/x HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
    b"HEAD / HTTP/1.0\r\n",
    b"PUT /x HTTP/1.1\r\n",
    b"CONNECT mx.test:25 HTTP/1.1\r\n",
    b"get /\r\n",
    b"GET\r\n",
    b"Subject: hello\r\n",
    b"From: <a@x.test>\r\n",
    b"X-Mailer-Version: 1\r\n",
    b"user-agent:x\r\n",
]


@pytest.mark.parametrize("probe", PROBES, ids=[p[:16].decode() for p in PROBES])
@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_probes_get_goodbye(probe: bytes, bytewise: bool) -> None:
    out, events, _ = run(probe + QUIT, SMTPConfig(hostname="h"), bytewise=bytewise)
    assert out == GOODBYE
    assert types(events) == [Closed]


def test_probe_mid_transaction_drops_it() -> None:
    out, events, _ = run(EHLO + MAIL + RCPT + b"To: <b@y.test>\r\n" + QUIT, SMTPConfig(hostname="h"))
    assert codes(out) == ["250", "250 2.1.0", "250 2.1.5", "221 2.7.0"]
    assert types(events) == [Hello, MailFrom, RcptTo, Reset, Closed]


@pytest.mark.parametrize("line", [
    b"MAIL FROM:<a@x.test>", b"mail from:<a@x.test>", b"RCPT TO:<b@y.test>", b"EHLO get", b"HELO host:25",
    b"GETX /", b"HEADER x", b"NOOP Subject: x", b"VRFY a:b", b"AUTH PLAIN", b"POSTMASTER",
])
def test_legitimate_commands_are_no_probes(line: bytes) -> None:
    out, _, _ = run(EHLO + line + b"\r\n" + QUIT, AUTH_LENIENT)
    assert not out.startswith(b"221 2.7.0") and b"\r\n221 2.7.0" not in out
    assert out.endswith(b"221 2.0.0 mx.test Bye\r\n") or b"334" in out


def test_header_lines_inside_data_are_content() -> None:
    out, events, _ = run(EHLO + MAIL + RCPT + DATA + b"GET / HTTP/1.1\r\nSubject: x\r\n\r\nb\r\n.\r\n" + QUIT,
                         SMTPConfig(hostname="h"))
    assert codes(out)[-2:] == ["250 2.0.0", "221 2.0.0"]


# --- the header section limit (Postfix header_size_limit) --------------------------------
SMALL = SMTPConfig(hostname="h", max_header_size=1024)
FIELD_64 = b"X-F: " + b"a" * 57 + b"\r\n"  # 64 octets
ENVELOPE = EHLO + MAIL + RCPT + DATA


def message(header: bytes, body: bytes = b"body\r\n") -> bytes:
    return ENVELOPE + header + b"\r\n" + body + b".\r\n" + QUIT


HEADERS = [
    # (name, message, config, refused)
    ("exactly at the limit", message(FIELD_64 * 15 + b"X-F: " + b"a" * 55 + b"\r\n"), SMALL, False),
    ("one octet over", message(FIELD_64 * 15 + b"X-F: " + b"a" * 56 + b"\r\n"), SMALL, True),
    ("many small fields", message(b"X-F: 1\r\n" * 200), SMALL, True),
    ("a folded giant field", message(b"Subject: x\r\n" + b" folded\r\n" * 200), SMALL, True),
    ("an overlong header line", message(b"X: " + b"a" * 5000 + b"\r\n"), SMALL, True),
    ("no empty line: the whole message counts", ENVELOPE + b"X-F: 1\r\n" * 200 + b".\r\n" + QUIT, SMALL, True),
    ("a large body does not count", message(b"Subject: x\r\n", b"y" * 900 + b"\r\n" * 200), SMALL, False),
    ("10,000 small header fields", message(b"X-Field: 1\r\n" * 10_000), SMTPConfig(hostname="h"), True),
    ("a 100 KB header section fits the default", message(b"X-Field: " + b"v" * 88 + b"\r\n" * 1000),
     SMTPConfig(hostname="h"), False),
]


@pytest.mark.parametrize(("name", "data", "config", "refused"), HEADERS, ids=[c[0] for c in HEADERS])
@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_header_section_limit(name: str, data: bytes, config: SMTPConfig, refused: bool, bytewise: bool) -> None:
    out, events, _ = run(data, config, bytewise=bytewise)
    if refused:
        assert b"552 5.3.4 Message header too large\r\n" in out
        assert codes(out)[-2:] == ["552 5.3.4", "221 2.0.0"]
        assert not any(isinstance(e, EndOfData) for e in events)
        assert any(isinstance(e, DataAborted) for e in events)
        assert len(content(events)) <= config.max_header_size  # nothing beyond it was passed on
    else:
        assert codes(out)[-2:] == ["250 2.0.0", "221 2.0.0"]


def nested_mime(depth: int) -> bytes:
    return _nested_mime(depth, b"From: <a@x.test>\r\nMIME-Version: 1.0\r\n")


def test_deeply_nested_mime_is_accepted_byte_for_byte() -> None:
    msg = nested_mime(500)
    out, events, _ = run(ENVELOPE + msg + b".\r\n" + QUIT, SMTPConfig(hostname="h"))
    assert codes(out)[-2:] == ["250 2.0.0", "221 2.0.0"]
    assert content(events) == msg


READ = 16 * 1024


def _decode(message: bytes) -> tuple[float, int]:
    """Time and peak memory of the DATA decoder over ``message`` in reads of READ octets."""
    decoder = DataDecoder(max_header_size=102400)
    tracemalloc.start()
    start = time.perf_counter()
    for i in range(0, len(message), READ):
        decoder.feed(message[i:i + READ])
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return elapsed, peak


def test_deep_nesting_costs_linear_time_and_bounded_memory() -> None:
    """The engine never parses MIME: 20,000 levels are as many plain lines as any message. The
    memory of one read's decoding is proportional to the read (its lines, at worst 2 octets
    each), never to the message."""
    small, large = nested_mime(5_000), nested_mime(20_000)  # about 0.36 and 1.5 MB
    small_time = min(_decode(small)[0] for _ in range(3))
    large_time, large_peak = min(_decode(large) for _ in range(3))
    assert large_time < 12 * small_time + 0.05  # four times the input: quadratic would be 16x
    assert large_peak < 32 * READ < len(large) / 2


# --- SASL (RFC 4954 4, RFC 5034 4) --------------------------------------------------------
def test_sasl_cancel_goes_back_to_before_auth() -> None:
    out, events, conn = run(EHLO + b"AUTH LOGIN\r\n*\r\n" + MAIL + QUIT, AUTH_LENIENT)
    assert b"501 5.7.0 Authentication cancelled\r\n" in out
    assert codes(out) == ["250", "334", "501 5.7.0", "250 2.1.0", "221 2.0.0"]
    assert [e.user for e in events if isinstance(e, AuthDone)] == [None]
    assert conn.authenticated is None


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_sasl_response_too_long(bytewise: bool) -> None:
    response = b"Q" * AUTH_LINE_MAX + b"\r\n"
    out, events, conn = run(EHLO + b"AUTH LOGIN\r\n" + response + b"NOOP\r\n" + QUIT, AUTH_LENIENT,
                            bytewise=bytewise)
    assert b"500 5.5.6 Authentication Exchange line is too long\r\n" in out
    assert codes(out) == ["250", "334", "500 5.5.6", "250 2.0.0", "221 2.0.0"]
    assert conn.authenticated is None


def test_sasl_response_at_the_limit_is_read() -> None:
    response = base64.b64encode(b"x" * (AUTH_LINE_MAX // 4 * 3 - 3)) + b"\r\n"
    assert len(response) <= AUTH_LINE_MAX
    out, _, _ = run(EHLO + b"AUTH LOGIN\r\n" + response + b"*\r\n" + QUIT, AUTH_LENIENT)
    assert codes(out)[:3] == ["250", "334", "334"]  # the user name, then the password prompt


# --- POP3 --------------------------------------------------------------------------------
def pop3(data: bytes, *, bytewise: bool = False, close: bool = True) -> tuple[bytes, list]:
    conn = POP3Connection(POP3Config(hostname="pop.test", timestamp="<1.2@pop.test>", sasl_mechanisms=("PLAIN",),
                                     plaintext_requires_tls=False))
    conn.data_to_send()
    return run_engine(conn, reads(data, bytewise), no_decision, close=close)


def no_decision(event: object) -> None:
    assert not isinstance(event, POP3Decision), event


POP3_LONG = [
    ("255 octets", b"NOOP " + b"x" * 248 + b"\r\nQUIT\r\n", [b"-ERR log in first", b"+OK pop.test POP3 server signing off"]),
    ("256 octets", b"NOOP " + b"x" * 249 + b"\r\nQUIT\r\n", [b"-ERR line too long", b"+OK pop.test POP3 server signing off"]),
    ("8 KiB", b"NOOP " + b"x" * (8192 - 7) + b"\r\nQUIT\r\n", [b"-ERR line too long", b"+OK pop.test POP3 server signing off"]),
    ("over 8 KiB", b"NOOP " + b"x" * (8192 - 6) + b"\r\nQUIT\r\n", [b"-ERR line too long"]),
    ("cancelled SASL", b"AUTH PLAIN\r\n*\r\nQUIT\r\n", [b"+ ", b"-ERR authentication cancelled",
                                                        b"+OK pop.test POP3 server signing off"]),
    ("SASL response over 8 KiB", b"AUTH PLAIN\r\n" + b"Q" * 9000 + b"\r\nQUIT\r\n", [b"+ ", b"-ERR line too long"]),
]


@pytest.mark.parametrize(("name", "data", "expected"), POP3_LONG, ids=[c[0] for c in POP3_LONG])
@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_pop3_lines(name: str, data: bytes, expected: list[bytes], bytewise: bool) -> None:
    out, events = pop3(data, bytewise=bytewise)
    assert out.split(b"\r\n")[:-1] == expected
    assert isinstance(events[-1], POP3Closed)


def test_pop3_hard_cap_closes_without_waiting_for_a_line_end() -> None:
    out, events = pop3(b"x" * 9000, close=False)
    assert out == b"-ERR line too long\r\n"
    assert events[-1] == POP3Closed(reason="line without end too long")


def test_pop3_stays_lf_tolerant() -> None:
    out, _ = pop3(b"NOOP\nQUIT\n")
    assert out.split(b"\r\n")[:-1] == [b"-ERR log in first", b"+OK pop.test POP3 server signing off"]
