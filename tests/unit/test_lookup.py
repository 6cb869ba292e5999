"""taube.lookup.DNSClient against a real DNS server on loopback: answers, negative answers,
temporary failures with one deadline, the TTL cache, shared in-flight queries, and the blocking
bridge pyspf uses from a worker thread."""

from __future__ import annotations

import asyncio
import time

import pytest
import spf

from taube.lookup import MAX_TTL, NEGATIVE_TTL, DNSClient, TempError
from tests.dnsserver import DNSServer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server():
    with DNSServer() as s:
        s.add("example.org", "TXT", '"v=spf1 ip4:192.0.2.0/24 " "-all"', ttl=60)
        s.add("example.org", "MX", "10 MX.Example.ORG.")
        s.add("mx.example.org", "A", "192.0.2.25")
        s.add("mx.example.org", "AAAA", "2001:db8::25")
        s.add("25.2.0.192.in-addr.arpa", "PTR", "mx.example.org.")
        s.add("alias.example.org", "CNAME", "mx.example.org.")
        s.servfail("broken.example")
        s.drop("slow.example")
        yield s


def run(coro):
    return asyncio.run(coro)


def test_answers_by_type(server: DNSServer) -> None:
    async def main():
        client = DNSClient([server.address], 2.0)
        txt = await client.query("example.org", "TXT")
        assert txt.records == ((b"v=spf1 ip4:192.0.2.0/24 ", b"-all"),)
        assert txt.texts() == [b"v=spf1 ip4:192.0.2.0/24 -all"]
        assert (await client.query("example.org", "MX")).records == ((10, "mx.example.org"),)
        assert (await client.query("mx.example.org", "A")).records == ("192.0.2.25",)
        assert (await client.query("mx.example.org", "AAAA")).records == ("2001:db8::25",)
        ptr = await client.query("25.2.0.192.in-addr.arpa", "PTR")
        assert ptr.records == ("mx.example.org",)
        # A CNAME is followed: the records are the target's.
        assert (await client.query("alias.example.org", "A")).records == ("192.0.2.25",)
    run(main())


def test_negative_answers(server: DNSServer) -> None:
    async def main():
        client = DNSClient([server.address], 2.0)
        nx = await client.query("nowhere.example.org", "TXT")
        assert nx.nxdomain and nx.records == ()
        nodata = await client.query("example.org", "AAAA")
        assert not nodata.nxdomain and nodata.records == ()
        # Not a domain name at all: NXDOMAIN without a query.
        before = len(server.queries)
        bad = await client.query("a..b", "TXT")
        assert bad.nxdomain and len(server.queries) == before
        with pytest.raises(ValueError):
            await client.query("example.org", "SOA")
    run(main())


def test_temporary_failures_within_the_deadline(server: DNSServer) -> None:
    async def main():
        client = DNSClient([server.address], 0.6)
        with pytest.raises(TempError, match="SERVFAIL"):
            await client.query("broken.example", "TXT")
        started = time.monotonic()
        with pytest.raises(TempError, match="timed out"):
            await client.query("slow.example", "TXT")
        assert time.monotonic() - started < 3.0
        # Temporary failures are not cached: the next look-up asks again.
        server.clear_queries()
        with pytest.raises(TempError):
            await client.query("broken.example", "TXT")
        assert ("broken.example", "TXT") in server.queries
    run(main())


def test_no_name_server_is_a_temporary_failure(tmp_path) -> None:
    empty = tmp_path / "resolv.conf"
    empty.write_text("# nothing\n")

    async def main():
        client = DNSClient((), 1.0, resolv_conf=str(empty))
        with pytest.raises(TempError, match="no name server"):
            await client.query("example.org", "TXT")
    run(main())


def test_cache_honours_the_ttl(server: DNSServer) -> None:
    clock = Clock()

    async def main():
        client = DNSClient([server.address], 2.0, clock=clock)
        await client.query("example.org", "TXT")
        await client.query("EXAMPLE.org.", "TXT")
        assert server.queries.count(("example.org", "TXT")) == 1
        clock.now += 59
        await client.query("example.org", "TXT")
        assert server.queries.count(("example.org", "TXT")) == 1
        clock.now += 2  # past the 60 s TTL
        await client.query("example.org", "TXT")
        assert server.queries.count(("example.org", "TXT")) == 2
        # Negative answers are kept too (no SOA in the response: NEGATIVE_TTL).
        await client.query("nowhere.example.org", "A")
        clock.now += NEGATIVE_TTL - 1
        await client.query("nowhere.example.org", "A")
        assert server.queries.count(("nowhere.example.org", "A")) == 1
        clock.now += 2
        await client.query("nowhere.example.org", "A")
        assert server.queries.count(("nowhere.example.org", "A")) == 2
    run(main())


