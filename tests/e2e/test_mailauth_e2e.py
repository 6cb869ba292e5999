"""Mail authentication and inbound policy in the real server: ``taube serve`` with a DNS server
on loopback, clients from 127.0.0.2 and 127.0.0.3 (outside trusted_networks, which is
127.0.0.1 alone here) and from 127.0.0.1 (trusted), real smtplib sessions.

SPF, DKIM, DMARC with the Authentication-Results header and the removal of forged ones; DNSBL
with the postmaster still reachable; greylisting; per-client rates; DKIM signing of trusted mail
checked by dkimpy and by Perl's Mail::DKIM."""

from __future__ import annotations

import re
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dnsserver import DNSServer
from tests.e2e.conftest import TaubeServer, wait_for
from tests.mailauth import message, rsa_key, sign, txt
from tests.unit.test_dkim_verifiers import dkimpy_results, mail_dkim

OUTSIDE = "127.0.0.2"  # SPF allows it for sender.example
STRANGER = "127.0.0.3"  # allowed by nobody
KEY = rsa_key("sender.example", "s1")


@pytest.fixture
def dns() -> Iterator[DNSServer]:
    with DNSServer() as server:
        server.add("sender.example", "TXT", txt("v=spf1 ip4:127.0.0.2 -all"))
        server.add("_dmarc.sender.example", "TXT", txt("v=DMARC1; p=reject; adkim=r; aspf=r"))
        server.add("soft.example", "TXT", txt("v=spf1 ~all"))
        KEY.publish(server)
        # A DNS block list listing 127.0.0.3 with a reason (RFC 5782: reversed address).
        server.add("3.0.0.127.bl.test", "A", "127.0.0.2")
        server.add("3.0.0.127.bl.test", "TXT", txt("listed for testing"))
        yield server


def start(tmp_path: Path, dns: DNSServer, checks: str, smtp: str = "") -> TaubeServer:
    server = TaubeServer(
        tmp_path, trusted=("127.0.0.1/32",), smtp_toml=smtp,
        extra_toml=(f'[dns]\nnameservers = ["{dns.address}"]\ntimeout = "2s"\n'
                    f'[delivery]\nrelayhost = "[127.0.0.1]:9"\n[checks]\n{checks}\n'))
    server.add_user("alice@example.test")
    server.cli("alias", "add", "postmaster@example.test", "alice@example.test")
    return server.start()


def smtp_from(server: TaubeServer, source: str) -> smtplib.SMTP:
    client = smtplib.SMTP(server.host, server.port, source_address=(source, 0), timeout=15)
    client.ehlo("client.sender.example")
    return client


def stored(server: TaubeServer, user: str = "alice") -> list[bytes]:
    new = server.data_dir / "mail" / "example.test" / user / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.exists() else []


def header_fields(data: bytes) -> list[bytes]:
    """The header section's fields, unfolded, without the Return-Path line."""
    head = data.split(b"\r\n\r\n", 1)[0]
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b" " + line.strip()
        else:
            fields.append(line)
    return fields[1:] if fields and fields[0].startswith(b"Return-Path:") else fields


def test_authentication_results_and_forged_ones_removed(tmp_path: Path, dns: DNSServer) -> None:
    server = start(tmp_path, dns, 'spf = "enforce"\ndkim = "tag"\narc = "tag"\ndmarc = "enforce"')
    try:
        extra = (b"Authentication-Results: mail.example.test; dkim=pass header.d=bank.example\r\n"
                 b"Authentication-Results: other.example; spf=fail smtp.mailfrom=x.example\r\n")
        signed = sign(message("Sender <a@sender.example>", extra=extra), KEY)
        with smtp_from(server, OUTSIDE) as client:
            client.sendmail("a@sender.example", ["alice@example.test"], signed)
        (data,) = wait_for(lambda: stored(server), what="the delivered message")
        fields = header_fields(data)
        ours = [f for f in fields if f.lower().startswith(b"authentication-results: mail.example.test;")]
        assert len(ours) == 1, fields
        result = ours[0].decode()
        assert "spf=pass smtp.mailfrom=sender.example" in result
        assert re.search(r"; dkim=pass header\.d=sender\.example [^;]*header\.s=s1[;\s]", result)
        assert "; arc=none" in result
        assert re.search(r"; dmarc=pass [^;]*header\.from=sender\.example", result)
        assert b"bank.example" not in data  # the forged one is gone
        assert any(f.startswith(b"Authentication-Results: other.example;") for f in fields)
        # Our header is above our Received; the message still verifies with dkimpy.
        names = [f.split(b":", 1)[0].lower() for f in fields]
        assert names.index(b"authentication-results") < names.index(b"received")
        body_start = data.index(b"\r\n") + 2
        assert dkimpy_results(data[body_start:], dns) == [True]
    finally:
        server.stop()


