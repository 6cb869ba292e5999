"""Abusive clients against the real server over real sockets: pipelining discipline, talk before
the greeting, bare CR/LF in commands, overlong lines and the hard cap, HTTP and header probes,
the header section limit, deeply nested MIME, SASL cancel and overlong responses."""

from __future__ import annotations

import base64
import poplib
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mime import nested_mime as _nested_mime
from tests.e2e.conftest import TaubeServer, wait_for
from tests.e2e.rawsmtp import RawSMTP

PASSWORD = "correct horse battery staple"
PLAIN = base64.b64encode(b"\0alice@example.test\0" + PASSWORD.encode()).decode()
SYNC = "554 5.5.0 Error: SMTP protocol synchronization\r\n"
GOODBYE = "221 2.7.0 Error: I can break rules, too. Goodbye.\r\n"
ENVELOPE = b"MAIL FROM:<lb@trash.test>\r\nRCPT TO:<alice@example.test>\r\n"


@pytest.fixture(scope="module")
def server() -> Iterator[TaubeServer]:
    """One server for the module (loopback trusted, as by default; AUTH without TLS so that an
    authenticated client is easy to have; POP3 with USER/PASS in plaintext)."""
    with tempfile.TemporaryDirectory(prefix="taube-e2e-") as d:
        s = TaubeServer(Path(d), pop3=True, auth_toml="require_tls = false",
                        pop3_toml="plaintext_requires_tls = false")
        s.add_user("alice@example.test", PASSWORD)
        s.start()
        try:
            yield s
        finally:
            s.stop()


def stored(server: TaubeServer) -> set[Path]:
    """Every file a message can leave behind: Maildirs (tmp/ included) and the queue."""
    return {p for p in server.data_dir.glob("mail/**/*") if p.is_file()} | \
        {p for p in server.data_dir.glob("queue/**/*") if p.is_file()}


def maildir_messages(server: TaubeServer) -> list[bytes]:
    new = server.maildir("alice@example.test") / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.exists() else []


def assert_closed(c: RawSMTP) -> None:
    assert c.closed(timeout=10), "the server did not close the connection"


# --- pipelining (RFC 2920 3.1) -----------------------------------------------------------
def test_legal_group_and_commands_after_the_dot(server: TaubeServer) -> None:
    before = len(maildir_messages(server))
    with RawSMTP(server.port) as c:
        assert c.cmd("EHLO x").startswith("250-")
        c.send(ENVELOPE + b"DATA\r\n")
        assert [r[:3] for r in c.replies(3)] == ["250", "250", "354"]
        c.send(b"Subject: legal group\r\n\r\nhi\r\n.\r\nNOOP\r\nQUIT\r\n")
        assert [r[:3] for r in c.replies(3)] == ["250", "250", "221"]
    wait_for(lambda: len(maildir_messages(server)) == before + 1, what="the message")


@pytest.mark.parametrize(("name", "dialogue"), [
    ("EHLO with MAIL and RCPT", [b"EHLO x\r\n" + ENVELOPE]),
    ("HELO with MAIL", [b"HELO x\r\nMAIL FROM:<lb@trash.test>\r\n"]),
    ("pipelining after HELO", [b"HELO x\r\n", ENVELOPE]),
    ("NOOP before EHLO", [b"NOOP\r\nEHLO x\r\n"]),
    ("the message with DATA", [b"EHLO x\r\n", ENVELOPE + b"DATA\r\nSubject: early\r\n\r\nx\r\n.\r\nQUIT\r\n"]),
    ("STARTTLS with HELP", [b"EHLO x\r\n", b"STARTTLS\r\nHELP\r\nMAIL FROM:<evil@x.test>\r\n"]),
    ("AUTH with MAIL", [b"EHLO x\r\n", f"AUTH PLAIN {PLAIN}\r\n".encode() + ENVELOPE]),
])
def test_pipelining_violation_gets_554_and_nothing_is_stored(server: TaubeServer, name: str,
                                                             dialogue: list[bytes]) -> None:
    """The client is trusted (loopback) but not authenticated: Postfix 3.9 holds it to RFC 2920."""
    before = stored(server)
    with RawSMTP(server.port) as c:
        *waited, last = dialogue
        for write in waited:  # these the client sends after the reply to the previous one
            c.send(write)
            reply = c.reply()  # a whole reply, all its lines
            assert reply.startswith("250")
            assert b"STARTTLS" not in last or "STARTTLS" in reply  # offered: it is the real thing
        c.send(last)
        replies = []
        while SYNC not in replies:
            replies.append(c.reply())
        assert all(r.startswith("250") for r in replies[:-1]), replies  # MAIL/RCPT before DATA
        assert_closed(c)
        assert c.buf == b""  # nothing after the 554
    assert stored(server) == before


