"""SPF (RFC 7208) against the loopback DNS server: check_host()'s results, the identity, the
look-up bridge, and the check at MAIL and RCPT (RFC 7372 5.7.23, the postmaster exception)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from taube.policy import spf as spf_module
from taube.policy.pipeline import Pipeline, Recipient
from taube.policy.spf import SPFCheck, SPFResult, check_host
from tests.dnsserver import DNSServer
from tests.mailauth import (CLIENT, FAST, HOSTNAME, SLACK, TRUSTED, checks, client, context, run,
                            trusted, txt)


@pytest.fixture
def server() -> Iterator[DNSServer]:
    with DNSServer() as srv:
        yield srv


def spf(server: DNSServer, sender: str = "bounce@example.org", *, ip: str = CLIENT,
        helo: str | None = "client.example.org", timeout: float = 3.0) -> SPFResult:
    return run(check_host(client(server, timeout), ip, sender, helo, receiver=HOSTNAME))


# -- check_host() ---------------------------------------------------------------------------

@pytest.mark.parametrize(("record", "expected"), [
    ("v=spf1 ip4:127.0.0.2 -all", "pass"),
    ("v=spf1 ip4:127.0.0.0/30 -all", "pass"),
    ("v=spf1 ip4:192.0.2.1 -all", "fail"),
    ("v=spf1 ip4:192.0.2.1 ~all", "softfail"),
    ("v=spf1 ip4:192.0.2.1 ?all", "neutral"),
    ("v=spf1 ip4:192.0.2.1", "neutral"),  # no match and no all: neutral (RFC 7208 4.7)
    ("v=spf1 ip4:192.0.2.x -all", "permerror"),  # a malformed mechanism (section 4.6)
    ("v=spf1 frobnicate -all", "permerror"),
    ("v=spf1 redirect=nowhere.example", "permerror"),  # redirect to no record (section 6.1)
])
def test_results(server: DNSServer, record: str, expected: str) -> None:
    server.add("example.org", "TXT", f'"{record}"')
    result = spf(server)
    assert (result.result, result.identity, result.domain) == (expected, "mailfrom", "example.org")


def test_no_record_is_none(server: DNSServer) -> None:
    server.add("example.org", "TXT", '"some-site-verification=abc"')
    assert spf(server).result == "none"


def test_nxdomain_is_none(server: DNSServer) -> None:
    assert spf(server, "x@nowhere.example").result == "none"


def test_two_records_are_permerror(server: DNSServer) -> None:
    """RFC 7208 4.5: more than one v=spf1 record."""
    server.add("example.org", "TXT", '"v=spf1 -all"', '"v=spf1 +all"')
    assert spf(server).result == "permerror"


def test_void_lookup_limit_is_permerror(server: DNSServer) -> None:
    """RFC 7208 4.6.4: more than two look-ups that find nothing."""
    server.add("example.org", "TXT",
               '"v=spf1 a:n1.example.org a:n2.example.org a:n3.example.org -all"')
    assert spf(server).result == "permerror"


def test_dns_lookup_limit_is_permerror(server: DNSServer) -> None:
    """RFC 7208 4.6.4: more than 10 terms that ask the DNS (include here), a redirect loop,
    more than 10 MX names: pyspf stops with permerror, never runs on."""
    includes = " ".join(f"include:i{i}.example.org" for i in range(11))
    server.add("example.org", "TXT", txt(f"v=spf1 {includes} -all"))
    for i in range(11):
        server.add(f"i{i}.example.org", "TXT", '"v=spf1 ip4:192.0.2.1 -all"')
    server.add("loop.example.org", "TXT", '"v=spf1 redirect=loop.example.org"')
    server.add("mx.example.org", "TXT", '"v=spf1 mx -all"')
    server.add("mx.example.org", "MX", *[f"{i} m{i}.example.org." for i in range(11)])
    assert spf(server).result == "permerror"
    assert spf(server, "a@loop.example.org").result == "permerror"
    assert spf(server, "a@mx.example.org").result == "permerror"
    assert len(server.queries) < 40


def test_mechanisms_that_ask_the_dns(server: DNSServer) -> None:
    server.add("example.org", "TXT", '"v=spf1 mx include:_spf.example.net -all"')
    server.add("example.org", "MX", "10 mx.example.org.")
    server.add("mx.example.org", "A", "192.0.2.25")
    server.add("_spf.example.net", "TXT", '"v=spf1 a:out.example.net -all"')
    server.add("out.example.net", "A", CLIENT)
    assert spf(server).result == "pass"
    assert spf(server, ip="192.0.2.25").result == "pass"
    assert spf(server, ip="192.0.2.26").result == "fail"
    assert ("out.example.net", "A") in server.queries


def test_ipv6_and_mapped_ipv4_clients(server: DNSServer) -> None:
    server.add("example.org", "TXT", '"v=spf1 ip6:2001:db8::/32 ip4:127.0.0.2 -all"')
    assert spf(server, ip="2001:db8::5").result == "pass"
    assert spf(server, ip="2001:db9::5").result == "fail"
    assert spf(server, ip="::ffff:127.0.0.2").result == "pass"


def test_null_sender_checks_the_helo_name(server: DNSServer) -> None:
    """RFC 7208 2.4: with MAIL FROM:<> the identity is postmaster@<HELO name>."""
    server.add("client.example.org", "TXT", '"v=spf1 ip4:127.0.0.2 -all"')
    server.add("example.org", "TXT", '"v=spf1 -all"')
    result = spf(server, "")
    assert (result.result, result.identity, result.domain) == ("pass", "helo", "client.example.org")
    assert str(result.authres()) == "spf=pass smtp.helo=client.example.org"


@pytest.mark.parametrize("sender", ["x@evil.example@example.org", '"x@evil.example"@example.org'])
def test_a_local_part_with_an_at_sign_checks_the_domain_after_the_last(server: DNSServer,
                                                                       sender: str) -> None:
    """A quoted local part may hold "@" (RFC 5321 4.1.2); pyspf splits at the first one, and
    would evaluate some other name while the result is reported for the sender's domain."""
    server.add("example.org", "TXT", '"v=spf1 ip4:127.0.0.2 -all"')
    result = spf(server, sender)
    assert (result.result, result.domain) == ("pass", "example.org")
    assert server.queries == [("example.org", "TXT")]


