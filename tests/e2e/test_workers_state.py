"""The state shared by two worker processes (sharedstate_table.py) seen from outside: the
per-client connection limit, the POP3 mailbox lock, the SMTP-after-POP window and the failed
login block each hold whichever worker a connection lands on.

The kernel spreads connections over the workers' SO_REUSEPORT sockets at random, so every test
makes many connections: with a count per worker instead of a shared one, a test passes only if
all of them land on one worker (a chance of 2**-11 or less)."""

from __future__ import annotations

import poplib

import pytest

from tests.e2e.conftest import TaubeServer, wait_for
from tests.e2e.rawsmtp import RawSMTP

PASSWORD = "pop-secret-123"
UNTRUSTED = ("192.0.2.0/24",)  # loopback clients are not exempt from the limits
LIMIT = 4
TRIES = 12


def start(make_server, **kwargs) -> TaubeServer:
    server = make_server(workers=2, trusted=UNTRUSTED, **kwargs)
    server.add_user("alice@example.test", PASSWORD)
    server.start()
    wait_for(lambda: "taube ready" in server.log, what="the supervisor's ready line")
    return server


def pop_login(server: TaubeServer, password: str = PASSWORD) -> poplib.POP3:
    p = poplib.POP3("127.0.0.1", server.pop3_port, timeout=10)
    try:
        p.user("alice@example.test")
        p.pass_(password)
    except BaseException:
        p.close()
        raise
    return p


def pop_refusal(server: TaubeServer, password: str = PASSWORD) -> str:
    """The -ERR a login gets (it must get one)."""
    with pytest.raises(poplib.error_proto) as refused:
        pop_login(server, password).quit()
    return str(refused.value)


def test_the_per_client_limit_holds_across_workers(make_server) -> None:
    server = start(make_server, smtp_toml=f"max_connections_per_client = {LIMIT}")

    def greeted_at_once() -> bool:
        """TRIES connections held open together: never more than LIMIT greeted; exactly LIMIT
        once the connections of an earlier round are all closed on the server's side too."""
        clients = [RawSMTP(server.port) for _ in range(TRIES)]
        try:
            greetings = [c.greeting for c in clients]
        finally:
            for c in clients:
                c.close()
        greeted = sum(g.startswith("220 ") for g in greetings)
        assert greeted <= LIMIT, greetings
        assert all(g.startswith(("220 ", "421 4.7.0")) for g in greetings), greetings
        return greeted == LIMIT

    wait_for(greeted_at_once, interval=0.2, what=f"{LIMIT} greetings in a round")
    assert "too many connections from your address" in server.log


def test_a_mailbox_is_locked_across_workers(make_server) -> None:
    server = start(make_server, pop3=True, pop3_toml="plaintext_requires_tls = false")
    first = pop_login(server)
    try:
        for _ in range(TRIES):
            assert "[IN-USE]" in pop_refusal(server)
    finally:
        first.quit()
    wait_for(lambda: pop_login(server).quit(), what="the lock to be released")


def test_smtp_after_pop_across_workers(make_server) -> None:
    server = start(make_server, pop3=True, pop3_toml="plaintext_requires_tls = false",
                   auth_toml='smtp_after_pop = "1h"')

    def relay_reply() -> str:
        with RawSMTP(server.port) as c:
            c.cmd("EHLO x")
            c.cmd("MAIL FROM:<alice@example.test>")
            return c.cmd("RCPT TO:<far@remote.test>")

    assert all(relay_reply().startswith("554 5.7.1") for _ in range(TRIES))
    pop_login(server).quit()
    assert all(relay_reply().startswith("250") for _ in range(TRIES))


def test_failed_logins_block_across_workers(make_server) -> None:
    server = start(make_server, pop3=True, pop3_toml="plaintext_requires_tls = false",
                   auth_toml="max_failures = 3")
    for _ in range(3):
        assert "[AUTH]" in pop_refusal(server, "wrong")
    for _ in range(TRIES):  # even the right password, on any worker
        assert "[SYS/TEMP] too many" in pop_refusal(server)
