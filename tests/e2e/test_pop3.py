"""POP3 against the real server with Python's poplib: retrieval, deletion, locking, STLS, APOP,
SASL, and SMTP-after-POP."""

from __future__ import annotations

import base64
import hashlib
import poplib
import smtplib
import socket
import ssl

import pytest

from tests.e2e.conftest import TaubeServer, wait_for
from tests.e2e.rawsmtp import RawSMTP

PASSWORD = "pop-secret-123"


def client_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def deliver(server: TaubeServer, subject: str, body: str = "hello\r\n", to: str = "alice@example.test") -> bytes:
    raw = f"From: lb@trash.test\r\nTo: {to}\r\nSubject: {subject}\r\n\r\n{body}".encode()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as c:
        c.sendmail("lb@trash.test", [to], raw)
    return raw


@pytest.fixture
def pop_server(make_server) -> TaubeServer:
    server = make_server(pop3=True, pop3s=True, pop3_toml="plaintext_requires_tls = false",
                         auth_toml="legacy_secrets = true")
    server.add_user("alice@example.test", PASSWORD)
    return server.start()


def login(server: TaubeServer) -> poplib.POP3:
    p = poplib.POP3("127.0.0.1", server.pop3_port, timeout=10)
    p.user("alice@example.test")
    p.pass_(PASSWORD)
    return p


def test_greeting_has_unique_apop_timestamp(pop_server: TaubeServer) -> None:
    stamps = set()
    for _ in range(3):
        p = poplib.POP3("127.0.0.1", pop_server.pop3_port, timeout=10)
        welcome = p.getwelcome().decode()
        assert welcome.startswith("+OK taube ready <") and welcome.endswith("@mail.example.test>")
        stamps.add(welcome)
        p.quit()
    assert len(stamps) == 3


def test_smtp_message_retrieved_byte_for_byte(pop_server: TaubeServer) -> None:
    raw = deliver(pop_server, "first", body="line one\r\n.leading dot\r\n\r\nlast\r\n")
    deliver(pop_server, "second")
    p = login(pop_server)
    count, octets = p.stat()
    assert count == 2
    listing = p.list()[1]
    sizes = [int(line.split()[1]) for line in listing]
    assert sum(sizes) == octets
    resp, lines, size = p.retr(1)
    assert resp.startswith(b"+OK")
    retrieved = b"\r\n".join(lines) + b"\r\n"
    assert len(retrieved) == sizes[0]  # the announced size is what RETR sends
    assert retrieved.endswith(raw)  # after taube's Return-Path and Received lines: unchanged
    assert retrieved.startswith(b"Return-Path: <lb@trash.test>\r\nReceived: ")
    top = p.top(2, 0)[1]
    assert b"Subject: second" in top and b"hello" not in top
    uids = [line.split()[1] for line in p.uidl()[1]]
    assert len(set(uids)) == 2
    p.quit()
    p = login(pop_server)
    assert [line.split()[1] for line in p.uidl()[1]] == uids  # stable across sessions
    p.quit()
    # RETR moved message 1 into cur/ (seen); TOP did not move message 2
    cur = list((pop_server.maildir("alice@example.test") / "cur").iterdir())
    assert len(cur) == 1 and cur[0].name.endswith(":2,S")


def test_dele_rset_quit(pop_server: TaubeServer) -> None:
    for i in range(3):
        deliver(pop_server, f"m{i}")
    p = login(pop_server)
    p.dele(1)
    with pytest.raises(poplib.error_proto, match="already deleted|no such message"):
        p.retr(1)
    assert p.stat()[0] == 2
    p.rset()
    assert p.stat()[0] == 3
    p.dele(2)
    p.noop()
    p.quit()
    p = login(pop_server)
    assert p.stat()[0] == 2
    subjects = [b"".join(line for line in p.top(n, 0)[1] if line.startswith(b"Subject")) for n in (1, 2)]
    assert subjects == [b"Subject: m0", b"Subject: m2"]
    with pytest.raises(poplib.error_proto, match="no such message"):
        p.retr(3)
    p.quit()


