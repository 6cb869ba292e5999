"""DNS block and allow lists (RFC 5782) through the policy pipeline, against a DNS server on
loopback: the query names, listed with and without a reason, not listed, IPv6, error codes and
temporary failures that never refuse, one look-up per connection and the cache across
connections, postmaster still reachable, trusted and authenticated clients never looked up."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from taube.lookup import DNSClient
from taube.policy.dnsbl import (MAX_REASON, NOTE, DNSLists, ListLookup, ListResult, Listing,
                                dnswl_listed, query_name)
from taube.policy.pipeline import Context, Pipeline, Recipient, Verdict
from taube.policy.relay import RelayPolicy
from tests.dnsserver import DNSServer

T = TypeVar("T")

BL = "bl.example"
BL2 = "bl2.example"
WL = "wl.example"
CLIENT = "127.0.0.2"  # RFC 5782 5: the address every IPv4 list lists, for testing
CLEAN = "127.0.0.3"
V6 = "2001:db8::1"
V6_NAME = "1." + "0." * 23 + "8.b.d.0.1.0.0.2"  # 32 nibbles, reversed
TRUSTED = RelayPolicy([ipaddress.ip_network("127.0.0.1/32")]).is_trusted


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def server() -> Iterator[DNSServer]:
    with DNSServer() as srv:
        yield srv


def lists(server: DNSServer, block: tuple[str, ...] = (BL,), allow: tuple[str, ...] = (),
          timeout: float = 2.0) -> DNSLists:
    return DNSLists(block, allow, DNSClient([server.address], timeout), TRUSTED)


async def rcpt(pipeline: Pipeline, ctx: Context, address: str = "alice@example.test") -> Verdict:
    local, _, domain = address.partition("@")
    ctx.tx.sender = "s@sender.test"
    ctx.tx.rcpt = Recipient(address=address, local=local, domain=domain)
    return await pipeline.rcpt(ctx)


async def connection(pipeline: Pipeline, client: str, *recipients: str,
                     user: str | None = None) -> list[Verdict]:
    """One connection as the session drives it: connect, then one RCPT per recipient."""
    ctx = Context(client_ip=client)
    assert not (await pipeline.connect(ctx)).refused
    ctx.user = user
    return [await rcpt(pipeline, ctx, r) for r in recipients or ("alice@example.test",)]


def list_queries(server: DNSServer) -> list[tuple[str, str]]:
    return [q for q in server.queries if q[0].endswith(".example")]


# -- the names --------------------------------------------------------------------------------


def test_query_names_reverse_octets_and_nibbles() -> None:
    assert query_name("192.0.2.99", "zen.example") == "99.2.0.192.zen.example"  # RFC 5782 2.1
    assert query_name(V6, "bl.example") == f"{V6_NAME}.bl.example"  # 2.4: 32 nibbles
    assert len(query_name(V6, "z")[:-2].split(".")) == 32  # type: ignore[index]
    assert query_name("::ffff:192.0.2.1", "z.example") == "1.2.0.192.z.example"
    assert query_name("fe80::1%eth0", "z") == "1." + "0." * 28 + "8.e.f.z"
    assert query_name("not an address", "z.example") is None


# -- listed and not listed --------------------------------------------------------------------


def test_listed_with_reason_is_refused_at_rcpt(server: DNSServer) -> None:
    server.add(f"2.0.0.127.{BL}", "A", "127.0.0.2")
    server.add(f"2.0.0.127.{BL}", "TXT", '"Listed: see https://bl.example/q?ip=127.0.0.2"')
    (verdict,) = run(connection(Pipeline([lists(server)]), CLIENT))
    assert verdict.action == "reject"
    assert verdict.reply is not None and (verdict.reply.code, verdict.reply.enhanced) == (554, "5.7.1")
    assert verdict.reply.text == ("Service unavailable; client [127.0.0.2] blocked using bl.example;"
                                  " Listed: see https://bl.example/q?ip=127.0.0.2")
    assert verdict.reason == "listed in bl.example (127.0.0.2)"


def test_listed_without_reason(server: DNSServer) -> None:
    server.add(f"2.0.0.127.{BL}", "A", "127.0.0.4")
    (verdict,) = run(connection(Pipeline([lists(server)]), CLIENT))
    assert verdict.reply is not None
    assert verdict.reply.text == "Service unavailable; client [127.0.0.2] blocked using bl.example"
    assert (f"2.0.0.127.{BL}", "TXT") in server.queries


def test_not_listed_continues(server: DNSServer) -> None:
    server.add(f"2.0.0.127.{BL}", "A", "127.0.0.2")
    (verdict,) = run(connection(Pipeline([lists(server)]), CLEAN))
    assert verdict == Verdict.cont()
    assert list_queries(server) == [(f"3.0.0.127.{BL}", "A")]  # no TXT for a clean client


def test_ipv6_client(server: DNSServer) -> None:
    server.add(f"{V6_NAME}.{BL}", "A", "127.0.0.10")
    (verdict,) = run(connection(Pipeline([lists(server)]), V6))
    assert verdict.action == "reject" and verdict.reply is not None
    assert verdict.reply.text == "Service unavailable; client [2001:db8::1] blocked using bl.example"
    (other,) = run(connection(Pipeline([lists(server)]), "2001:db8::2"))
    assert not other.refused


def test_first_listing_zone_in_configured_order_is_named(server: DNSServer) -> None:
    server.add(f"2.0.0.127.{BL2}", "A", "127.0.0.2")
    server.add(f"2.0.0.127.{BL}", "A", "127.0.0.3")
    check = lists(server, block=(BL2, BL))
    result = run(check.lookup(CLIENT))
    assert result.blocked == Listing(zone=BL2, codes=("127.0.0.2",))
    (verdict,) = run(connection(Pipeline([check]), CLIENT))
    assert verdict.reply is not None and verdict.reply.text.endswith("blocked using bl2.example")


def test_reason_is_printable_ascii_and_bounded(server: DNSServer) -> None:
    name = f"2.0.0.127.{BL}"
    server.add(name, "A", "127.0.0.2")
    # two character-strings, joined (RFC 7208 3.3), with control and non-ASCII octets
    server.add(name, "TXT", '"bad\\013\\010line\\195\\169 " "' + "x" * 250 + '"')
    result = run(lists(server).lookup(CLIENT))
    assert result.blocked is not None
    reason = result.blocked.reason
    assert reason.startswith("bad line ") and reason.endswith("...")
    assert len(reason) == MAX_REASON and all(32 <= ord(c) < 127 for c in reason)


# -- not listings -----------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["127.255.255.254", "127.255.255.252", "127.255.255.255",
                                  "127.0.0.1", "192.0.2.80"])
def test_error_codes_and_foreign_answers_are_no_listing_and_logged_once(
        server: DNSServer, code: str, caplog: pytest.LogCaptureFixture) -> None:
    server.add(f"2.0.0.127.{BL}", "A", code)
    server.add(f"3.0.0.127.{BL}", "A", code)
    check = lists(server)
    caplog.set_level(logging.WARNING, logger="taube.policy.dnsbl")

    async def two() -> list[Verdict]:
        return [*await connection(Pipeline([check]), CLIENT), *await connection(Pipeline([check]), CLEAN)]

    assert not any(v.refused for v in run(two()))
    assert [r.getMessage() for r in caplog.records if code in r.getMessage()] == [
        f"DNS list bl.example answered {code} ("
        f"{'outside 127.0.0.0/8' if code.startswith('192') else 'an error code'}): not a listing; "
        "is the zone name right and may this server query it?"]


def test_temperror_is_no_listing(server: DNSServer, caplog: pytest.LogCaptureFixture) -> None:
    server.servfail(f"2.0.0.127.{BL}")
    server.add(f"2.0.0.127.{BL2}", "A", "127.0.0.2")
    server.drop(f"2.0.0.127.{BL2}")
    caplog.set_level(logging.WARNING, logger="taube.policy.dnsbl")
    check = lists(server, block=(BL, BL2), timeout=0.6)
    assert run(check.lookup(CLIENT)) == ListResult(errors=(BL, BL2))
    (verdict,) = run(connection(Pipeline([check]), CLIENT))
    assert verdict == Verdict.cont()
    assert "DNS list bl.example: no answer for 127.0.0.2" in caplog.text
    assert "DNS list bl2.example: no answer for 127.0.0.2" in caplog.text


def test_zones_are_asked_in_parallel(server: DNSServer) -> None:
    """The second zone is asked while the first one still has not answered."""
    server.drop(f"2.0.0.127.{BL}")
    check = lists(server, block=(BL, BL2), timeout=3.0)

    async def main() -> tuple[ListResult, bool]:
        task = asyncio.create_task(check.lookup(CLIENT))
        seen = await asyncio.to_thread(server.wait_for_query, f"2.0.0.127.{BL2}", "A", 2.5)
        return await task, seen

    result, seen = run(main())
    assert seen and result.errors == (BL,)


# -- once per connection, cached across connections -----------------------------------------


def test_lookup_starts_at_connect_and_runs_once_per_connection(server: DNSServer) -> None:
    server.add(f"3.0.0.127.{BL}", "A", "127.0.0.2")
    server.drop(f"3.0.0.127.{BL}", "TXT")  # the listing stays pending on its reason
    check = lists(server, timeout=1.0)

    async def main() -> tuple[bool, list[Verdict]]:
        ctx = Context(client_ip=CLEAN)
        await Pipeline([check]).connect(ctx)
        assert isinstance(ctx.notes[NOTE], ListLookup)
        started = await asyncio.to_thread(server.wait_for_query, f"3.0.0.127.{BL}", "A", 2.0)
        verdicts = [await rcpt(Pipeline([check]), ctx, f"u{i}@example.test") for i in range(3)]
        return started, verdicts

    started, verdicts = run(main())
    assert started  # asked before any RCPT
    assert all(v.action == "reject" for v in verdicts)
    assert list_queries(server).count((f"3.0.0.127.{BL}", "A")) == 1


def test_a_list_that_lists_everything_refuses_no_one(server: DNSServer,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A list gone bad (an expired domain parked with a wildcard, a hijacked zone) answers
    127.0.0.2 for every name. RFC 5782 5: 127.0.0.1 must never be listed; when it is, the
    zone's listings mean nothing, and refusing every client on them would stop all mail."""
    for name in (f"2.0.0.127.{BL}", f"3.0.0.127.{BL}", f"1.0.0.127.{BL}"):
        server.add(name, "A", "127.0.0.2")
    server.add(f"2.0.0.127.{BL2}", "A", "127.0.0.2")  # a sound list still counts
    with caplog.at_level(logging.WARNING, logger="taube.policy.dnsbl"):
        (clean,) = run(connection(Pipeline([lists(server)]), CLEAN))
        (listed,) = run(connection(Pipeline([lists(server, block=(BL, BL2))]), CLIENT))
    assert clean == Verdict.cont()
    assert listed.action == "reject" and listed.reply is not None
    assert listed.reply.text.endswith("blocked using bl2.example")
    assert any("127.0.0.1" in r.getMessage() and BL in r.getMessage() for r in caplog.records)