def test_authenticated_client_may_pipeline(server: TaubeServer) -> None:
    before = len(maildir_messages(server))
    with RawSMTP(server.port) as c:
        c.cmd("EHLO x")
        assert c.cmd(f"AUTH PLAIN {PLAIN}").startswith("235 2.7.0")
        c.send(b"EHLO x\r\nMAIL FROM:<alice@example.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
               b"Subject: pipelined after AUTH\r\n\r\nhi\r\n.\r\nQUIT\r\n")
        assert [r[:3] for r in c.replies(6)] == ["250", "250", "250", "354", "250", "221"]
    wait_for(lambda: len(maildir_messages(server)) == before + 1, what="the message")


def test_lenient_pipelining_when_switched_off(make_server) -> None:
    server = make_server(smtp_toml="strict_pipelining = false")
    server.add_user("alice@example.test")
    server.start()
    with RawSMTP(server.port) as c:
        c.send(b"EHLO x\r\n" + ENVELOPE + b"DATA\r\n")
        assert [r[:3] for r in c.replies(4)] == ["250", "250", "250", "354"]
        c.send(b"Subject: lenient\r\n\r\nhi\r\n.\r\nQUIT\r\n")
        assert [r[:3] for r in c.replies(2)] == ["250", "221"]
    wait_for(lambda: maildir_messages(server), what="the message")


def test_input_after_quit_is_ignored(server: TaubeServer) -> None:
    with RawSMTP(server.port) as c:
        c.cmd("EHLO x")
        c.send(b"QUIT\r\n" + ENVELOPE)
        assert c.reply().startswith("221 2.0.0")
        assert_closed(c)
        assert c.buf == b""


# --- talking before the greeting ---------------------------------------------------------
def test_talking_before_the_greeting(make_server) -> None:
    """A client outside trusted_networks waits greet_delay for the 220; one that talks first
    gets 554 5.5.0 instead of the greeting, and none of its commands run."""
    server = make_server(trusted=("192.0.2.0/24",), smtp_toml='greet_delay = "1s"')
    server.add_user("alice@example.test")
    server.start()
    before = stored(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"EHLO x\r\n" + ENVELOPE + b"DATA\r\nSubject: pregreet\r\n\r\nx\r\n.\r\n")
        received = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    assert received == SYNC.encode()
    assert stored(server) == before
    with RawSMTP(server.port) as c:  # a client that waits gets the greeting
        assert c.greeting.startswith("220 ")


# --- bare CR and LF in command lines -----------------------------------------------------
def test_bare_lf_command_gets_one_reply(server: TaubeServer) -> None:
    with RawSMTP(server.port) as c:
        c.send(b"EHLO x\nNOOP\r\n")
        assert c.reply() == "500 5.5.2 Error: bare <LF> received\r\n"
        c.send(b"HELO x\rNOOP\r\n")
        assert c.reply() == "500 5.5.2 Error: bare <CR> received\r\n"
        assert c.cmd("NOOP").startswith("250 2.0.0")  # the next reply answers this NOOP: one each
        assert c.cmd("MAIL FROM:<lb@trash.test>").startswith("503 5.5.1")  # no EHLO ever ran


def test_bare_lf_ends_a_line_in_normalize_mode(make_server) -> None:
    server = make_server(smtp_toml='bare_newline = "normalize"').start()
    with RawSMTP(server.port) as c:
        c.send(b"EHLO x\n")
        assert c.reply().startswith("250-mail.example.test")
        c.send(b"NOOP\n")
        assert c.reply().startswith("250 2.0.0")


# --- long lines --------------------------------------------------------------------------
def test_long_command_line_and_the_session_goes_on(server: TaubeServer) -> None:
    with RawSMTP(server.port) as c:
        assert c.cmd("NOOP " + "x" * 600) == "500 5.5.2 Error: line too long\r\n"
        assert c.cmd("NOOP " + "x" * 60_000).startswith("500 5.5.2")
        assert c.cmd("NOOP").startswith("250 2.0.0")


def test_input_without_line_end_closes_at_the_hard_cap(server: TaubeServer) -> None:
    with RawSMTP(server.port) as c:
        c.cmd("EHLO x")
        c.send(b"NOOP " + b"x" * 70_000)  # and never a line end
        assert c.reply() == "500 5.5.2 Error: line too long\r\n"
        assert c.reply() == "421 4.7.0 mail.example.test Error: line too long, closing transmission channel\r\n"
        assert_closed(c)


