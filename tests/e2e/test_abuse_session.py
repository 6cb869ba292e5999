"""Abusive clients against the real server, over real sockets: talking before the greeting, the
error tarpit, login failures that must not tell unknown users from wrong passwords, and the
connection limits with the trusted-network exemption.

The server trusts 127.0.0.1/32 only; connecting *from* 127.0.0.2 makes an untrusted client on
the same loopback, so one server serves both kinds.
"""

from __future__ import annotations

import base64
import select
import socket
import statistics
import time

import pytest

from tests.e2e.conftest import TaubeServer, wait_for
from tests.e2e.rawsmtp import RawSMTP

TRUSTED = "127.0.0.1"
UNTRUSTED = "127.0.0.2"
PASSWORD = "right-password"
SYNC_ERROR = b"554 5.5.0 Error: SMTP protocol synchronization\r\n"


def read_to_eof(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes (a reset after its last bytes counts as a close)."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"no EOF within {timeout}s; got {data!r}")


def timed_greeting(port: int, source: str) -> tuple[float, RawSMTP]:
    started = time.monotonic()
    c = RawSMTP(port, source=source)
    return time.monotonic() - started, c


def new_messages(server: TaubeServer, address: str) -> list:
    new = server.maildir(address) / "new"
    return list(new.iterdir()) if new.exists() else []


# --- talking before the greeting ---------------------------------------------------------------

GREET_DELAY = 0.6


@pytest.fixture
def greeting_server(make_server) -> TaubeServer:
    server = make_server(trusted=(f"{TRUSTED}/32",), smtp_toml=f'greet_delay = "{GREET_DELAY}s"')
    server.add_user("alice@example.test")
    return server.start()


def test_pregreet_client_gets_554_and_nothing_it_sent_runs(greeting_server: TaubeServer) -> None:
    whole_transaction = (b"EHLO spam.test\r\nMAIL FROM:<spam@spam.test>\r\nRCPT TO:<alice@example.test>\r\n"
                         b"DATA\r\nSubject: pregreet\r\n\r\nbuy now\r\n.\r\nQUIT\r\n")
    with socket.create_connection(("127.0.0.1", greeting_server.port), timeout=10,
                                  source_address=(UNTRUSTED, 0)) as s:
        started = time.monotonic()
        s.sendall(whole_transaction)
        answer = read_to_eof(s)
        elapsed = time.monotonic() - started
    assert answer == SYNC_ERROR  # no 220, no reply to any of its commands
    assert elapsed < GREET_DELAY + 2.0
    assert new_messages(greeting_server, "alice@example.test") == []
    wait_for(lambda: f"pregreet client={UNTRUSTED}" in greeting_server.log, what="the pregreet log line")
    assert greeting_server.log.count("pregreet client=") == 1


def test_polite_client_waits_for_the_greeting_then_sends_mail(greeting_server: TaubeServer) -> None:
    elapsed, c = timed_greeting(greeting_server.port, UNTRUSTED)
    with c:
        assert c.greeting.startswith("220 mail.example.test")
        assert elapsed >= GREET_DELAY - 0.05
        assert elapsed < GREET_DELAY + 2.0
        assert c.cmd("EHLO polite.test").startswith("250")
        assert c.cmd("MAIL FROM:<sender@polite.test>").startswith("250")
        assert c.cmd("RCPT TO:<alice@example.test>").startswith("250")
        assert c.cmd("DATA").startswith("354")
        assert c.cmd(b"Subject: hi\r\n\r\nhello\r\n.").startswith("250 2.0.0")
    assert len(new_messages(greeting_server, "alice@example.test")) == 1
    assert "pregreet" not in greeting_server.log


def test_trusted_client_is_greeted_at_once(greeting_server: TaubeServer) -> None:
    elapsed, c = timed_greeting(greeting_server.port, TRUSTED)
    with c:
        assert c.greeting.startswith("220 ")
        assert c.cmd("QUIT").startswith("221")
    assert elapsed < GREET_DELAY / 2


# --- the error tarpit ----------------------------------------------------------------------------

ERROR_SLEEP = 0.6
DELAYED = ERROR_SLEEP - 0.05  # asyncio.sleep never wakes early; a little slack for clock rounding
PROMPT = 0.45  # an undelayed reply on a busy machine


def timed(c: RawSMTP, line: str) -> tuple[float, str]:
    started = time.monotonic()
    reply = c.cmd(line)
    return time.monotonic() - started, reply


@pytest.fixture
def tarpit_server(make_server) -> TaubeServer:
    server = make_server(trusted=(f"{TRUSTED}/32",),
                         smtp_toml=f'soft_error_limit = 2\nerror_sleep = "{ERROR_SLEEP}s"\nmax_errors = 5')
    server.add_user("alice@example.test")
    return server.start()


def test_errors_past_the_soft_limit_are_delayed_and_max_errors_closes(tarpit_server: TaubeServer) -> None:
    with RawSMTP(tarpit_server.port, source=UNTRUSTED) as c:
        assert c.cmd("EHLO x").startswith("250")
        assert c.cmd("MAIL FROM:<probe@harvest.test>").startswith("250")
        times = []
        for n in range(1, 5):  # unknown recipients are errors, and keep their 550 5.1.1
            elapsed, reply = timed(c, f"RCPT TO:<guess{n}@example.test>")
            assert reply.startswith("550 5.1.1"), reply
            times.append(elapsed)
        elapsed, reply = timed(c, "BOGUS")  # the fifth error: its reply, then 421
        times.append(elapsed)
        assert reply.startswith("500 5.5.2")
        assert c.reply().startswith("421 4.7.0 mail.example.test")
        assert c.closed()
    assert all(t < PROMPT for t in times[:2]), times  # up to soft_error_limit: at once
    assert all(t >= DELAYED for t in times[2:]), times  # every error after it waits error_sleep
    assert all(t < ERROR_SLEEP + 2.0 for t in times[2:]), times  # once per error, not more


def test_a_delivered_message_starts_the_error_count_again(tarpit_server: TaubeServer) -> None:
    with RawSMTP(tarpit_server.port, source=UNTRUSTED) as c:
        c.cmd("EHLO x")
        c.cmd("MAIL FROM:<list@bulk.test>")
        for n in range(3):  # errors 1-3: the third is delayed
            assert c.cmd(f"RCPT TO:<gone{n}@example.test>").startswith("550 5.1.1")
        assert c.cmd("RCPT TO:<alice@example.test>").startswith("250")
        assert c.cmd("DATA").startswith("354")
        assert c.cmd(b"Subject: news\r\n\r\nhello\r\n.").startswith("250 2.0.0")
        c.cmd("MAIL FROM:<list@bulk.test>")
        times = [timed(c, f"RCPT TO:<again{n}@example.test>")[0] for n in range(4)]
        assert all(t < PROMPT for t in times[:2]), times  # the count started again at 0
        assert times[2] >= DELAYED and times[3] >= DELAYED, times
        assert c.cmd("RCPT TO:<last@example.test>").startswith("550 5.1.1")  # error 5 of the new count
        assert c.reply().startswith("421 4.7.0")
        assert c.closed()
    assert len(new_messages(tarpit_server, "alice@example.test")) == 1


# --- login failures: unknown user and wrong password alike ------------------------------------

FAILURE_DELAY = 0.4
ROUNDS = 3
KNOWN = ("alice@example.test", "bob@example.test")
UNKNOWN = ("nobody@example.test", "ghost@example.test")


@pytest.fixture
def auth_server(make_server) -> TaubeServer:
    server = make_server(pop3=True, pop3_toml="plaintext_requires_tls = false",
                         auth_toml=f'require_tls = false\nfailure_delay = "{FAILURE_DELAY}s"\nmax_failures = 100')
    for user in KNOWN:
        server.add_user(user, PASSWORD)
    return server.start()


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def _line(sock: socket.socket, deadline: float, *, smtp: bool) -> bytes:
    """One reply: a final SMTP line (``ddd ``) or one POP3 line."""
    data = b""
    while True:
        lines = data.split(b"\r\n")
        done = [ln for ln in lines[:-1] if not smtp or ln[3:4] == b" "]
        if done:
            return done[0]
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed; got {data!r}")
        data += chunk


def _prepared(server: TaubeServer, protocol: str, user: str) -> tuple[socket.socket, bytes]:
    """A connection ready for its credentials, and the line that carries them (a wrong password)."""
    deadline = time.monotonic() + 10
    if protocol == "smtp":
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        _line(s, deadline, smtp=True)
        s.sendall(b"EHLO x\r\n")
        assert _line(s, deadline, smtp=True).startswith(b"250 ")
        return s, f"AUTH PLAIN {plain(user, 'wrong-password')}\r\n".encode()
    s = socket.create_connection(("127.0.0.1", server.pop3_port), timeout=10)
    _line(s, deadline, smtp=False)
    s.sendall(f"USER {user}\r\n".encode())
    assert _line(s, deadline, smtp=False).startswith(b"+OK")
    return s, b"PASS wrong-password\r\n"


def _reset_failures(server: TaubeServer) -> None:
    """A successful login forgets the address's failures: every round starts from none."""
    with RawSMTP(server.port) as c:
        c.cmd("EHLO x")
        assert c.cmd(f"AUTH PLAIN {plain(KNOWN[0], PASSWORD)}").startswith("235")


def _round(server: TaubeServer, protocol: str) -> tuple[dict[str, list[float]], set[bytes]]:
    """Four failures sent at the same moment, known users first (the order that used to come
    back sorted by kind); the reply time of each kind, and the reply texts."""
    attempts = [("known", *_prepared(server, protocol, u)) for u in KNOWN]
    attempts += [("unknown", *_prepared(server, protocol, u)) for u in UNKNOWN]
    started = time.monotonic()
    for _, sock, line in attempts:
        sock.sendall(line)
    kinds = {sock: kind for kind, sock, _ in attempts}
    times: dict[str, list[float]] = {"known": [], "unknown": []}
    texts = set()
    deadline = started + 10
    while kinds:
        ready, _, _ = select.select(list(kinds), [], [], max(0.0, deadline - time.monotonic()))
        assert ready, "no reply within 10 s"
        for sock in ready:
            texts.add(_line(sock, deadline, smtp=protocol == "smtp"))
            times[kinds.pop(sock)].append(time.monotonic() - started)
    for _, sock, _ in attempts:
        sock.close()
    return times, texts


@pytest.mark.parametrize("protocol", ["smtp", "pop3"])
def test_failures_sent_together_are_answered_together_whatever_the_kind(auth_server: TaubeServer,
                                                                         protocol: str) -> None:
    """Unknown user or wrong password: the same reply text at the same time. The penalty is fixed
    when an attempt arrives; ranked by which verification finished first, four failures sent
    together came back one failure_delay apart, sorted by the order they were checked in."""
    spreads, gaps = [], []
    for _ in range(ROUNDS):
        _reset_failures(auth_server)
        times, texts = _round(auth_server, protocol)
        assert len(texts) == 1, texts  # one text for both kinds
        everything = times["known"] + times["unknown"]
        assert min(everything) >= FAILURE_DELAY - 0.05, times  # the penalty still applies
        spreads.append(max(everything) - min(everything))
        gaps.append(abs(statistics.mean(times["unknown"]) - statistics.mean(times["known"])))
    # before: a spread of 3 x FAILURE_DELAY in every round
    assert statistics.median(spreads) < FAILURE_DELAY / 2, spreads
    assert statistics.median(gaps) < FAILURE_DELAY / 4, gaps
    [text] = texts
    assert text.startswith(b"535 5.7.8" if protocol == "smtp" else b"-ERR [AUTH]")


def test_failures_one_after_another_still_wait_longer_each_time(auth_server: TaubeServer) -> None:
    _reset_failures(auth_server)
    with RawSMTP(auth_server.port) as c:
        c.cmd("EHLO x")
        first = timed(c, f"AUTH PLAIN {plain(UNKNOWN[0], 'x')}")
        second = timed(c, f"AUTH PLAIN {plain(KNOWN[0], 'x')}")
    assert first[1].startswith("535 5.7.8") and second[1].startswith("535 5.7.8")
    assert FAILURE_DELAY - 0.05 <= first[0] < 2 * FAILURE_DELAY, first
    assert second[0] >= 2 * FAILURE_DELAY - 0.05, second  # failures so far + 1


def test_a_blocked_address_is_refused_and_disconnected_by_smtp_and_pop3(make_server) -> None:
    server = make_server(pop3=True, pop3_toml="plaintext_requires_tls = false",
                         auth_toml="require_tls = false\nmax_failures = 2")
    server.add_user(KNOWN[0], PASSWORD)
    server.start()
    with RawSMTP(server.port) as c:
        c.cmd("EHLO x")
        for user in (KNOWN[0], UNKNOWN[0]):
            assert c.cmd(f"AUTH PLAIN {plain(user, 'wrong')}").startswith("535 5.7.8")
        assert c.cmd(f"AUTH PLAIN {plain(KNOWN[0], PASSWORD)}").startswith("421 4.7.0")
        assert c.closed()
    s = socket.create_connection(("127.0.0.1", server.pop3_port), timeout=10)
    with s:
        deadline = time.monotonic() + 10
        _line(s, deadline, smtp=False)
        s.sendall(f"USER {KNOWN[0]}\r\n".encode())
        assert _line(s, deadline, smtp=False).startswith(b"+OK")
        s.sendall(f"PASS {PASSWORD}\r\n".encode())  # even the right password
        rest = read_to_eof(s)
    assert rest == b"-ERR [SYS/TEMP] too many authentication failures, try again later\r\n", rest
    wait_for(lambda: "login refused client=127.0.0.1" in server.log, what="the refusal in the log")


# --- connection limits ---------------------------------------------------------------------------

def _accepted(port: int, source: str) -> RawSMTP | None:
    c = RawSMTP(port, source=source)
    if c.greeting.startswith("220"):
        return c
    c.close()
    return None


def _refused(port: int, source: str) -> str:
    with RawSMTP(port, source=source) as c:
        assert c.closed()
        return c.greeting


def test_trusted_clients_are_exempt_from_the_per_client_limit_not_the_total(make_server) -> None:
    server = make_server(trusted=(f"{TRUSTED}/32",), smtp_toml="max_connections_per_client = 2\nmax_connections = 6")
    server.start()
    open_: list[RawSMTP] = []
    try:
        # the readiness probe's connection may still be counted for a moment: retry until each fits
        for _ in range(4):  # twice the per-client limit from a trusted address
            open_.append(wait_for(lambda: _accepted(server.port, TRUSTED), what="a trusted connection"))
        for _ in range(2):
            open_.append(wait_for(lambda: _accepted(server.port, UNTRUSTED), what="an untrusted connection"))
        # 6 open: the total is reached, for the trusted client too
        assert "Error: too many connections, " in _refused(server.port, TRUSTED)
        open_.pop().close()  # an untrusted one: 5 open, the untrusted client has 1
        open_.append(wait_for(lambda: _accepted(server.port, TRUSTED), what="a sixth connection"))
        assert "Error: too many connections, " in _refused(server.port, UNTRUSTED)  # the total holds
        open_.pop(0).close()  # a trusted one: 5 open, the untrusted client has 1
        open_.append(wait_for(lambda: _accepted(server.port, UNTRUSTED), what="the second untrusted slot"))
        open_.pop(0).close()  # 5 open, 2 of them untrusted
        # refused either way; by the per-client limit once the server has seen the close
        def per_client_refusal() -> str | None:
            refusal = _refused(server.port, UNTRUSTED)
            return refusal if "from your address" in refusal else None

        refusal = wait_for(per_client_refusal, what="the per-client refusal")
        assert refusal.startswith("421 4.7.0")
    finally:
        for c in open_:
            c.close()


def test_smtp_connections_do_not_use_up_the_pop3_limits(make_server) -> None:
    """Each service counts its own connections: SMTP at its total does not lock out POP3."""
    server = make_server(pop3=True, smtp_toml="max_connections = 2",
                         pop3_toml="max_connections = 2\nmax_connections_per_client = 2")
    server.start()
    open_: list[RawSMTP] = []
    try:
        for _ in range(2):
            open_.append(wait_for(lambda: _accepted(server.port, TRUSTED), what="an SMTP connection"))
        assert "Error: too many connections, " in _refused(server.port, TRUSTED)
        pop3 = []
        for _ in range(2):
            s = socket.create_connection(("127.0.0.1", server.pop3_port), timeout=5)
            pop3.append(s)
            assert s.recv(512).startswith(b"+OK")
        for s in pop3:
            s.close()
    finally:
        for c in open_:
            c.close()