def test_a_listed_client_waits_for_two_lookups_in_a_row_at_most(server: DNSServer) -> None:
    """The TXT reason and the list's test entry are asked together after the A record: with
    both unanswered, the refusal comes after one more DNS timeout, not two."""
    server.add(f"2.0.0.127.{BL}", "A", "127.0.0.2")
    server.drop(f"2.0.0.127.{BL}", "TXT")
    server.drop(f"1.0.0.127.{BL}")

    async def timed() -> tuple[Verdict, float]:
        started = asyncio.get_running_loop().time()
        (verdict,) = await connection(Pipeline([lists(server, timeout=1.0)]), CLIENT)
        return verdict, asyncio.get_running_loop().time() - started

    verdict, elapsed = run(timed())
    assert verdict.action == "reject" and 1.0 <= elapsed < 1.8


def test_a_flood_of_listing_codes_is_kept_short(server: DNSServer) -> None:
    """Thousands of A records in one answer (over TCP): the listing keeps a few codes, and the
    log line of each refusal stays short."""
    codes = [f"127.0.{i // 256}.{i % 256}" for i in range(2, 3000)]
    server.add(f"2.0.0.127.{BL}", "A", *codes)
    (verdict,) = run(connection(Pipeline([lists(server)]), CLIENT))
    assert verdict.action == "reject" and len(verdict.reason) < 200
    assert verdict.reason.startswith("listed in bl.example (127.0.")  # an RRset has no order


