"""RETR and TOP over a real socket, byte for byte: large messages in several chunks with lines
starting with a dot, a foreign Maildir file with bare LF line ends, TOP's line counts, deleted
messages, RFC 1939 octet counts, and a client that stops reading in the middle of a message."""

from __future__ import annotations

import smtplib
import socket
from pathlib import Path

import pytest

from tests.e2e.conftest import DEADLINE, TaubeServer, wait_for

PASSWORD = "pop-secret-123"
USER = "alice@example.test"


class RawPOP3:
    """Just enough of a POP3 client to see the bytes on the wire (poplib strips them)."""

    def __init__(self, port: int, *, receive_buffer: int | None = None) -> None:
        self.sock = socket.socket()
        if receive_buffer is not None:  # before connect(): it sets the advertised window
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(DEADLINE)
        self.sock.connect(("127.0.0.1", port))
        self.buffer = b""
        assert self.line().startswith(b"+OK")

    def _until(self, marker: bytes) -> bytes:
        while (end := self.buffer.find(marker)) < 0:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError(f"closed before {marker!r}")
            self.buffer += data
        out, self.buffer = self.buffer[:end + len(marker)], self.buffer[end + len(marker):]
        return out

    def line(self) -> bytes:
        return self._until(b"\r\n")

    def send(self, command: str) -> None:
        self.sock.sendall(command.encode() + b"\r\n")

    def command(self, command: str) -> bytes:
        self.send(command)
        return self.line()

    def multi(self, command: str) -> tuple[bytes, bytes]:
        """The status line and the body as sent: stuffed, without the final ``.`` CRLF."""
        status = self.command(command)
        if not status.startswith(b"+OK"):
            return status, b""
        while len(self.buffer) < 3:
            self.buffer += self.sock.recv(1 << 20)
        if self.buffer.startswith(b".\r\n"):
            self.buffer = self.buffer[3:]
            return status, b""
        return status, self._until(b"\r\n.\r\n")[:-3]

    def login(self) -> bytes:
        assert self.command(f"USER {USER}").startswith(b"+OK")
        return self.command(f"PASS {PASSWORD}")

    def close(self) -> None:
        self.sock.close()


def unstuff(body: bytes) -> bytes:
    out = body.replace(b"\r\n..", b"\r\n.")
    return out[1:] if out.startswith(b"..") else out


def big_message(size: int) -> bytes:
    """Header, empty line, then lines of varying length (so line starts fall on every offset,
    the chunk borders included), every seventh starting with a dot, CRLF line ends."""
    out = bytearray(b"From: a@b.test\r\nSubject: big\r\n\r\n")
    n = 0
    while len(out) < size:
        n += 1
        text = (b"." if n % 7 == 0 else b"") + b"x" * (n * 37 % 151) + b"\r\n"
        out += text
    return bytes(out)


def our_name(size: int, tag: str) -> str:
    """A file name as taube's delivery makes it: its size in S= (see maildir_filename)."""
    return f"1700000000.M{len(tag)}P1Q{tag}.mail.example.test,S={size}"


