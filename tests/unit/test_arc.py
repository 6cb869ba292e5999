"""ARC chain validation (RFC 8617 section 5.2) against the loopback DNS server, with chains
sealed by dkimpy using keys made in the test."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator

import pytest

from taube.policy import arc
from taube.policy.arc import ARCCheck, ARCResult
from tests.dnsserver import DNSServer
from tests.mailauth import (CLIENT, FAST, TRUSTED, Key, checks, client, context, header_of,
                            message, rsa_key, rsa_record, run, seal, sign, trusted, txt)


@pytest.fixture
def server() -> Iterator[DNSServer]:
    with DNSServer() as srv:
        yield srv


@pytest.fixture
def forwarder(server: DNSServer) -> Key:
    key = rsa_key("lists.example.com", "arc")
    key.publish(server)
    return key


def validate(server: DNSServer, data: bytes, timeout: float = 3.0) -> ARCResult:
    async def load() -> bytes:
        return data

    return run(arc.verify(client(server, timeout), header_of(data), CLIENT, load=load))


def test_no_chain_is_none(server: DNSServer) -> None:
    result = validate(server, message())
    assert (result.result, result.instances) == ("none", 0)
    assert server.queries == []


def test_one_hop_passes(server: DNSServer, forwarder: Key) -> None:
    data = seal(message(), forwarder, "lists.example.com", "spf=pass smtp.mailfrom=example.org")
    result = validate(server, data)
    assert (result.result, result.instances) == ("pass", 1), result.reason
    assert str(result.authres()) == "arc=pass smtp.remote-ip=127.0.0.2"


def test_two_hops_pass(server: DNSServer, forwarder: Key) -> None:
    second = rsa_key("relay.example.net", "seal", bits=1024)
    second.publish(server)
    data = seal(message(), forwarder, "lists.example.com", "spf=pass smtp.mailfrom=example.org")
    data = seal(data, second, "relay.example.net", "arc=pass")
    result = validate(server, data)
    assert (result.result, result.instances) == ("pass", 2), result.reason


def test_changed_after_sealing_fails(server: DNSServer, forwarder: Key) -> None:
    data = seal(message(), forwarder, "lists.example.com", "spf=pass smtp.mailfrom=example.org")
    assert validate(server, data.replace(b"Hello, Bob.", b"Hello, Eve.")).result == "fail"


def test_incomplete_set_fails(server: DNSServer, forwarder: Key) -> None:
    data = seal(message(), forwarder, "lists.example.com", "spf=pass smtp.mailfrom=example.org")
    data = re.sub(rb"ARC-Seal:.*?\r\n(?! )", b"", data, count=1, flags=re.S)
    assert b"ARC-Seal" not in data
    assert validate(server, data).result == "fail"


def test_unknown_key_fails(server: DNSServer) -> None:
    data = seal(message(), rsa_key("nokey.example", "arc"), "nokey.example", "spf=none")
    assert validate(server, data).result == "fail"


def test_key_too_costly_to_use_fails_without_computing(server: DNSServer) -> None:
    """A seal's key with a huge public exponent (seconds of CPU per verification) is not used:
    the chain fails at once."""
    rng = random.Random(5)
    modulus, exponent = (rng.getrandbits(8192) | 1 << 8191 | 1, rng.getrandbits(8192) | 1)
    key = rsa_key("costly.example", "arc")
    server.add(key.name, "TXT", txt(rsa_record(modulus, exponent)))
    data = seal(message(), key, "costly.example", "spf=pass smtp.mailfrom=example.org")
    started = time.monotonic()
    result = validate(server, data)
    assert result.result == "fail" and "unusable key" in result.reason
    assert time.monotonic() - started < 1.0


def test_dropped_key_query_fails_within_the_timeout(server: DNSServer, forwarder: Key) -> None:
    server.drop(forwarder.name)
    data = seal(message(), forwarder, "lists.example.com", "spf=pass smtp.mailfrom=example.org")
    result = validate(server, data, timeout=FAST)
    assert result.result == "fail" and "look-up" in result.reason


def test_more_than_fifty_instances_fail(server: DNSServer) -> None:
    data = b"ARC-Seal: i=51; a=rsa-sha256; cv=pass; d=x.example; s=s; b=AAAA\r\n" + message()
    result = validate(server, data)
    assert (result.result, result.instances) == ("fail", 51)
    assert server.queries == []


def test_arc_field_without_instance_fails(server: DNSServer) -> None:
    data = b"ARC-Authentication-Results: lists.example.com; spf=pass\r\n" + message()
    assert validate(server, data).result == "fail"


def test_dkim_signature_alone_is_no_chain(server: DNSServer, forwarder: Key) -> None:
    assert validate(server, sign(message(), forwarder)).result == "none"


@pytest.mark.parametrize(("ip", "user", "mode"), [
    (TRUSTED, None, "tag"), (CLIENT, "alice@example.org", "tag"), (CLIENT, None, "off")])
def test_check_skips(server: DNSServer, forwarder: Key, ip: str, user: str | None,
                     mode: str) -> None:
    data = seal(message(), forwarder, "lists.example.com", "spf=pass smtp.mailfrom=example.org")
    ctx = context(data, client_ip=ip, user=user)
    run(ARCCheck(checks(arc=mode), client(server), trusted).data_end(ctx))
    assert ctx.tx.auth == {} and server.queries == []


def test_check_records_the_result(server: DNSServer, forwarder: Key) -> None:
    data = seal(message(), forwarder, "lists.example.com", "spf=pass smtp.mailfrom=example.org")
    ctx = context(data)
    verdict = run(ARCCheck(checks(arc="tag"), client(server), trusted).data_end(ctx))
    assert not verdict.refused and verdict.results == {"arc": "pass"}
    assert ctx.tx.auth["arc"] == ARCResult("pass", 1, "success", CLIENT)
