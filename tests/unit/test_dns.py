"""MX resolution (RFC 5321 section 5.1, RFC 7505) against the test DNS server."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import dns.flags
import dns.message
import dns.rcode
import dns.query
import pytest

from taube.delivery.dns import (
    MAX_ADDRESSES_PER_HOST,
    MAX_MX_HOSTS,
    DNSFailure,
    MXHost,
    NullMXError,
    PermanentDNSError,
    Resolver,
    TemporaryDNSError,
    is_ip_literal,
)
from tests.dnsserver import DNSServer

T = TypeVar("T")

FAST = 1.0  # the timeout for cases that must time out
MARGIN = 1.5  # what a timed-out lookup may take beyond its timeout


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def server() -> Iterator[DNSServer]:
    with DNSServer() as srv:
        yield srv


def resolver(server: DNSServer, timeout: float = 5.0, seed: int = 0) -> Resolver:
    return Resolver([server.address], timeout=timeout, rng=random.Random(seed))


def names(hosts: list[MXHost]) -> list[str]:
    return [h.name for h in hosts]


# -- ordering ------------------------------------------------------------------------------


def test_mx_sorted_by_preference(server: DNSServer) -> None:
    server.add("example.org", "MX", "30 c.example.org.", "10 a.example.org.", "20 b.example.org.")
    server.add("a.example.org", "A", "127.0.0.2")
    server.add("b.example.org", "A", "127.0.0.3")
    server.add("c.example.org", "A", "127.0.0.4")
    hosts = run(resolver(server).mail_exchangers("example.org"))
    assert hosts == [
        MXHost("a.example.org", 10, ("127.0.0.2",)),
        MXHost("b.example.org", 20, ("127.0.0.3",)),
        MXHost("c.example.org", 30, ("127.0.0.4",)),
    ]


def test_equal_preferences_are_shuffled(server: DNSServer) -> None:
    server.add("example.org", "MX", "5 first.example.org.")
    server.add("example.org", "MX", *(f"10 mx{i}.example.org." for i in range(3)))
    server.add("first.example.org", "A", "127.0.0.10")
    for i in range(3):
        server.add(f"mx{i}.example.org", "A", f"127.0.0.{i + 2}")
    orders = set()
    for seed in range(20):
        hosts = run(resolver(server, seed=seed).mail_exchangers("example.org"))
        assert hosts[0].name == "first.example.org"
        assert [h.preference for h in hosts] == [5, 10, 10, 10]
        orders.add(tuple(names(hosts)[1:]))
    assert len(orders) > 1
    assert all(sorted(order) == [f"mx{i}.example.org" for i in range(3)] for order in orders)
    # the order depends on the random source only, not on the order of the DNS answer
    again = {
        tuple(names(run(resolver(server, seed=3).mail_exchangers("example.org")))) for _ in range(5)
    }
    assert len(again) == 1


def test_duplicate_exchanger_listed_once_at_best_preference(server: DNSServer) -> None:
    server.add("example.org", "MX", "20 mx.example.org.", "10 MX.example.org.")
    server.add("mx.example.org", "A", "127.0.0.2")
    assert run(resolver(server).mail_exchangers("example.org")) == [
        MXHost("mx.example.org", 10, ("127.0.0.2",))
    ]


def test_address_shared_by_two_exchangers_is_tried_once(server: DNSServer) -> None:
    server.add("example.org", "MX", "10 a.example.org.", "20 b.example.org.", "30 c.example.org.")
    server.add("a.example.org", "A", "127.0.0.2")
    server.add("b.example.org", "A", "127.0.0.2")
    server.add("c.example.org", "A", "127.0.0.2", "127.0.0.3")
    hosts = run(resolver(server).mail_exchangers("example.org"))
    assert hosts == [
        MXHost("a.example.org", 10, ("127.0.0.2",)),
        MXHost("c.example.org", 30, ("127.0.0.3",)),
    ]


# -- implicit MX -----------------------------------------------------------------------------


def test_no_mx_means_the_domain_itself(server: DNSServer) -> None:
    server.add("example.org", "A", "127.0.0.7")
    server.add("example.org", "AAAA", "::1")
    hosts = run(resolver(server).mail_exchangers("example.org"))
    assert hosts == [MXHost("example.org", 0, ("127.0.0.7", "::1"))]
    assert ("example.org", "MX") in server.queries


def test_no_mx_and_no_address_is_permanent(server: DNSServer) -> None:
    server.add("example.org", "TXT", '"v=spf1 -all"')
    with pytest.raises(PermanentDNSError) as info:
        run(resolver(server).mail_exchangers("example.org"))
    assert info.value.status == "5.4.4"
    assert not info.value.temporary


def test_no_mx_and_address_lookup_failing_is_temporary(server: DNSServer) -> None:
    server.add("example.org", "TXT", '"hello"')
    server.servfail("example.org", "A")
    server.servfail("example.org", "AAAA")
    with pytest.raises(TemporaryDNSError):
        run(resolver(server).mail_exchangers("example.org"))


# -- null MX (RFC 7505) ----------------------------------------------------------------------


def test_null_mx(server: DNSServer) -> None:
    server.add("example.org", "MX", "0 .")
    server.add("example.org", "A", "127.0.0.2")  # must not be used as an implicit MX
    with pytest.raises(NullMXError) as info:
        run(resolver(server).mail_exchangers("example.org"))
    err = info.value
    assert isinstance(err, PermanentDNSError)
    assert err.status == "5.1.10"
    assert not err.temporary
    assert str(err) == "Domain example.org does not accept mail (null MX)"
    assert ("example.org", "A") not in server.queries


def test_null_mx_among_other_records_is_ignored(server: DNSServer) -> None:
    server.add("example.org", "MX", "0 .", "10 mx.example.org.")
    server.add("mx.example.org", "A", "127.0.0.2")
    assert run(resolver(server).mail_exchangers("example.org")) == [
        MXHost("mx.example.org", 10, ("127.0.0.2",))
    ]


# -- failures --------------------------------------------------------------------------------


def test_nxdomain_is_permanent(server: DNSServer) -> None:
    with pytest.raises(PermanentDNSError) as info:
        run(resolver(server).mail_exchangers("nowhere.example"))
    err = info.value
    assert type(err) is PermanentDNSError
    assert err.status == "5.1.2"
    assert not err.temporary
    assert str(err) == "Name service error for name=nowhere.example type=MX: Host not found"
    assert (err.name, err.rdtype) == ("nowhere.example", "MX")


def test_servfail_is_temporary(server: DNSServer) -> None:
    server.add("example.org", "MX", "10 mx.example.org.")
    server.servfail("example.org")
    with pytest.raises(TemporaryDNSError) as info:
        run(resolver(server).mail_exchangers("example.org"))
    assert info.value.status == "4.4.3"
    assert info.value.temporary
    assert "name=example.org type=MX" in str(info.value)


def test_dropped_query_times_out_as_temporary(server: DNSServer) -> None:
    server.add("example.org", "MX", "10 mx.example.org.")
    server.drop("example.org")
    start = time.monotonic()
    with pytest.raises(TemporaryDNSError) as info:
        run(resolver(server, timeout=FAST).mail_exchangers("example.org"))
    assert time.monotonic() - start < FAST + MARGIN
    assert "timed out" in str(info.value)


def test_the_deadline_covers_the_address_lookups_too(server: DNSServer) -> None:
    server.add("example.org", "MX", "10 mx.example.org.")
    server.add("mx.example.org", "A", "127.0.0.2")
    server.drop("mx.example.org")
    start = time.monotonic()
    with pytest.raises(TemporaryDNSError):
        run(resolver(server, timeout=FAST).mail_exchangers("example.org"))
    assert time.monotonic() - start < FAST + MARGIN


def test_no_server_listening_is_temporary() -> None:
    with DNSServer() as srv:
        address = srv.address
    start = time.monotonic()
    with pytest.raises(TemporaryDNSError):
        run(Resolver([address], timeout=FAST).mail_exchangers("example.org"))
    assert time.monotonic() - start < FAST + MARGIN


def test_missing_or_empty_resolv_conf_is_temporary_at_lookup(tmp_path: Path) -> None:
    empty = tmp_path / "resolv.conf"
    empty.write_text("# nothing\n")
    for path in (tmp_path / "missing", empty):
        res = Resolver(timeout=FAST, resolv_conf=str(path))  # constructing never fails
        with pytest.raises(TemporaryDNSError) as info:
            run(res.mail_exchangers("example.org"))
        assert "no name server" in str(info.value)


def test_system_configuration_is_read(server: DNSServer, tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("search example.org\noptions ndots:5\n")
    server.add("example.org", "MX", "10 mx.example.org.")
    server.add("mx.example.org", "A", "127.0.0.2")
    res = Resolver(timeout=FAST, resolv_conf=str(conf))
    with pytest.raises(TemporaryDNSError):
        run(res.mail_exchangers("example.org"))
    # the file appears later: the next lookup uses it (port 53 is not ours, so only check
    # that it is read and that the search domain is never appended)
    conf.write_text("nameserver 127.0.0.1\nsearch example.org\n")
    res._get_resolver("example.org", "MX")  # noqa: SLF001 - configuration check only
    assert res._resolver is not None and res._resolver.search == []  # noqa: SLF001


# -- exchangers without addresses -----------------------------------------------------------


def test_exchanger_without_address_is_skipped(server: DNSServer) -> None:
    server.add("example.org", "MX", "10 gone.example.org.", "20 empty.example.org.")
    server.add("example.org", "MX", "30 mx.example.org.")
    server.add("empty.example.org", "TXT", '"no address here"')
    server.add("mx.example.org", "A", "127.0.0.2")
    assert run(resolver(server).mail_exchangers("example.org")) == [
        MXHost("mx.example.org", 30, ("127.0.0.2",))
    ]


def test_exchanger_failing_is_skipped(server: DNSServer) -> None:
    server.add("example.org", "MX", "10 broken.example.org.", "20 mx.example.org.")
    server.add("broken.example.org", "A", "127.0.0.3")
    server.add("mx.example.org", "A", "127.0.0.2")
    server.servfail("broken.example.org")
    assert names(run(resolver(server).mail_exchangers("example.org"))) == ["mx.example.org"]


def test_no_exchanger_with_address_is_permanent(server: DNSServer) -> None:
    server.add("example.org", "MX", "10 gone.example.org.", "20 empty.example.org.")
    server.add("empty.example.org", "TXT", '"no address here"')
    with pytest.raises(PermanentDNSError) as info:
        run(resolver(server).mail_exchangers("example.org"))
    assert info.value.status == "5.4.4"
    assert "gone.example.org" in str(info.value)
    assert "empty.example.org" in str(info.value)


def test_no_exchanger_with_address_but_one_failed_is_temporary(server: DNSServer) -> None:
    server.add("example.org", "MX", "10 gone.example.org.", "20 broken.example.org.")
    server.add("broken.example.org", "A", "127.0.0.3")
    server.servfail("broken.example.org")
    with pytest.raises(TemporaryDNSError) as info:
        run(resolver(server).mail_exchangers("example.org"))
    assert info.value.status == "4.4.3"


def test_exchanger_named_by_cname_is_followed(server: DNSServer) -> None:
    server.add("example.org", "MX", "10 alias.example.org.")
    server.add("alias.example.org", "CNAME", "real.example.net.")
    server.add("real.example.net", "A", "127.0.0.5")
    assert run(resolver(server).mail_exchangers("example.org")) == [
        MXHost("alias.example.org", 10, ("127.0.0.5",))
    ]


def test_exchanger_given_as_ip_address_is_taken_as_is(server: DNSServer) -> None:
    server.add("example.org", "MX", "10 127.0.0.9.")
    assert run(resolver(server).mail_exchangers("example.org")) == [
        MXHost("127.0.0.9", 10, ("127.0.0.9",))
    ]


# -- names and addresses ---------------------------------------------------------------------


@pytest.mark.parametrize("domain", ["example.org.", "EXAMPLE.Org", " Example.ORG. "])
def test_trailing_dot_and_case(server: DNSServer, domain: str) -> None:
    server.add("example.org", "MX", "10 MX.Example.ORG.")
    server.add("mx.example.org", "A", "127.0.0.2")
    assert run(resolver(server).mail_exchangers(domain)) == [
        MXHost("mx.example.org", 10, ("127.0.0.2",))
    ]


def test_ipv4_first_then_ipv6(server: DNSServer) -> None:
    server.add("example.org", "MX", "10 dual.example.org.", "20 six.example.org.")
    server.add("dual.example.org", "AAAA", "2001:db8::1")
    server.add("dual.example.org", "A", "127.0.0.2")
    server.add("six.example.org", "AAAA", "::1")
    hosts = run(resolver(server).mail_exchangers("example.org"))
    assert hosts == [
        MXHost("dual.example.org", 10, ("127.0.0.2", "2001:db8::1")),
        MXHost("six.example.org", 20, ("::1",)),
    ]


def test_addresses(server: DNSServer) -> None:
    server.add("host.example.org", "A", "127.0.0.2")
    server.add("host.example.org", "AAAA", "::1")
    server.add("empty.example.org", "TXT", '"x"')
    res = resolver(server)
    assert run(res.addresses("HOST.example.org.")) == ("127.0.0.2", "::1")
    assert run(res.addresses("192.0.2.1")) == ("192.0.2.1",)
    assert run(res.addresses("[IPv6:2001:db8::1]")) == ("2001:db8::1",)
    with pytest.raises(PermanentDNSError) as info:
        run(res.addresses("gone.example.org"))
    assert info.value.status == "5.1.2"
    with pytest.raises(PermanentDNSError) as info:
        run(res.addresses("empty.example.org"))
    assert info.value.status == "5.4.4"
    server.servfail("host.example.org")
    with pytest.raises(TemporaryDNSError):
        run(res.addresses("host.example.org"))


def test_one_address_family_failing_still_gives_the_other(server: DNSServer) -> None:
    server.add("host.example.org", "A", "127.0.0.2")
    server.servfail("host.example.org", "AAAA")
    assert run(resolver(server).addresses("host.example.org")) == ("127.0.0.2",)


def test_address_literal_domain(server: DNSServer) -> None:
    res = resolver(server)
    assert run(res.mail_exchangers("[127.0.0.1]")) == [MXHost("[127.0.0.1]", 0, ("127.0.0.1",))]
    assert server.queries == []


def test_idna_domain(server: DNSServer) -> None:
    server.add("xn--bcher-kva.example", "MX", "10 mx.xn--bcher-kva.example.")
    server.add("mx.xn--bcher-kva.example", "A", "127.0.0.2")
    hosts = run(resolver(server).mail_exchangers("bücher.example"))
    assert hosts == [MXHost("mx.xn--bcher-kva.example", 10, ("127.0.0.2",))]


@pytest.mark.parametrize("domain", ["", ".", "a..example", "x" * 64 + ".example", "\u0080.example"])
def test_invalid_domain_is_permanent(server: DNSServer, domain: str) -> None:
    with pytest.raises(PermanentDNSError) as info:
        run(resolver(server).mail_exchangers(domain))
    assert info.value.status == "5.1.2"
    assert server.queries == []


def test_is_ip_literal() -> None:
    assert is_ip_literal("127.0.0.1")
    assert is_ip_literal("::1")
    assert not is_ip_literal("[127.0.0.1]")
    assert not is_ip_literal("example.org")
    assert not is_ip_literal("")


# -- limits ----------------------------------------------------------------------------------


def test_limits_on_hosts_and_addresses(server: DNSServer) -> None:
    count = MAX_MX_HOSTS + 5
    server.add("example.org", "MX", *(f"{i} mx{i}.example.org." for i in range(count)))
    for i in range(count):
        server.add(f"mx{i}.example.org", "A", f"127.0.{i}.1")
    # more addresses than fit in a UDP answer: truncated, asked again over TCP
    server.add("mx0.example.org", "A", *(f"127.1.{i // 200}.{i % 200 + 1}" for i in range(150)))
    hosts = run(resolver(server).mail_exchangers("example.org"))
    assert names(hosts) == [f"mx{i}.example.org" for i in range(MAX_MX_HOSTS)]
    assert len(hosts[0].addresses) == MAX_ADDRESSES_PER_HOST
    queried = {name for name, rdtype in server.queries if rdtype == "A"}
    assert f"mx{MAX_MX_HOSTS}.example.org" not in queried


# -- name server entries -------------------------------------------------------------------


def test_nameserver_with_port_and_several_servers(server: DNSServer) -> None:
    server.add("example.org", "MX", "10 mx.example.org.")
    server.add("mx.example.org", "A", "127.0.0.2")
    with DNSServer() as silent:
        silent.drop("example.org")
        silent.drop("mx.example.org")
        res = Resolver([silent.address, server.address], timeout=3.0)
        hosts = run(res.mail_exchangers("example.org"))
    assert names(hosts) == ["mx.example.org"]
    assert server.address == f"127.0.0.1:{server.port}"


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_name_server() -> None:
    with DNSServer(
        {"example.org": {"MX": "10 mx.example.org."}, "mx.example.org": {"AAAA": ["::1"]}},
        host="::1",
    ) as srv:
        assert srv.address == f"[::1]:{srv.port}"
        hosts = run(Resolver([srv.address], timeout=5.0).mail_exchangers("example.org"))
    assert hosts == [MXHost("mx.example.org", 10, ("::1",))]


def test_errors_share_a_base() -> None:
    assert issubclass(TemporaryDNSError, DNSFailure)
    assert issubclass(NullMXError, PermanentDNSError)
    assert TemporaryDNSError("x").status == "4.4.3"
    assert PermanentDNSError("x").status == "5.1.2"
    assert PermanentDNSError("x", status="5.4.4").status == "5.4.4"
    assert NullMXError("x").status == "5.1.10"


def test_invalid_timeout_rejected() -> None:
    with pytest.raises(ValueError):
        Resolver(["127.0.0.1"], timeout=0)


# -- the test server itself ----------------------------------------------------------------


def test_server_survives_garbage(server: DNSServer) -> None:
    server.add("example.org", "A", "127.0.0.2")
    host, port = "127.0.0.1", server.port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for junk in (b"", b"\x00", b"\xff" * 40, bytes(range(256))):
            udp.sendto(junk, (host, port))
    with socket.create_connection((host, port), timeout=5) as tcp:
        tcp.sendall(struct.pack("!H", 5) + b"\x01\x02\x03\x04\x05")
        tcp.sendall(b"\x00")  # half a length prefix, then close
    query = dns.message.make_query("example.org", "A")
    reply = dns.query.udp(query, host, port=port, timeout=5)
    assert reply.rcode() == dns.rcode.NOERROR
    assert [r.to_text() for r in reply.answer[0]] == ["127.0.0.2"]
    reply = dns.query.tcp(query, host, port=port, timeout=5)
    assert reply.flags & dns.flags.AA
    assert [r.to_text() for r in reply.answer[0]] == ["127.0.0.2"]


def test_server_nodata_nxdomain_and_cname() -> None:
    records = {"a.example": {"CNAME": "b.example."}, "b.example": {"A": ["127.0.0.3"]}}
    with DNSServer(records) as srv:
        srv.add("c.example", "CNAME", "nowhere.example.")
        ask = lambda name, rdtype: dns.query.udp(  # noqa: E731
            dns.message.make_query(name, rdtype), "127.0.0.1", port=srv.port, timeout=5
        )
        reply = ask("a.example", "A")
        assert [rrset.rdtype for rrset in reply.answer] == [5, 1]
        reply = ask("b.example", "MX")
        assert reply.rcode() == dns.rcode.NOERROR and reply.answer == []
        assert ask("nowhere.example", "A").rcode() == dns.rcode.NXDOMAIN
        assert ask("c.example", "A").rcode() == dns.rcode.NXDOMAIN
        assert srv.wait_for_query("C.example.", "A", timeout=1)
        assert not srv.wait_for_query("d.example", timeout=0.05)
        assert srv.queries[0] == ("a.example", "A")
    srv.stop()  # a second stop does nothing