@pytest.mark.parametrize(("sender", "helo"), [
    ("user@[127.0.0.1]", "client.example.org"),  # an address literal
    ("user@localhost", "client.example.org"),  # not a multi-label name (RFC 7208 4.3)
    ("user@" + "a" * 64 + ".example", "client.example.org"),  # a label over 63 octets
    ("", "[127.0.0.2]"),  # null sender, HELO an address literal
    ("", "127.0.0.2"),  # ... or an address without its brackets: no domain (RFC 7208 2.3)
    ("user@192.0.2.1", "client.example.org"),  # all-numeric top label: no domain (RFC 3696 2)
    ("", None),
])
def test_no_valid_domain_is_none_without_a_query(server: DNSServer, sender: str,
                                                 helo: str | None) -> None:
    assert spf(server, sender, helo=helo).result == "none"
    assert server.queries == []


def test_dropped_query_is_temperror_within_the_timeout(server: DNSServer) -> None:
    server.add("example.org", "TXT", '"v=spf1 -all"')
    server.drop("example.org")
    started = time.monotonic()
    result = spf(server, timeout=FAST)
    assert result.result == "temperror"
    assert time.monotonic() - started < SLACK


def test_dropped_include_is_temperror(server: DNSServer) -> None:
    server.add("example.org", "TXT", '"v=spf1 include:slow.example -all"')
    server.drop("slow.example")
    assert spf(server, timeout=FAST).result == "temperror"


def test_servfail_is_temperror(server: DNSServer) -> None:
    server.servfail("example.org")
    assert spf(server).result == "temperror"