def make_maildir(server: TaubeServer) -> Path:
    md = server.maildir(USER)
    for sub in ("tmp", "new", "cur"):
        (md / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    return md


@pytest.fixture
def pop_server(make_server) -> TaubeServer:
    server = make_server(pop3=True, pop3_toml='plaintext_requires_tls = false\ntimeout = "2s"')
    server.add_user(USER, PASSWORD)
    return server


def test_large_and_foreign_messages_byte_for_byte(pop_server: TaubeServer) -> None:
    md = make_maildir(pop_server)
    big = big_message(700_000)  # over the small-message read and two 256 KiB chunks
    (md / "new" / our_name(len(big), "BIG")).write_bytes(big)
    foreign = b"Subject: lf\n\n.dot first\nplain\n..two dots\n\nlast line without end"
    (md / "cur" / "1600000000.foreign:2,S").write_bytes(foreign)
    foreign_crlf = foreign.replace(b"\n", b"\r\n")
    pop_server.start()
    c = RawPOP3(pop_server.pop3_port)
    assert c.login().startswith(b"+OK")
    assert c.command("STAT") == f"+OK 2 {len(foreign_crlf) + len(big)}\r\n".encode()
    status, listing = c.multi("LIST")
    assert listing == f"1 {len(foreign_crlf)}\r\n2 {len(big)}\r\n".encode()
    status, body = c.multi("RETR 2")
    assert status == f"+OK {len(big)} octets\r\n".encode()
    assert unstuff(body) == big and len(unstuff(body)) == len(big)
    status, body = c.multi("RETR 1")
    assert unstuff(body) == foreign_crlf + b"\r\n"  # the last line gets its CRLF on the wire
    _, top = c.multi("TOP 2 0")
    assert top == b"From: a@b.test\r\nSubject: big\r\n\r\n"
    _, top = c.multi("TOP 2 3")
    assert unstuff(top) == b"".join(big.split(b"\r\n")[:6][i] + b"\r\n" for i in range(6))
    _, top = c.multi("TOP 2 1000000")  # more lines than the body: all of it
    assert unstuff(top) == big
    _, uids = c.multi("UIDL")
    assert c.command("DELE 1").startswith(b"+OK")
    assert c.multi("RETR 1")[0].startswith(b"-ERR")
    assert c.multi("TOP 1 0")[0].startswith(b"-ERR")
    assert c.multi("LIST")[1] == f"2 {len(big)}\r\n".encode()
    assert c.command("QUIT").startswith(b"+OK")
    c.close()
    # RETR marked the big one seen (new/ -> cur/); TOP alone would not have
    assert [p.name for p in (md / "cur").iterdir()] == [our_name(len(big), "BIG") + ":2,S"]
    c = RawPOP3(pop_server.pop3_port)
    c.login()
    assert c.multi("UIDL")[1] == b"1 " + uids.split(b"\r\n")[1].split(b" ")[1] + b"\r\n"
    c.command("QUIT")
    c.close()


def test_new_mail_and_mail_removed_elsewhere_show_in_the_next_session(pop_server: TaubeServer) -> None:
    pop_server.start()

    def deliver(subject: str) -> None:
        with smtplib.SMTP("127.0.0.1", pop_server.port, timeout=10) as s:
            s.sendmail("lb@trash.test", [USER], f"Subject: {subject}\r\n\r\nhello\r\n".encode())

    def stat() -> bytes:
        c = RawPOP3(pop_server.pop3_port)
        c.login()
        out = c.command("STAT")
        c.command("QUIT")
        c.close()
        return out

    deliver("one")
    assert stat().startswith(b"+OK 1 ")
    deliver("two")
    assert stat().startswith(b"+OK 2 ")
    [first, *_] = sorted((pop_server.maildir(USER) / "new").iterdir())
    first.unlink()  # another program deleted it
    assert stat().startswith(b"+OK 1 ")


def test_a_client_that_stops_reading_is_cut_off_and_the_mailbox_freed(pop_server: TaubeServer) -> None:
    """Flow control keeps the server from buffering the message; the autologout timer (2 s
    here) bounds how long it waits for the client to read on."""
    md = make_maildir(pop_server)
    huge = big_message(12_000_000)  # more than the socket buffers on both sides can hold
    (md / "new" / our_name(len(huge), "HUGE")).write_bytes(huge)
    pop_server.start()
    stuck = RawPOP3(pop_server.pop3_port, receive_buffer=8192)
    assert stuck.login().startswith(b"+OK")
    stuck.send("RETR 1")  # and never read the answer

    def logged_in() -> bool:
        other = RawPOP3(pop_server.pop3_port)
        try:
            return other.login().startswith(b"+OK")
        finally:
            other.close()

    wait_for(logged_in, what="the stuck session to be ended and its mailbox lock freed")
    wait_for(lambda: "not reading the message" in pop_server.log, what="the log line")
    stuck.close()
    assert (md / "new" / our_name(len(huge), "HUGE")).exists()  # not retrieved: not seen