def test_second_connection_is_answered_from_the_cache(server: DNSServer) -> None:
    server.add(f"2.0.0.127.{BL}", "A", "127.0.0.2")
    server.add(f"2.0.0.127.{BL}", "TXT", '"spam source"')
    check = lists(server)

    async def two() -> tuple[list[Verdict], int, list[Verdict]]:
        first = await connection(Pipeline([check]), CLIENT)
        asked = len(server.queries)
        second = await connection(Pipeline([check]), CLIENT, "bob@example.test")
        return first, asked, second

    first, asked, second = run(two())
    assert first[0].action == second[0].action == "reject"
    assert first[0].reply == second[0].reply
    # A, TXT and the list's test entry 127.0.0.1 once, then nothing
    assert asked == 3 and len(server.queries) == 3


def test_rcpt_without_connect_starts_the_lookup(server: DNSServer) -> None:
    server.add(f"2.0.0.127.{BL}", "A", "127.0.0.2")
    check = lists(server)
    verdict = run(rcpt(Pipeline([check]), Context(client_ip=CLIENT)))
    assert verdict.action == "reject"


# -- who is never refused ---------------------------------------------------------------------


@pytest.mark.parametrize("recipient", ["postmaster", "postmaster@example.test",
                                       "PostMaster@other.example"])