def test_the_whole_evaluation_has_a_deadline(server: DNSServer) -> None:
    """Each look-up may take the whole [dns] timeout; the evaluation stops at its deadline."""
    server.add("example.org", "TXT", '"v=spf1 include:slow.example -all"')
    server.drop("slow.example")
    started = time.monotonic()
    result = run(check_host(client(server, 10.0), CLIENT, "a@example.org", None, deadline=0.5))
    assert result.result == "temperror"
    assert time.monotonic() - started < 0.5 + SLACK


def test_slow_dns_in_many_sessions_does_not_hold_up_another(server: DNSServer) -> None:
    """Twenty sessions wait for a zone that never answers (an attacker's, say): pyspf's
    threads only wait for the event loop, and a twenty-first session's evaluation still
    finds one free at once."""
    server.add("example.org", "TXT", '"v=spf1 ip4:127.0.0.2 -all"')
    server.add("slow.example", "TXT", '"v=spf1 -all"')
    server.drop("slow.example")

    async def main() -> tuple[SPFResult, float]:
        dns = client(server, 3.0)
        slow = [asyncio.create_task(check_host(dns, CLIENT, f"a{i}@slow.example", None,
                                               deadline=3.0)) for i in range(20)]
        await asyncio.sleep(0.2)  # every slow evaluation holds its thread by now
        started = time.monotonic()
        fast = await check_host(dns, CLIENT, "a@example.org", None)
        elapsed = time.monotonic() - started
        assert {r.result for r in await asyncio.gather(*slow)} == {"temperror"}
        return fast, elapsed

    fast, elapsed = run(main())
    assert fast.result == "pass" and elapsed < 1.5


