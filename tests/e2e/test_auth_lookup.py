"""Login look-ups leave the event loop: a directory that takes its time with one session's
SCRAM, CRAM-MD5 or APOP look-up delays no other session (net/auth_lookup.py)."""

from __future__ import annotations

import base64
import socket
import threading
import time

import pytest

from tests.e2e.inprocess import InProcessServer

SLOW = 0.3  # seconds each look-up of the slow directory blocks its caller


class SlowDirectory:
    """The real directory, but every credentials look-up blocks for :data:`SLOW`."""

    def __init__(self, inner: object) -> None:
        self._inner = inner
        self.calls = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def _slow(self, name: str, *args: str) -> object:
        with self._lock:
            self.calls += 1
        time.sleep(SLOW)
        return getattr(self._inner, name)(*args)

    def scram_credentials(self, address: str) -> object:
        return self._slow("scram_credentials", address)

    def legacy_secret(self, address: str) -> object:
        return self._slow("legacy_secret", address)

    def verify_password(self, address: str, password: str) -> object:
        return self._slow("verify_password", address, password)


def _line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


def _smtp(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    assert _line(sock).startswith(b"220")
    sock.sendall(b"EHLO client.example\r\n")
    while not _line(sock).startswith(b"250 "):
        pass
    return sock


def _pop3(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    assert _line(sock).startswith(b"+OK")
    return sock


def _noop_time(sock: socket.socket, expect: bytes) -> float:
    started = time.monotonic()
    sock.sendall(b"NOOP\r\n")
    assert _line(sock).startswith(expect)
    return time.monotonic() - started


SCRAM_FIRST = base64.b64encode(b"n,,n=alice@example.test,r=abcdefghijklmnop").decode()


@pytest.mark.parametrize(("service", "command", "answer"), [
    ("smtp", f"AUTH SCRAM-SHA-256 {SCRAM_FIRST}", b"334 "),
    ("smtp", "AUTH CRAM-MD5", None),  # the secret is looked up after the client's answer
    ("pop3", f"AUTH SCRAM-SHA-256 {SCRAM_FIRST}", b"+ "),
    ("pop3", "APOP alice@example.test " + "0" * 32, b"-ERR"),
])
def test_a_slow_lookup_does_not_delay_another_session(make_server, service: str, command: str,
                                                      answer: bytes | None) -> None:
    config = make_server(pop3=True, auth_toml='require_tls = false\nlegacy_secrets = true\n'
                         'mechanisms = ["PLAIN", "LOGIN", "SCRAM-SHA-256", "CRAM-MD5"]')
    config.add_user("alice@example.test")
    with InProcessServer(config, runner=False) as server:
        assert server.app is not None
        slow = SlowDirectory(server.app.services.directory)
        server.app.services.directory = slow  # type: ignore[assignment]
        port = server.port if service == "smtp" else server.pop3_port
        assert port is not None
        # POP3 refuses NOOP before a login: still an answer, and the loop's to give
        connect, ok = (_smtp, b"250") if service == "smtp" else (_pop3, b"-ERR")
        waiting, other = connect(port), connect(port)
        try:
            waiting.sendall(command.encode() + b"\r\n")
            if answer is None:  # CRAM-MD5: a challenge, then the answer that needs the secret
                assert _line(waiting).startswith(b"334 ")
                waiting.sendall(base64.b64encode(b"alice@example.test " + b"0" * 32) + b"\r\n")
                answer = b"535"
            deadline = time.monotonic() + 5
            while slow.calls == 0 and time.monotonic() < deadline:
                time.sleep(0.005)
            assert slow.calls == 1  # the look-up is under way ...
            assert _noop_time(other, ok) < SLOW / 2  # ... and the other session is answered meanwhile
            assert _line(waiting).startswith(answer)
        finally:
            waiting.close()
            other.close()