def test_dropped_connection_after_dele_deletes_nothing(pop_server: TaubeServer) -> None:
    deliver(pop_server, "keep me")
    p = login(pop_server)
    p.dele(1)
    p.sock.shutdown(socket.SHUT_RDWR)  # dropped: no QUIT
    p.file.close()
    p.sock.close()
    p2 = wait_for(lambda: _try_login(pop_server), what="the mailbox lock to be released")
    assert p2.stat()[0] == 1
    p2.quit()


def _try_login(server: TaubeServer) -> poplib.POP3 | None:
    p = poplib.POP3("127.0.0.1", server.pop3_port, timeout=10)
    try:
        p.user("alice@example.test")
        p.pass_(PASSWORD)
        return p
    except poplib.error_proto:
        p.quit()
        return None


def test_second_session_gets_in_use_and_wrong_password_auth(pop_server: TaubeServer) -> None:
    first = login(pop_server)
    second = poplib.POP3("127.0.0.1", pop_server.pop3_port, timeout=10)
    second.user("alice@example.test")
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        second.pass_(PASSWORD)
    second.quit()
    first.quit()
    third = poplib.POP3("127.0.0.1", pop_server.pop3_port, timeout=10)
    third.user("alice@example.test")
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        third.pass_("wrong")
    third.quit()


def test_capa_stls_and_plaintext_refused_before_tls(make_server) -> None:
    server = make_server(pop3=True)
    server.add_user("alice@example.test", PASSWORD)
    server.start()
    p = poplib.POP3("127.0.0.1", server.pop3_port, timeout=10)
    capa = p.capa()
    assert "STLS" in capa and "USER" not in capa and "PLAIN" not in capa.get("SASL", [])
    for name in ("TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "EXPIRE", "LOGIN-DELAY",
                 "IMPLEMENTATION"):
        assert name in capa
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p.user("alice@example.test")
        p.pass_(PASSWORD)
    p.stls(context=client_context())
    capa = p.capa()
    assert "STLS" not in capa and "USER" in capa and "PLAIN" in capa["SASL"]
    p.user("alice@example.test")
    p.pass_(PASSWORD)
    assert p.stat() == (0, 0)
    p.quit()


def test_stls_drops_pipelined_plaintext(make_server) -> None:
    server = make_server(pop3=True)
    server.add_user("alice@example.test", PASSWORD)
    server.start()
    sock = socket.create_connection(("127.0.0.1", server.pop3_port), timeout=10)
    assert sock.recv(512).startswith(b"+OK")
    sock.sendall(b"STLS\r\nUSER alice@example.test\r\nPASS " + PASSWORD.encode() + b"\r\n")
    reply = b""
    while not reply.endswith(b"\r\n"):
        reply += sock.recv(512)
    assert reply.startswith(b"+OK")
    tls = client_context().wrap_socket(sock)
    tls.sendall(b"STAT\r\n")
    assert tls.recv(512).startswith(b"-ERR")  # not logged in: USER/PASS were never executed
    tls.close()


def test_apop_and_sasl_plain(pop_server: TaubeServer) -> None:
    deliver(pop_server, "apop")
    p = poplib.POP3("127.0.0.1", pop_server.pop3_port, timeout=10)
    p.apop("alice@example.test", PASSWORD)
    assert p.stat()[0] == 1
    p.quit()
    p = poplib.POP3("127.0.0.1", pop_server.pop3_port, timeout=10)
    initial = base64.b64encode(b"\0alice@example.test\0" + PASSWORD.encode()).decode()
    assert p._shortcmd(f"AUTH PLAIN {initial}").startswith(b"+OK")  # noqa: SLF001 - no poplib API
    assert p.stat()[0] == 1
    p.quit()