def test_cache_is_bounded_and_ttls_capped(server: DNSServer) -> None:
    clock = Clock()
    server.add("long.example.org", "A", "192.0.2.7", ttl=10 * 86400)

    async def main():
        client = DNSClient([server.address], 2.0, clock=clock, max_entries=2)
        await client.query("long.example.org", "A")
        clock.now += MAX_TTL + 1
        await client.query("long.example.org", "A")
        assert server.queries.count(("long.example.org", "A")) == 2
        # Three names in a cache of two: the least recently used is asked again.
        await client.query("example.org", "TXT")
        await client.query("mx.example.org", "A")
        await client.query("long.example.org", "A")
        assert server.queries.count(("long.example.org", "A")) == 3
    run(main())


def test_concurrent_lookups_share_one_query(server: DNSServer) -> None:
    async def main():
        client = DNSClient([server.address], 2.0)
        answers = await asyncio.gather(*(client.query("mx.example.org", "A") for _ in range(20)))
        assert {a.records for a in answers} == {("192.0.2.25",)}
        assert server.queries.count(("mx.example.org", "A")) == 1
        # A shared failure reaches every waiter.
        results = await asyncio.gather(*(client.query("broken.example", "A") for _ in range(5)),
                                       return_exceptions=True)
        assert all(isinstance(r, TempError) for r in results)
    run(main())


def test_blocking_lookup_serves_pyspf_from_a_thread(server: DNSServer) -> None:
    async def main():
        loop = asyncio.get_running_loop()
        client = DNSClient([server.address], 0.6)
        lookup = client.blocking_lookup(loop, spf.TempError)

        def evaluate(ip: str, sender: str):
            return spf.query(i=ip, s=sender, h="client.example", querytime=0).check()

        saved = spf.DNSLookup
        spf.DNSLookup = lookup
        try:
            assert (await loop.run_in_executor(None, evaluate, "192.0.2.9", "a@example.org"))[0] == "pass"
            assert (await loop.run_in_executor(None, evaluate, "198.51.100.1", "a@example.org"))[0] == "fail"
            assert (await loop.run_in_executor(None, evaluate, "192.0.2.9", "a@slow.example"))[0] == "temperror"
            # pyspf's shapes: TXT as the list of character-strings, MX as (preference, name).
            txt = await loop.run_in_executor(None, lookup, "example.org", "TXT")
            assert txt == [(("example.org", "TXT"), [b"v=spf1 ip4:192.0.2.0/24 ", b"-all"])]
            mx = await loop.run_in_executor(None, lookup, "example.org", "MX")
            assert mx == [(("example.org", "MX"), (10, "mx.example.org"))]
            with pytest.raises(spf.TempError):
                await loop.run_in_executor(None, lookup, "broken.example", "A")
        finally:
            spf.DNSLookup = saved
        # The answers went through the client's cache.
        assert server.queries.count(("example.org", "TXT")) == 1
    run(main())


async def _until(condition, timeout: float = 5.0) -> None:
    """Poll ``condition`` on the event loop until it holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_a_cancelled_asker_leaves_the_shared_query_to_the_others(server: DNSServer) -> None:
    """The first session that asks is cancelled (its client went away) while a second one
    waits for the same name: the second still gets the answer, never a CancelledError it did
    not ask for."""
    server.add("late.example.org", "A", "192.0.2.44")
    server.drop("late.example.org")

    async def main():
        client = DNSClient([server.address], 3.0)
        first = asyncio.create_task(client.query("late.example.org", "A"))
        await _until(lambda: ("late.example.org", "A") in server.queries)
        second = asyncio.create_task(client.query("late.example.org", "A"))
        await asyncio.sleep(0)  # the second joins the query in flight
        first.cancel()
        server.heal("late.example.org")  # the resolver's next try is answered
        assert (await second).records == ("192.0.2.44",)
        with pytest.raises(asyncio.CancelledError):
            await first
    run(main())


def test_cache_is_bounded_in_octets(server: DNSServer) -> None:
    """A hostile zone answers with TXT records of many kilobytes (up to 64 KB over TCP) under
    names it makes up at will: the cache holds at most ``max_bytes`` of answers, however few
    entries that is, and an answer larger than that is not kept at all."""
    def quoted(size: int) -> str:
        return " ".join(['"' + "x" * 250 + '"'] * (size // 250))

    for name in ("big1.example.org", "big2.example.org", "big3.example.org"):
        server.add(name, "TXT", quoted(4000))
    server.add("huge.example.org", "TXT", quoted(12000))

    async def main():
        client = DNSClient([server.address], 2.0, max_bytes=10000)
        for name in ("big1.example.org", "big2.example.org", "big3.example.org"):
            assert len((await client.query(name, "TXT")).texts()[0]) == 4000
        # One look-up is two queries: over UDP (truncated), then over TCP.
        once = server.queries.count(("big1.example.org", "TXT"))
        await client.query("big1.example.org", "TXT")  # pushed out by big3
        assert server.queries.count(("big1.example.org", "TXT")) == 2 * once
        assert server.queries.count(("big3.example.org", "TXT")) == once
        await client.query("huge.example.org", "TXT")
        await client.query("huge.example.org", "TXT")
        assert server.queries.count(("huge.example.org", "TXT")) == 2 * once
        assert client.cached_bytes <= 10000
    run(main())
