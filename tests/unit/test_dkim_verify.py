"""DKIM verification (RFC 6376 section 6) against the loopback DNS server, with messages signed
by dkimpy using keys made in the test: one result per signature."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from taube.policy import dkim as verifier
from taube.policy.dkim import DKIMCheck, DKIMResult
from taube.policy.pipeline import Pipeline
from tests.dnsserver import DNSServer
from tests.mailauth import (CLIENT, FAST, SLACK, TRUSTED, Key, checks, client, context,
                            ed25519_key, header_of, message, rsa_key, rsa_record, run, sign,
                            trusted, txt)


@pytest.fixture
def server() -> Iterator[DNSServer]:
    with DNSServer() as srv:
        yield srv


@pytest.fixture
def rsa(server: DNSServer) -> Key:
    key = rsa_key()
    key.publish(server)
    return key


@pytest.fixture
def ed(server: DNSServer) -> Key:
    key = ed25519_key()
    key.publish(server)
    return key


def verify(server: DNSServer, data: bytes, *, timeout: float = 3.0, loads: list[int] | None = None,
           **options: float) -> tuple[DKIMResult, ...]:
    async def load() -> bytes:
        if loads is not None:
            loads.append(1)
        return data

    return run(verifier.verify(client(server, timeout), header_of(data), load=load,
                               **options))  # type: ignore[arg-type]


def results(found: tuple[DKIMResult, ...]) -> list[tuple[str, str, str]]:
    return [(r.result, r.domain, r.selector) for r in found]


def test_rsa_sha256_passes(server: DNSServer, rsa: Key) -> None:
    found = verify(server, sign(message(), rsa))
    assert results(found) == [("pass", "example.org", "rsa")]
    assert found[0].algorithm == "rsa-sha256"
    assert str(found[0].authres()) == ("dkim=pass header.d=example.org header.a=rsa-sha256 "
                                       "header.s=rsa")


def test_ed25519_sha256_passes(server: DNSServer, ed: Key) -> None:
    found = verify(server, sign(message(), ed))
    assert results(found) == [("pass", "example.org", "ed")]
    assert found[0].algorithm == "ed25519-sha256"


def test_every_signature_has_its_result(server: DNSServer, rsa: Key, ed: Key) -> None:
    other = ed25519_key("example.net", "x")  # not published
    data = sign(sign(sign(message(), rsa), ed), other)
    assert results(verify(server, data)) == [
        ("permerror", "example.net", "x"), ("pass", "example.org", "ed"),
        ("pass", "example.org", "rsa")]


def test_tampered_body_fails(server: DNSServer, rsa: Key) -> None:
    data = sign(message(), rsa).replace(b"Hello, Bob.", b"Hello, Eve.")
    found = verify(server, data)
    assert results(found) == [("fail", "example.org", "rsa")]
    assert "body hash" in found[0].reason


def test_tampered_signed_header_fails(server: DNSServer, ed: Key) -> None:
    data = sign(message(), ed).replace(b"Subject: Greetings", b"Subject: Invoice")
    assert results(verify(server, data)) == [("fail", "example.org", "ed")]


def test_added_from_fails_because_from_is_oversigned(server: DNSServer, rsa: Key) -> None:
    signed = sign(message(), rsa)
    data = signed.replace(b"To: bob", b"From: mallory@example.com\r\nTo: bob")
    assert results(verify(server, data)) == [("fail", "example.org", "rsa")]


def test_body_length_limit_passes_but_is_noted(server: DNSServer, rsa: Key) -> None:
    """RFC 6376 8.2: with l= anything appended to the body is unsigned; the signature still
    verifies (the RFC's result is pass), but the header and the log say that l= was used."""
    data = sign(message(), rsa, length=True) + b"Appended by someone else\r\n"
    found = verify(server, data)
    assert results(found) == [("pass", "example.org", "rsa")]
    assert found[0].length == len(b"Hello, Bob.\r\n")
    assert "l=" in found[0].reason
    assert str(found[0].authres()) == ("dkim=pass (l=13) header.d=example.org "
                                       "header.a=rsa-sha256 header.s=rsa")


def test_unsigned_header_field_added_still_passes(server: DNSServer, rsa: Key) -> None:
    data = sign(message(), rsa).replace(b"To: bob", b"X-Mailing-List: yes\r\nTo: bob")
    assert results(verify(server, data)) == [("pass", "example.org", "rsa")]


def test_no_signature_is_none_and_the_message_is_not_read(server: DNSServer) -> None:
    loads: list[int] = []
    assert verify(server, message(), loads=loads) == ()
    assert loads == [] and server.queries == []


@pytest.mark.parametrize("field", [
    b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=rsa; h=from; bh=AAAA\r\n",  # no b=
    b"DKIM-Signature: v=1; a=rsa-md5; d=example.org; s=rsa; h=from; bh=AAAA; b=AAAA\r\n",
    b"DKIM-Signature: v=2; a=rsa-sha256; d=example.org; s=rsa; h=from; bh=AAAA; b=AAAA\r\n",
    b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; d=example.net; s=rsa\r\n",  # twice d=
    b"DKIM-Signature: this is no tag list\r\n",
    b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=rsa; h=from; l=; bh=AAAA; b=AAAA\r\n",
    # more digits than Python's int() takes (4300): a result, not a ValueError
    b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=rsa; h=from; bh=AAAA; b=AAAA; t="
    + b"9" * 5000 + b"\r\n",
    b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=rsa; h=from; bh=AAAA; b=AAAA; x="
    + b"9" * 5000 + b"\r\n",
    b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=rsa; h=from; bh=AAAA; b=AAAA; "
    b"i=@example.net\r\n",  # i= outside d=
    b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=rsa; h=from; bh=AAAA; b=AAAA; "
    b"x=1000\r\n",  # expired
    b"DKIM-Signature: v=1; a=rsa-sha256; d=exa mple.org; s=r/sa; h=from; bh=AAAA; b=AAAA\r\n",
])
def test_malformed_signature_is_neutral(server: DNSServer, rsa: Key, field: bytes) -> None:
    found = verify(server, field + message())
    assert [r.result for r in found] == ["neutral"]
    assert found[0].reason


def test_malformed_signature_next_to_a_good_one(server: DNSServer, rsa: Key) -> None:
    data = b"DKIM-Signature: garbage\r\n" + sign(message(), rsa)
    assert [r.result for r in verify(server, data)] == ["neutral", "pass"]


@pytest.mark.parametrize(("record", "why"), [
    (None, "no key"),
    ("v=DKIM1; k=rsa; p=", "key revoked"),
    ("v=DKIM1; k=rsa; p=bm90IGEga2V5", "unusable key"),
    ("v=DKIM1; k=dsa; p=AAAA", "unusable key"),
    ("v=DKIM2; k=rsa; p=AAAA", "unusable key"),
    ("k=rsa; p=AAAA; p=BBBB", "unusable key"),
])
def test_missing_or_unusable_key_is_permerror(server: DNSServer, record: str | None,
                                              why: str) -> None:
    key = rsa_key(selector="broken")
    if record is not None:
        server.add(key.name, "TXT", txt(record))
    found = verify(server, sign(message(), key))
    assert [r.result for r in found] == ["permerror"]
    assert found[0].reason.startswith(why)


def test_short_rsa_key_is_permerror(server: DNSServer) -> None:
    """RFC 8301 3.2: RSA keys under 1024 bits are not accepted."""
    key = rsa_key(selector="short", bits=768)
    key.publish(server)
    assert [r.result for r in verify(server, sign(message(), key))] == ["permerror"]


def odd(bits: int, seed: int) -> int:
    return random.Random(seed).getrandbits(bits) | 1 << (bits - 1) | 1


@pytest.mark.parametrize(("modulus", "exponent"), [
    (odd(8192, 1), odd(8192, 2)),  # 2.5 s of pure Python pow() per signature
    (odd(16400, 3), 65537),  # more than OpenSSL takes (16384 bits)
], ids=["huge-exponent", "huge-modulus"])
def test_rsa_key_too_costly_to_use_is_permerror(server: DNSServer, modulus: int,
                                                exponent: int) -> None:
    """A signer's zone chooses its key: a huge public exponent makes one verification cost
    seconds of CPU in a shared worker thread (ten signatures per message, message after
    message). OpenSSL's bounds apply: a modulus of at most 16384 bits, an exponent of at most
    64 bits."""
    key = rsa_key(selector="costly")
    server.add(key.name, "TXT", txt(rsa_record(modulus, exponent)))
    started = time.monotonic()
    found = verify(server, sign(message(), key))
    assert [r.result for r in found] == ["permerror"]
    assert found[0].reason.startswith("unusable key")
    assert time.monotonic() - started < 1.0


def test_key_record_of_the_wrong_type_fails(server: DNSServer, ed: Key) -> None:
    """An Ed25519 signature checked against an RSA key record of that name: no valid
    signature, the message is not authenticated."""
    server.remove(ed.name)
    server.add(ed.name, "TXT", txt(rsa_key().record))
    assert [r.result for r in verify(server, sign(message(), ed))] == ["fail"]


def test_dropped_key_query_is_temperror_within_the_timeout(server: DNSServer, rsa: Key) -> None:
    server.drop(rsa.name)
    started = time.monotonic()
    found = verify(server, sign(message(), rsa), timeout=FAST)
    assert [r.result for r in found] == ["temperror"]
    assert time.monotonic() - started < SLACK


def test_servfail_is_temperror(server: DNSServer, rsa: Key) -> None:
    server.servfail(rsa.name)
    assert [r.result for r in verify(server, sign(message(), rsa))] == ["temperror"]


def test_keys_are_fetched_once_and_together(server: DNSServer, rsa: Key, ed: Key) -> None:
    data = sign(sign(sign(message(), rsa), ed), rsa)
    assert [r.result for r in verify(server, data)] == ["pass"] * 3
    assert sorted(q for q in server.queries if q[1] == "TXT") == [(ed.name, "TXT"),
                                                                   (rsa.name, "TXT")]


def test_only_the_first_signatures_are_verified(server: DNSServer, ed: Key) -> None:
    data = message()
    for _ in range(verifier.MAX_SIGNATURES + 3):
        data = sign(data, ed)
    assert [r.result for r in verify(server, data)] == ["pass"] * verifier.MAX_SIGNATURES


def test_a_verification_past_its_deadline_lets_its_thread_go(
        server: DNSServer, ed: Key, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten signatures over a body of megabytes: when the deadline passes, the session has its
    temperror, and the worker thread stops after the signature it is on instead of hashing
    the body for every remaining one while other sessions wait for it."""
    pool = ThreadPoolExecutor(max_workers=1)
    monkeypatch.setattr(verifier, "CRYPTO", pool)
    body = (b"x" * 70 + b" \t\r\n") * 40000  # 3 MB
    signed = sign(message(body=body), ed)
    field = signed[:signed.index(b"From:")]
    try:
        started = time.monotonic()
        assert [r.result for r in verify(server, signed)] == ["pass"]
        one = time.monotonic() - started  # one signature: the yardstick on this machine
        started = time.monotonic()
        found = verify(server, field * 9 + signed, deadline=one)
        pool.submit(int).result()  # the thread is free again
        freed = time.monotonic() - started
    finally:
        pool.shutdown(wait=True)
    assert "temperror" in [r.result for r in found]
    assert freed < 4 * one, f"{freed:.2f} s for one signature in {one:.2f} s"


def test_too_large_a_message_is_not_verified(server: DNSServer, ed: Key) -> None:
    data = sign(message(body=b"x" * 2000 + b"\r\n"), ed)
    assert [r.result for r in verify(server, data, max_size=1000)] == ["policy"]


def test_header_cut_inside_a_line_is_read_up_to_it(server: DNSServer, ed: Key) -> None:
    """The session keeps a bounded prefix of the message: a field cut off is not a field."""
    data = sign(message(), ed)
    cut = header_of(data)[:-10]
    found = run(verifier.verify(client(server), cut, load=lambda: _value(data)))
    assert [r.result for r in found] == ["pass"]


async def _value(data: bytes) -> bytes:
    return data


# -- the check ------------------------------------------------------------------------------

def test_check_records_results(server: DNSServer, rsa: Key) -> None:
    ctx = context(sign(message(), rsa))
    verdict = run(Pipeline([DKIMCheck(checks(dkim="tag"), client(server), trusted)]).data_end(ctx))
    assert not verdict.refused
    assert [r.result for r in ctx.tx.auth["dkim"]] == ["pass"]  # type: ignore[attr-defined]
    assert ctx.tx.results["dkim"] == "pass header.d=example.org header.s=rsa"


def test_check_reads_the_message_once_for_dkim_and_arc(server: DNSServer, rsa: Key) -> None:
    from taube.policy.arc import ARCCheck
    loads: list[int] = []
    ctx = context(sign(message(), rsa), loads=loads)
    pipeline = Pipeline([DKIMCheck(checks(dkim="tag"), client(server), trusted),
                         ARCCheck(checks(arc="tag"), client(server), trusted)])
    run(pipeline.data_end(ctx))
    assert len(loads) == 1


def test_check_without_the_message_is_temperror(server: DNSServer, rsa: Key) -> None:
    ctx = context(sign(message(), rsa))
    ctx.tx.message = None
    run(DKIMCheck(checks(dkim="tag"), client(server), trusted).data_end(ctx))
    assert [r.result for r in ctx.tx.auth["dkim"]] == ["temperror"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("ip", "user", "mode", "dmarc"), [
    (TRUSTED, None, "tag", "off"), (CLIENT, "alice@example.org", "tag", "off"),
    (CLIENT, None, "off", "off")])
def test_check_skips(server: DNSServer, rsa: Key, ip: str, user: str | None, mode: str,
                     dmarc: str) -> None:
    ctx = context(sign(message(), rsa), client_ip=ip, user=user)
    run(DKIMCheck(checks(dkim=mode, dmarc=dmarc), client(server), trusted).data_end(ctx))
    assert ctx.tx.auth == {} and server.queries == []


def test_check_runs_for_dmarc_alone(server: DNSServer, rsa: Key) -> None:
    ctx = context(sign(message(), rsa))
    run(DKIMCheck(checks(dkim="off", dmarc="tag"), client(server), trusted).data_end(ctx))
    assert [r.result for r in ctx.tx.auth["dkim"]] == ["pass"]  # type: ignore[attr-defined]