def test_spf_fail_enforced_at_rcpt_and_dmarc_reject(tmp_path: Path, dns: DNSServer) -> None:
    server = start(tmp_path, dns, 'spf = "enforce"\ndkim = "tag"\ndmarc = "enforce"')
    try:
        with smtp_from(server, STRANGER) as client:
            assert client.mail("a@sender.example")[0] == 250
            code, text = client.rcpt("alice@example.test")
            assert (code, text[:6]) == (550, b"5.7.23"), text
            assert b"sender.example" in text
            # RFC 5321 4.5.1: the postmaster can still be reached.
            assert client.rcpt("postmaster@example.test")[0] == 250
            client.rset()
            # SPF softfail is no refusal.
            assert client.mail("a@soft.example")[0] == 250
            assert client.rcpt("alice@example.test")[0] == 250
            client.rset()
            # From: sender.example without its signature or its SPF: DMARC p=reject after DATA.
            assert client.mail("bounce@soft.example")[0] == 250
            assert client.rcpt("alice@example.test")[0] == 250
            code, text = client.data(message("a@sender.example"))
            assert (code, text[:5]) == (550, b"5.7.1"), text
        assert stored(server) == []  # the 550 was the final answer: nothing stored
        assert not list((server.data_dir / "queue" / "messages").glob("*"))
        assert "dmarc" in server.log.lower()
    finally:
        server.stop()


def test_dnsbl_listed_client_refused_but_postmaster_reachable(tmp_path: Path, dns: DNSServer) -> None:
    server = start(tmp_path, dns, 'dnsbl = ["bl.test"]')
    try:
        with smtp_from(server, STRANGER) as client:
            assert client.mail("someone@elsewhere.example")[0] == 250
            code, text = client.rcpt("alice@example.test")
            assert code == 554
            assert text == (b"5.7.1 Service unavailable; client [127.0.0.3] blocked using bl.test; "
                            b"listed for testing")
            assert client.rcpt("postmaster@example.test")[0] == 250
        with smtp_from(server, OUTSIDE) as client:  # not listed
            client.sendmail("someone@elsewhere.example", ["alice@example.test"], message())
        assert ("2.0.0.127.bl.test", "A") in dns.queries
    finally:
        server.stop()


def test_greylisting_first_early_and_late_attempts(tmp_path: Path, dns: DNSServer) -> None:
    server = start(tmp_path, dns, 'greylist = true\ngreylist_delay = "2s"')
    try:
        first = time.monotonic()
        with smtp_from(server, OUTSIDE) as client:
            assert client.mail("a@sender.example")[0] == 250
            assert client.rcpt("alice@example.test") == (451, b"4.7.1 Greylisted, try again later")
        with smtp_from(server, OUTSIDE) as client:  # too early: still greylisted
            assert client.mail("a@sender.example")[0] == 250
            assert client.rcpt("alice@example.test")[0] == 451
        # A trusted client is never greylisted.
        with smtp_from(server, "127.0.0.1") as client:
            client.sendmail("a@sender.example", ["alice@example.test"], message())
        assert len(stored(server)) == 1
        time.sleep(max(0.0, first + 2.2 - time.monotonic()))  # the configured delay itself
        with smtp_from(server, OUTSIDE) as client:
            client.sendmail("a@sender.example", ["alice@example.test"], message())
        assert len(stored(server)) == 2  # stored once, after the delay
    finally:
        server.stop()


def test_rate_limits(tmp_path: Path, dns: DNSServer) -> None:
    server = start(tmp_path, dns, "", smtp="max_message_rate = 2\nmax_connection_rate = 3")
    try:
        with smtp_from(server, OUTSIDE) as client:
            for _ in range(2):
                assert client.mail("a@sender.example")[0] == 250
                client.rset()
            code, text = client.mail("a@sender.example")
            assert (code, text) == (450, b"4.7.1 Error: too many messages from 127.0.0.2")
        with smtp_from(server, OUTSIDE):
            pass
        with smtp_from(server, OUTSIDE):
            pass
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP(server.host, server.port, source_address=(OUTSIDE, 0), timeout=15)
        assert refused.value.smtp_code == 421
        # Trusted clients are exempt.
        for _ in range(5):
            with smtp_from(server, "127.0.0.1") as client:
                assert client.mail("a@sender.example")[0] == 250
    finally:
        server.stop()


def test_trusted_mail_is_signed_and_verifies(tmp_path: Path, dns: DNSServer) -> None:
    server = start(tmp_path, dns, "")
    try:
        made = server.cli("dkim", "keygen", "example.test", "--selector", "t1")
        name, _, record = made.stdout.strip().partition(" IN TXT ")
        assert name == "t1._domainkey.example.test."
        dns.add(name, "TXT", record)
        body = b"From: Alice <alice@example.test>\r\nTo: alice@example.test\r\nSubject: signed\r\n" \
               b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n\r\nHello.\r\n"
        with smtp_from(server, "127.0.0.1") as client:
            client.sendmail("alice@example.test", ["alice@example.test"], body)
        (data,) = wait_for(lambda: stored(server), what="the delivered message")
        assert header_fields(data)[0].startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;")
        content = data[data.index(b"\r\n") + 2:]  # without Return-Path, as a receiver sees it
        assert dkimpy_results(content, dns) == [True]
        assert mail_dkim(content, dns)[0] == "pass"
        # The same From: from outside is not ours to sign.
        with smtp_from(server, OUTSIDE) as client:
            client.sendmail("x@elsewhere.example", ["alice@example.test"], body.replace(b"signed", b"outside"))
        outside = wait_for(lambda: [m for m in stored(server) if b"outside" in m], what="the second message")
        assert b"DKIM-Signature" not in outside[0]
    finally:
        server.stop()