def test_postmaster_stays_reachable(server: DNSServer, recipient: str) -> None:
    server.add(f"2.0.0.127.{BL}", "A", "127.0.0.2")
    verdicts = run(connection(Pipeline([lists(server)]), CLIENT, recipient, "alice@example.test"))
    assert [v.action for v in verdicts] == ["continue", "reject"]


def test_trusted_client_is_never_looked_up(server: DNSServer) -> None:
    server.add(f"1.0.0.127.{BL}", "A", "127.0.0.2")
    (verdict,) = run(connection(Pipeline([lists(server, allow=(WL,))]), "127.0.0.1"))
    assert verdict == Verdict.cont()
    assert server.queries == []


def test_authenticated_client_is_never_looked_up(server: DNSServer) -> None:
    server.add(f"2.0.0.127.{BL}", "A", "127.0.0.2")
    check = lists(server)

    async def main() -> Verdict:
        ctx = Context(client_ip=CLIENT, user="alice@example.test")
        await check.connect(ctx)
        return await rcpt(Pipeline([check]), ctx)

    assert run(main()) == Verdict.cont()
    assert server.queries == []


def test_client_that_authenticates_after_connect_is_not_refused(server: DNSServer) -> None:
    server.add(f"2.0.0.127.{BL}", "A", "127.0.0.2")
    (verdict,) = run(connection(Pipeline([lists(server)]), CLIENT, user="alice@example.test"))
    assert verdict == Verdict.cont()


# -- the allow list ---------------------------------------------------------------------------


def test_dnswl_listing_is_kept_for_greylisting(server: DNSServer) -> None:
    server.add(f"2.0.0.127.{WL}", "A", "127.0.10.0")
    check = lists(server, block=(), allow=(WL,))

    async def listed(client: str) -> tuple[bool, Verdict]:
        ctx = Context(client_ip=client)
        await check.connect(ctx)
        verdict = await rcpt(Pipeline([check]), ctx)
        return await dnswl_listed(ctx), verdict

    assert run(listed(CLIENT)) == (True, Verdict.cont())
    assert run(listed(CLEAN)) == (False, Verdict.cont())
    assert run(dnswl_listed(Context(client_ip=CLIENT))) is False  # no look-up: not listed


def test_dnswl_limit_code_is_no_listing(server: DNSServer) -> None:
    server.add(f"2.0.0.127.{WL}", "A", "127.0.0.255")  # list.dnswl.org: query limit exceeded
    result = run(lists(server, block=(), allow=(WL,)).lookup(CLIENT))
    assert result.allowed is None


def test_block_and_allow_lists_in_one_lookup(server: DNSServer) -> None:
    server.add(f"2.0.0.127.{BL}", "A", "127.0.0.2")
    server.add(f"2.0.0.127.{WL}", "A", "127.0.5.1")
    result = run(lists(server, allow=(WL,)).lookup(CLIENT))
    assert result == ListResult(blocked=Listing(zone=BL, codes=("127.0.0.2",)),
                                allowed=Listing(zone=WL, codes=("127.0.5.1",)))


def test_no_zones_means_nothing_asked(server: DNSServer) -> None:
    check = lists(server, block=())
    assert not check.enabled
    (verdict,) = run(connection(Pipeline([check]), CLIENT))
    assert verdict == Verdict.cont() and server.queries == []