def test_waiting_for_a_thread_counts_against_the_deadline(
        server: DNSServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """When every thread is taken, the session still has its answer (temperror) by its
    deadline, and the evaluation that waited does not run after it."""
    server.add("example.org", "TXT", '"v=spf1 ip4:127.0.0.2 -all"')
    pool = ThreadPoolExecutor(max_workers=1)
    release = threading.Event()
    pool.submit(release.wait, 10)  # the only thread, taken
    monkeypatch.setattr(spf_module, "POOL", pool)
    try:
        started = time.monotonic()
        result = run(check_host(client(server), CLIENT, "a@example.org", None, deadline=0.3))
        elapsed = time.monotonic() - started
    finally:
        release.set()
        pool.shutdown(wait=True)
    assert result.result == "temperror" and elapsed < 0.3 + 1.0
    assert server.queries == []


def test_two_dns_clients_never_mix(server: DNSServer) -> None:
    """pyspf has one global look-up function; each evaluation asks its own client."""
    server.add("example.org", "TXT", '"v=spf1 ip4:127.0.0.2 -all"')
    with DNSServer() as other:
        other.add("example.org", "TXT", '"v=spf1 -all"')

        async def both() -> list[SPFResult]:
            ours, theirs = client(server), client(other)
            return list(await asyncio.gather(*(
                check_host(c, CLIENT, "a@example.org", None) for _ in range(4)
                for c in (ours, theirs))))

        results = run(both())
    assert [r.result for r in results] == ["pass", "fail"] * 4


# -- the check ------------------------------------------------------------------------------

def transaction(server: DNSServer, mode: str, *rcpts: Recipient, ip: str = CLIENT,
                user: str | None = None, sender: str = "bounce@example.org",
                dmarc: str = "off") -> tuple[list[str], SPFResult | None]:
    """MAIL then each RCPT through a pipeline with the SPF check: the RCPT verdicts' actions
    (with their replies) and the SPF result the transaction keeps."""
    check = SPFCheck(checks(spf=mode, dmarc=dmarc), HOSTNAME, client(server), trusted)
    pipeline = Pipeline([check])
    ctx = context(client_ip=ip, user=user, sender=sender)

    async def go() -> list[str]:
        assert not (await pipeline.mail(ctx)).refused
        out = []
        for rcpt in rcpts:
            ctx.tx.rcpt = rcpt
            verdict = await pipeline.rcpt(ctx)
            out.append(f"{verdict.action} {verdict.reply.code} {verdict.reply.enhanced} "
                       f"{verdict.reply.text}" if verdict.reply else verdict.action)
        return out

    verdicts = run(go())
    result = ctx.tx.auth.get("spf")
    assert result is None or isinstance(result, SPFResult)
    return verdicts, result


BOB = Recipient(address="bob@example.net", local="bob", domain="example.net")


def test_enforce_refuses_a_fail_at_rcpt(server: DNSServer) -> None:
    server.add("example.org", "TXT", '"v=spf1 ip4:192.0.2.1 -all exp=explain.example.org"')
    server.add("explain.example.org", "TXT", '"not you, %{i}"')
    verdicts, result = transaction(server, "enforce", BOB)
    assert verdicts == ["reject 550 5.7.23 SPF validation failed: example.org does not allow "
                        "[127.0.0.2] to send its mail"]
    assert result is not None and result.result == "fail"


def test_the_domains_explanation_cannot_forge_a_log_line(server: DNSServer) -> None:
    """exp= text is the sender's domain's (RFC 7208 6.2): it reaches the log, so line ends
    and other controls are taken out and its length is bounded."""
    server.add("example.org", "TXT", '"v=spf1 -all exp=explain.example.org"')
    server.add("explain.example.org", "TXT",
               '"not you\\013\\010reject client=[192-0-2-1] accepted\\000 "' + ' "x"' * 3000)
    _, result = transaction(server, "enforce", BOB)
    assert result is not None and result.result == "fail"
    assert result.explanation.startswith("not you reject client=[192-0-2-1] accepted x")
    assert len(result.explanation) <= 200
    assert all(" " <= c <= "~" for c in result.explanation)


@pytest.mark.parametrize("postmaster", [
    Recipient(address="postmaster", local="postmaster", domain=""),
    Recipient(address="Postmaster@example.net", local="Postmaster", domain="example.net"),
])
def test_enforce_lets_postmaster_through(server: DNSServer, postmaster: Recipient) -> None:
    """RFC 5321 4.5.1: mail to the postmaster must be accepted."""
    server.add("example.org", "TXT", '"v=spf1 -all"')
    verdicts, _ = transaction(server, "enforce", postmaster, BOB)
    assert verdicts[0] == "continue" and verdicts[1].startswith("reject 550 5.7.23")


@pytest.mark.parametrize("record", ['"v=spf1 ~all"', '"v=spf1 ?all"', '"v=spf1 bad -all"'])
def test_enforce_refuses_nothing_but_fail(server: DNSServer, record: str) -> None:
    server.add("example.org", "TXT", record)
    assert transaction(server, "enforce", BOB)[0] == ["continue"]


def test_enforce_never_refuses_a_temperror(server: DNSServer) -> None:
    server.servfail("example.org")
    verdicts, result = transaction(server, "enforce", BOB)
    assert verdicts == ["continue"] and result is not None and result.result == "temperror"


def test_tag_only_records(server: DNSServer) -> None:
    server.add("example.org", "TXT", '"v=spf1 -all"')
    verdicts, result = transaction(server, "tag", BOB)
    assert verdicts == ["continue"] and result is not None
    assert str(result.authres()) == "spf=fail smtp.mailfrom=example.org"


def test_dmarc_alone_evaluates_spf_but_never_refuses(server: DNSServer) -> None:
    server.add("example.org", "TXT", '"v=spf1 -all"')
    verdicts, result = transaction(server, "off", BOB, dmarc="enforce")
    assert verdicts == ["continue"] and result is not None and result.result == "fail"


def test_off_asks_nothing(server: DNSServer) -> None:
    server.add("example.org", "TXT", '"v=spf1 -all"')
    assert transaction(server, "off", BOB) == (["continue"], None)
    assert server.queries == []


@pytest.mark.parametrize(("ip", "user"), [(TRUSTED, None), (CLIENT, "alice@example.org")])
def test_trusted_and_authenticated_clients_are_not_checked(server: DNSServer, ip: str,
                                                           user: str | None) -> None:
    server.add("example.org", "TXT", '"v=spf1 -all"')
    assert transaction(server, "enforce", BOB, ip=ip, user=user) == (["continue"], None)
    assert server.queries == []