def test_apop_digest_is_md5_of_timestamp_and_secret(pop_server: TaubeServer) -> None:
    p = poplib.POP3("127.0.0.1", pop_server.pop3_port, timeout=10)
    stamp = p.getwelcome().decode().split()[-1]
    digest = hashlib.md5((stamp + "wrong").encode()).hexdigest()
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p._shortcmd(f"APOP alice@example.test {digest}")  # noqa: SLF001
    p.quit()


def test_pop3s_implicit_tls(pop_server: TaubeServer) -> None:
    deliver(pop_server, "secure")
    p = poplib.POP3_SSL("127.0.0.1", pop_server.pop3s_port, timeout=10, context=client_context())
    assert "STLS" not in p.capa()
    p.user("alice@example.test")
    p.pass_(PASSWORD)
    assert p.stat()[0] == 1
    p.quit()


def test_long_lines_refused(pop_server: TaubeServer) -> None:
    p = poplib.POP3("127.0.0.1", pop_server.pop3_port, timeout=10)
    with pytest.raises(poplib.error_proto, match="too long"):
        p._shortcmd("NOOP " + "x" * 300)  # noqa: SLF001
    p.quit()


def test_smtp_after_pop(make_server) -> None:
    server = make_server(pop3=True, trusted=("192.0.2.0/24",), pop3_toml="plaintext_requires_tls = false",
                         auth_toml='smtp_after_pop = "2s"')
    server.add_user("alice@example.test", PASSWORD)
    server.start()

    def relay_reply() -> str:
        with RawSMTP(server.port) as c:
            c.cmd("EHLO x")
            c.cmd("MAIL FROM:<alice@example.test>")
            return c.cmd("RCPT TO:<far@remote.test>")

    assert relay_reply().startswith("554 5.7.1")
    login(server).quit()
    assert relay_reply().startswith("250")
    wait_for(lambda: relay_reply().startswith("554 5.7.1"), timeout=10, interval=0.2,
             what="the SMTP-after-POP window to expire")


def test_autologout_timer_deletes_nothing(make_server) -> None:
    server = make_server(pop3=True, pop3_toml='plaintext_requires_tls = false\ntimeout = "1s"')
    server.add_user("alice@example.test", PASSWORD)
    server.start()
    deliver(server, "stays")
    p = login(server)
    p.dele(1)
    line = p.file.readline()  # idle: the server speaks first when the timer runs out
    assert line.startswith(b"-ERR")
    assert p.file.readline() == b""  # and closes
    p.close()
    p = wait_for(lambda: _try_login(server), what="the mailbox lock to be released")
    assert p.stat()[0] == 1
    p.quit()


def test_failed_logins_share_the_smtp_throttle(make_server) -> None:
    """One counter per client address for SMTP AUTH and POP3: failures on either block both."""
    server = make_server(pop3=True, pop3_toml="plaintext_requires_tls = false", auth_toml="max_failures = 3")
    server.add_user("alice@example.test", PASSWORD)
    server.start()
    with RawSMTP(server.port) as c:  # one failure over SMTP AUTH (after STARTTLS)
        c.cmd("EHLO x")
        assert c.cmd("STARTTLS").startswith("220")
        c.sock = client_context().wrap_socket(c.sock)
        c.cmd("EHLO x")
        bad = base64.b64encode(b"\0alice@example.test\0nope").decode()
        assert c.cmd(f"AUTH PLAIN {bad}").startswith("535")
    for _ in range(2):  # two more over POP3
        p = poplib.POP3("127.0.0.1", server.pop3_port, timeout=10)
        p.user("alice@example.test")
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
            p.pass_("nope")
        p.quit()
    p = poplib.POP3("127.0.0.1", server.pop3_port, timeout=10)
    p.user("alice@example.test")
    with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\] too many"):
        p.pass_(PASSWORD)  # even the right password, while the address is blocked
    assert p.file.readline() == b""  # and disconnected, as SMTP's 421
    p.close()
    assert "login failed client=127.0.0.1" in server.log
