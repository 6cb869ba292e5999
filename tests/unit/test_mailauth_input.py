"""Hostile and malformed header sections: every mail authentication function gives a result,
never an exception, and a huge header section costs bounded work (property tests with
hypothesis, the DNS on loopback answering whatever is asked)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taube.lookup import DNSClient
from taube.policy import arc, dkim, dmarc
from taube.policy.authcommon import from_domain, header_fields
from taube.policy.authresults import authserv_id, forged, without
from tests.dnsserver import DNSServer
from tests.mailauth import CLIENT, HOSTNAME, message, rsa_key, run, sign
from tests.proto.fuzzing import examples

PIECES = [
    b"DKIM-Signature:", b"ARC-Seal:", b"ARC-Message-Signature:", b"ARC-Authentication-Results:",
    b"Authentication-Results:", b"From:", b"Subject: x", b" ", b"\t", b"\r\n", b"\n", b"\r",
    b"v=1;", b"i=1;", b"i=51;", b"cv=none;", b"cv=pass;", b"a=rsa-sha256;", b"a=ed25519-sha256;",
    b"d=example.org;", b"s=rsa;", b"h=from:subject;", b"bh=AAAA;", b"b=AAAA;", b"c=relaxed;",
    b"l=5;", b"x=1;", b"t=9999999999;", b"q=dns/txt;", b"=", b";", b":", b"(", b")", b'"', b"\\",
    b"@", b",", b"<alice@example.org>", b"mx.example.net", HOSTNAME.encode(), b"\xff\xfe",
    b"\x00", b"=?utf-8?q?=C3=A9?=", b"undisclosed:;", b"\xc3\xa9",
]
headers = st.lists(st.sampled_from(PIECES) | st.binary(max_size=8), max_size=60).map(b"".join)


@pytest.fixture(scope="module")
def server() -> Iterator[DNSServer]:
    with DNSServer() as srv:
        key = rsa_key()
        key.publish(srv)
        srv.add("_dmarc.example.org", "TXT", '"v=DMARC1; p=reject"')
        srv.add("example.org", "TXT", '"v=spf1 -all"')
        yield srv


async def everything(dns: DNSClient, header: bytes, body: bytes) -> None:
    data = header + b"\r\n" + body

    async def load() -> bytes:
        return data

    for result in await dkim.verify(dns, header, load=load):
        assert result.result in ("pass", "fail", "neutral", "policy", "temperror", "permerror")
        str(result.authres())
    chain = await arc.verify(dns, header, CLIENT, load=load)
    assert chain.result in ("pass", "fail", "none")
    str(chain.authres())
    verdict = await dmarc.check(dns, header, None, (), lambda: 0.5)
    assert verdict.result in ("pass", "fail", "none", "temperror", "permerror")
    str(verdict.authres())


@examples(200)
@given(header=headers, body=st.binary(max_size=64))
def test_any_header_section_gives_results(server: DNSServer, header: bytes, body: bytes) -> None:
    run(everything(DNSClient([server.address], 2.0), header, body))
    ranges = forged(header, HOSTNAME)
    assert all(header[a:b].lower().startswith(b"authentication-results") for a, b in ranges)
    assert len(without(header, ranges)) == len(header) - sum(b - a for a, b in ranges)
    for field in header_fields(header):
        authserv_id(field.value)
    assert from_domain(header_fields(header)).status in ("ok", "missing", "invalid")


@examples(100)
@given(cut=st.integers(min_value=0, max_value=2000), noise=st.binary(max_size=4))
def test_a_signed_message_cut_or_changed_anywhere(server: DNSServer, cut: int,
                                                  noise: bytes) -> None:
    """Results, never an exception; the message as signed still passes."""
    signed = sign(message(), rsa_key())
    cut %= len(signed) + 1
    changed = signed[:cut] + noise + signed[cut + len(noise):]
    end = changed.find(b"\r\n\r\n")
    header = changed if end < 0 else changed[:end + 2]

    async def load() -> bytes:
        return changed

    found = run(dkim.verify(DNSClient([server.address], 2.0), header, load=load))
    assert all(r.result in ("pass", "fail", "neutral", "permerror") for r in found)
    if changed == signed:
        assert [r.result for r in found] == ["pass"]


def test_huge_header_section_costs_bounded_work(server: DNSServer) -> None:
    signed = sign(message(), rsa_key())
    head = signed[:signed.index(b"\r\n\r\n") + 2]
    header = head * 3000  # about 2 MB: 18000 fields, 3000 signatures
    started = time.monotonic()

    async def load() -> bytes:
        return header + b"\r\n" + signed[len(head) + 2:]

    found = run(dkim.verify(DNSClient([server.address], 2.0), header, load=load))
    assert len(found) == dkim.MAX_SIGNATURES
    assert len(header_fields(header)) == 18000
    assert len(header_fields(header, ("From",))) == 3000
    assert from_domain(header_fields(header)).domains == ("example.org",)  # 3000 From: fields
    assert time.monotonic() - started < 30
