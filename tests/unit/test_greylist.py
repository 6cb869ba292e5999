"""Greylisting with an injected clock: first attempt and early retry 451, a retry after the delay
passes and is remembered until the expiry; the triple's network, sender and recipient; trusted,
authenticated and DNSWL-listed clients never greylisted; the state in SQLite survives reopening
and is shared by two connections (two processes); one stored copy when some recipients of a
message are greylisted."""

from __future__ import annotations

import asyncio
import ipaddress
import sqlite3
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from taube.lookup import DNSClient
from taube.policy import greylist as greylist_module
from taube.policy.dnsbl import DNSLists
from taube.policy.greylist import GREYLISTED, RETRY_WINDOW, Decision, Greylist, GreylistDB, client_network
from taube.policy.pipeline import Context, Pipeline, Recipient, Verdict
from taube.policy.relay import RelayPolicy
from tests.clock import Clock
from tests.dnsserver import DNSServer

T = TypeVar("T")

DELAY = 300.0
EXPIRY = 35 * 86400.0
CLIENT = "192.0.2.10"
TRUSTED = RelayPolicy([ipaddress.ip_network("127.0.0.1/32")]).is_trusted


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def check(tmp_path: Path, clock: Clock) -> Iterator[Greylist]:
    grey = Greylist.open(tmp_path, delay=DELAY, expiry=EXPIRY, trusted=TRUSTED, clock=clock)
    yield grey
    grey.close()


async def attempt(pipeline: Pipeline, client: str = CLIENT, sender: str = "s@sender.example",
                  recipient: str = "alice@example.test", *, user: str | None = None,
                  ctx: Context | None = None) -> Verdict:
    ctx = ctx or Context(client_ip=client, user=user)
    await pipeline.connect(ctx)
    ctx.tx.sender = sender
    local, _, domain = recipient.partition("@")
    ctx.tx.rcpt = Recipient(address=recipient, local=local, domain=domain)
    return await pipeline.rcpt(ctx)


def tries(check: Greylist, *args: Any, **kwargs: Any) -> str:
    verdict = run(attempt(Pipeline([check]), *args, **kwargs))
    if verdict.refused:
        assert verdict.action == "tempfail" and verdict.reply == GREYLISTED
        return "451"
    return "pass"


# -- the life of a triple -------------------------------------------------------------------


def test_first_attempt_early_retry_and_retry_after_the_delay(check: Greylist, clock: Clock) -> None:
    assert GREYLISTED.code == 451 and GREYLISTED.enhanced == "4.7.1"
    assert GREYLISTED.text == "Greylisted, try again later"
    assert tries(check) == "451"
    clock.now += DELAY - 1
    assert tries(check) == "451"  # early: the first sighting is not moved ...
    clock.now += 1
    assert tries(check) == "pass"  # ... so the delay counts from the first attempt
    clock.now += 10 * 86400
    assert tries(check) == "pass"


def test_decisions_say_how_long_to_wait(tmp_path: Path, clock: Clock) -> None:
    db = GreylistDB(tmp_path / "g.db", delay=DELAY, expiry=EXPIRY, clock=clock)
    start = clock.now
    assert db.check("192.0.2.0/24", "s@x", "r@y") == Decision("new", start, DELAY)
    clock.now += 100
    assert db.check("192.0.2.0/24", "s@x", "r@y") == Decision("early", start, DELAY - 100)
    clock.now += 200
    assert db.check("192.0.2.0/24", "s@x", "r@y") == Decision("passed", start, 0.0)
    db.close()


def test_after_the_expiry_a_triple_is_greylisted_again(check: Greylist, clock: Clock) -> None:
    assert tries(check) == "451"
    clock.now += DELAY
    assert tries(check) == "pass"
    clock.now += EXPIRY - 1  # each use renews it
    assert tries(check) == "pass"
    clock.now += EXPIRY + 1
    assert tries(check) == "451"
    clock.now += DELAY
    assert tries(check) == "pass"


