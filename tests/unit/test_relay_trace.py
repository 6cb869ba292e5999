"""Relay policy and the Received: header."""

from __future__ import annotations

import ipaddress
from datetime import datetime, timezone

from taube.policy.relay import RelayPolicy
from taube.proto.trace import received_header, with_protocol


def test_relay_policy() -> None:
    policy = RelayPolicy([ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")])
    assert policy.may_relay("127.0.0.1")
    assert policy.may_relay("::ffff:127.0.0.2")
    assert policy.may_relay("2001:db8::1")
    assert not policy.may_relay("192.0.2.1")
    assert policy.may_relay("192.0.2.1", authenticated=True)
    assert not policy.may_relay("not an ip")


def test_received_header() -> None:
    when = datetime(2026, 11, 22, 6, 0, 0, tzinfo=timezone.utc)
    h = received_header(helo="client.test\r\nX-Injected: 1", client_ip="192.0.2.1", hostname="mx.test",
                        protocol=with_protocol(esmtp=True), queue_id="ABC", when=when, recipient="a@b.test")
    assert h == (b"Received: from client.test??X-Injected: 1 ([192.0.2.1])\r\n"
                 b"\tby mx.test (taube) with ESMTP id ABC\r\n"
                 b"\tfor <a@b.test>; Sun, 22 Nov 2026 06:00:00 +0000\r\n")
    h2 = received_header(helo="c", client_ip="::1", hostname="mx.test", protocol="SMTP", queue_id="X",
                         when=when)
    assert h2.endswith(b"id X; Sun, 22 Nov 2026 06:00:00 +0000\r\n")
    assert with_protocol(esmtp=True, tls=True, auth=True) == "ESMTPSA"
    assert with_protocol(esmtp=True, utf8=True) == "UTF8SMTP"