def test_pop3_long_lines(server: TaubeServer) -> None:
    p = poplib.POP3("127.0.0.1", server.pop3_port, timeout=10)
    with pytest.raises(poplib.error_proto, match="line too long"):
        p._shortcmd("NOOP " + "x" * 300)  # noqa: SLF001
    p.user("alice@example.test")  # the session goes on
    p.quit()
    with socket.create_connection(("127.0.0.1", server.pop3_port), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"+OK")
        s.sendall(b"x" * 9000)  # over 8 KiB and never a line end
        assert f.readline() == b"-ERR line too long\r\n"
        assert f.read() == b""  # closed


# --- HTTP and header probes --------------------------------------------------------------
@pytest.mark.parametrize("probe", [b"GET / HTTP/1.1\r\nHost: mail.example.test\r\n\r\n",
                                   b"CONNECT mail.example.test:25 HTTP/1.1\r\n\r\n",
                                   b"POST / HTTP/1.0\r\n\r\n", b"Subject: hello\r\n"])
def test_probe_gets_goodbye(server: TaubeServer, probe: bytes) -> None:
    with RawSMTP(server.port) as c:
        c.send(probe)
        assert c.reply() == GOODBYE
        assert_closed(c)
        assert c.buf == b""


def test_header_line_mid_transaction_gets_goodbye_and_nothing_is_stored(server: TaubeServer) -> None:
    before = stored(server)
    with RawSMTP(server.port) as c:
        c.cmd("EHLO x")
        c.send(ENVELOPE)
        assert [r[:3] for r in c.replies(2)] == ["250", "250"]
        assert c.cmd("From: <lb@trash.test>") == GOODBYE
        assert_closed(c)
    assert stored(server) == before


# --- the header section limit ------------------------------------------------------------
@pytest.mark.parametrize(("name", "header"), [
    ("10,000 small fields", b"X-Field: 1\r\n" * 10_000),
    ("one folded giant field", b"Subject: x\r\n" + b"\tfolded folded folded folded folded\r\n" * 3000),
])
def test_header_too_large_is_refused_and_nothing_is_stored(server: TaubeServer, name: str, header: bytes) -> None:
    before = stored(server)
    with RawSMTP(server.port) as c:
        c.cmd("EHLO x")
        c.send(ENVELOPE + b"DATA\r\n")
        assert [r[:3] for r in c.replies(3)] == ["250", "250", "354"]
        c.send(header + b"\r\nbody\r\n.\r\n")
        assert c.reply() == "552 5.3.4 Message header too large\r\n"
        assert c.cmd("NOOP").startswith("250")  # the session goes on
    assert stored(server) == before


def nested_mime(depth: int) -> bytes:
    return _nested_mime(depth, b"From: <lb@trash.test>\r\nSubject: deep\r\nMIME-Version: 1.0\r\n")


def test_deeply_nested_mime_is_stored_and_retrieved_byte_for_byte(server: TaubeServer) -> None:
    """Nothing on the accept path parses MIME: 2,000 levels are just lines."""
    message = nested_mime(2_000)
    before = len(maildir_messages(server))
    with RawSMTP(server.port) as c:
        c.cmd("EHLO x")
        c.send(ENVELOPE + b"DATA\r\n")
        assert [r[:3] for r in c.replies(3)] == ["250", "250", "354"]
        c.send(message + b".\r\n")
        assert c.reply().startswith("250 2.0.0")
    stored_messages = wait_for(lambda: maildir_messages(server)[before:], what="the message")
    assert stored_messages[0].endswith(message)
    p = poplib.POP3("127.0.0.1", server.pop3_port, timeout=10)
    p.user("alice@example.test")
    p.pass_(PASSWORD)
    retrieved = [b"\r\n".join(p.retr(n)[1]) + b"\r\n" for n in range(1, p.stat()[0] + 1)]
    p.quit()
    assert any(r.endswith(message) for r in retrieved)


# --- SASL (RFC 4954 4) -------------------------------------------------------------------
def test_sasl_cancel_and_then_a_new_exchange(server: TaubeServer) -> None:
    with RawSMTP(server.port) as c:
        c.cmd("EHLO x")
        assert c.cmd("AUTH LOGIN").startswith("334 ")
        assert c.cmd("*") == "501 5.7.0 Authentication cancelled\r\n"
        assert c.cmd(f"AUTH PLAIN {PLAIN}").startswith("235 2.7.0")  # back to before AUTH


def test_sasl_response_too_long(server: TaubeServer) -> None:
    with RawSMTP(server.port) as c:
        c.cmd("EHLO x")
        assert c.cmd("AUTH LOGIN").startswith("334 ")
        assert c.cmd("Q" * 13_000) == "500 5.5.6 Authentication Exchange line is too long\r\n"
        assert c.cmd("NOOP").startswith("250 2.0.0")