def test_a_triple_that_never_passed_is_forgotten_after_the_retry_window(check: Greylist,
                                                                          clock: Clock) -> None:
    assert tries(check) == "451"
    clock.now += RETRY_WINDOW + 1
    assert tries(check) == "451"  # a new first sighting
    clock.now += DELAY - 1
    assert tries(check) == "451"


def test_a_clock_that_went_back_starts_over(check: Greylist, clock: Clock) -> None:
    assert tries(check) == "451"
    clock.now -= 3600
    assert tries(check) == "451"
    clock.now += DELAY
    assert tries(check) == "pass"


# -- the triple -----------------------------------------------------------------------------


def test_client_networks() -> None:
    assert client_network("192.0.2.10") == "192.0.2.0/24"
    assert client_network("::ffff:192.0.2.200") == "192.0.2.0/24"
    assert client_network("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert client_network("not-an-ip") == "not-an-ip"


def test_another_address_of_the_same_network_is_the_same_client(check: Greylist,
                                                                 clock: Clock) -> None:
    assert tries(check, "192.0.2.10") == "451"
    clock.now += DELAY
    assert tries(check, "192.0.2.250") == "pass"
    assert tries(check, "192.0.3.10") == "451"
    assert tries(check, "2001:db8::1") == "451"
    clock.now += DELAY
    assert tries(check, "2001:db8::ffff:1") == "pass"  # same /64
    assert tries(check, "2001:db8:0:1::1") == "451"


def test_sender_and_recipient_are_compared_in_lower_case(check: Greylist, clock: Clock) -> None:
    assert tries(check, sender="S@Sender.Example", recipient="Alice@Example.test") == "451"
    clock.now += DELAY
    assert tries(check, sender="s@sender.example", recipient="alice@example.test") == "pass"
    assert tries(check, sender="other@sender.example") == "451"
    assert tries(check, recipient="bob@example.test") == "451"


def test_bounces_are_greylisted_too(check: Greylist, clock: Clock) -> None:
    """As Postgrey: a real MTA retries its bounces."""
    assert tries(check, sender="") == "451"
    clock.now += DELAY
    assert tries(check, sender="") == "pass"


def test_huge_and_odd_addresses_give_a_decision(check: Greylist, clock: Clock) -> None:
    odd = "\u00fc" * 5000 + "@example.test"
    assert tries(check, sender=odd, recipient="x\x00y@" + "z" * 3000) == "451"
    clock.now += DELAY
    assert tries(check, sender=odd, recipient="x\x00y@" + "z" * 3000) == "pass"


# -- who is never greylisted ----------------------------------------------------------------


def test_trusted_and_authenticated_clients_are_never_greylisted(check: Greylist) -> None:
    assert tries(check, "127.0.0.1") == "pass"
    assert tries(check, user="alice@example.test") == "pass"
    assert check.db.count() == 0


def test_dnswl_listed_client_is_never_greylisted(check: Greylist) -> None:
    with DNSServer() as server:
        server.add("10.2.0.192.wl.example", "A", "127.0.10.2")
        lists = DNSLists((), ("wl.example",), DNSClient([server.address], 2.0), TRUSTED)
        pipeline = Pipeline([lists, check])
        assert run(attempt(pipeline, "192.0.2.10")) == Verdict.cont()
        assert run(attempt(pipeline, "192.0.2.11")).reply == GREYLISTED
    assert check.db.count() == 1


# -- the database ---------------------------------------------------------------------------


def test_state_survives_reopening(tmp_path: Path, clock: Clock) -> None:
    first = Greylist.open(tmp_path, delay=DELAY, expiry=EXPIRY, trusted=TRUSTED, clock=clock)
    assert tries(first) == "451"
    first.close()
    clock.now += DELAY
    again = Greylist.open(tmp_path, delay=DELAY, expiry=EXPIRY, trusted=TRUSTED, clock=clock)
    assert tries(again) == "pass"
    again.close()
    with sqlite3.connect(tmp_path / "greylist.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_two_connections_share_the_state(tmp_path: Path, clock: Clock) -> None:
    """As two server processes would: each its own connection to one file."""
    one = Greylist.open(tmp_path, delay=DELAY, expiry=EXPIRY, trusted=TRUSTED, clock=clock)
    two = Greylist.open(tmp_path, delay=DELAY, expiry=EXPIRY, trusted=TRUSTED, clock=clock)
    assert tries(one) == "451"
    clock.now += DELAY / 2
    assert tries(two) == "451"  # seen by the other: still early, not new
    clock.now += DELAY / 2
    assert tries(two) == "pass"
    assert one.db.count() == two.db.count() == 1
    one.close()
    two.close()


def test_purge_is_bounded_and_spares_live_triples(tmp_path: Path, clock: Clock,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(greylist_module, "PURGE_BATCH", 3)
    db = GreylistDB(tmp_path / "g.db", delay=DELAY, expiry=EXPIRY, clock=clock)
    for i in range(5):
        db.check("192.0.2.0/24", "s@x", f"r{i}@y")  # never pass
    db.check("192.0.3.0/24", "s@x", "kept@y")
    clock.now += DELAY
    db.check("192.0.3.0/24", "s@x", "kept@y")  # passed
    clock.now += RETRY_WINDOW + 1
    assert db.purge() == 3 and db.purge() == 2 and db.purge() == 0
    assert db.count() == 1
    clock.now += EXPIRY
    assert db.purge() == 1 and db.count() == 0
    db.close()


def test_purge_runs_now_and_then_on_its_own(tmp_path: Path, clock: Clock) -> None:
    db = GreylistDB(tmp_path / "g.db", delay=DELAY, expiry=EXPIRY, clock=clock)
    db.check("192.0.2.0/24", "s@x", "old@y")
    clock.now += RETRY_WINDOW + greylist_module.PURGE_INTERVAL
    db.check("192.0.2.0/24", "s@x", "new@y")  # the interval has passed: the old one goes
    assert db.count() == 1
    db.close()


def test_a_broken_database_lets_mail_through(tmp_path: Path, clock: Clock,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """Fail open, with a log line: a file that cannot be used (read-only or full data_dir)
    must not defer every sender until someone notices."""
    grey = Greylist.open(tmp_path, delay=DELAY, expiry=EXPIRY, trusted=TRUSTED, clock=clock)
    grey.close()  # every use now raises sqlite3.ProgrammingError
    assert run(attempt(Pipeline([grey]))) == Verdict.cont()
    assert "greylist database" in caplog.text and "not greylisted" in caplog.text


# -- one stored copy -------------------------------------------------------------------------


def test_a_partly_greylisted_message_is_stored_once(tmp_path: Path, clock: Clock) -> None:
    """The greylisted recipient gets 451 at RCPT, the message is stored once for the other."""
    from taube.directory.sqlite import SQLiteDirectory
    from tests.unit.test_policy import session_with

    directory = SQLiteDirectory(tmp_path / "taube.db", ["example.test"])  # the session's
    directory.add_user("alice@example.test", "secret")
    directory.add_user("bob@example.test", "secret")
    grey = Greylist.open(tmp_path, delay=DELAY, expiry=EXPIRY, trusted=lambda ip: False,
                         clock=clock)
    # alice's triple passed before; bob's is new
    assert grey.db.check("127.0.0.0/24", "s@sender.test", "alice@example.test").outcome == "new"
    clock.now += DELAY
    out = session_with(tmp_path, [grey], [
        b"EHLO client.test\r\n", b"MAIL FROM:<s@sender.test>\r\n", b"RCPT TO:<alice@example.test>\r\n",
        b"RCPT TO:<bob@example.test>\r\n", b"DATA\r\n", b"Subject: hi\r\n\r\nbody\r\n.\r\n",
        b"QUIT\r\n"])
    replies = out.decode()
    assert "451 4.7.1 Greylisted, try again later\r\n" in replies
    assert replies.count("250 2.0.0 Ok: queued as") == 1
    stored = sorted((tmp_path / "mail").glob("*/*/new/*"))
    assert [p.parent.parent.name for p in stored] == ["alice"]
    assert grey.db.count() == 2
    grey.close()
