"""The mail authentication checks together, as a session drives them: a Pipeline of
``authentication_checks`` with a real Context through MAIL, RCPT and the end of DATA, against
the loopback DNS server, for clients on other loopback addresses outside trusted_networks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import authres
import pytest

from taube.lookup import DNSClient
from taube.policy.authresults import without
from taube.policy.mailauth import authentication_checks
from taube.policy.pipeline import Context, Pipeline, Recipient, Verdict
from tests.dnsserver import DNSServer
from tests.mailauth import (FAST, HOSTNAME, SLACK, TRUSTED, Key, checks, client, context,
                            message, rsa_key, run, seal, sign, trusted)

BOB = Recipient(address="bob@example.net", local="bob", domain="example.net")
POSTMASTER = Recipient(address="postmaster", local="postmaster", domain="")
ON = {"spf": "enforce", "dkim": "tag", "arc": "tag", "dmarc": "enforce"}
FORGED = b"Authentication-Results: mx.example.net; dkim=pass header.d=example.org\r\n"


@pytest.fixture
def server() -> Iterator[DNSServer]:
    """example.org sends from 127.0.0.2 and signs with an RSA key, p=reject; lists.example.com
    sends from 127.0.0.3 and seals ARC sets."""
    with DNSServer() as srv:
        srv.add("example.org", "TXT", '"v=spf1 ip4:127.0.0.2 -all"')
        srv.add("_dmarc.example.org", "TXT", '"v=DMARC1; p=reject; rua=mailto:d@example.org"')
        srv.add("lists.example.com", "TXT", '"v=spf1 ip4:127.0.0.3 -all"')
        yield srv


@pytest.fixture
def key(server: DNSServer) -> Key:
    key = rsa_key()
    key.publish(server)
    return key


@dataclass
class Outcome:
    """What the session would do: the replies (action and code) of MAIL, each RCPT and the
    end of DATA, and the transaction's lines to add and octets to drop."""

    replies: list[str]
    ctx: Context

    def header(self) -> authres.AuthenticationResultsHeader:
        [line] = [p for p in self.ctx.tx.prepend if p.startswith(b"Authentication-Results:")]
        return authres.all_features().parse(line.decode().replace("\r\n\t", " ").strip())

    def results(self) -> list[str]:
        return [f"{r.method}={r.result}" for r in self.header().results]


def transaction(dns: DNSClient, data: bytes, *, modes: dict[str, str] = ON,
                rcpts: tuple[Recipient, ...] = (BOB,), **options: str | None) -> Outcome:
    pipeline = Pipeline(authentication_checks(checks(**modes), HOSTNAME, dns, trusted))
    ctx = context(data, **options)  # type: ignore[arg-type]

    def shown(verdict: Verdict) -> str:
        reply = verdict.reply
        return f"{verdict.action} {reply.code} {reply.enhanced}" if reply else verdict.action

    async def go() -> list[str]:
        replies = [shown(await pipeline.mail(ctx))]
        accepted = 0
        for rcpt in rcpts:
            ctx.tx.rcpt = rcpt
            verdict = await pipeline.rcpt(ctx)
            replies.append(shown(verdict))
            accepted += not verdict.refused
        if accepted:
            replies.append(shown(await pipeline.data_end(ctx)))
        return replies

    return Outcome(run(go()), ctx)


def test_authenticated_mail_passes_with_one_field(server: DNSServer, key: Key) -> None:
    data = sign(message(extra=FORGED), key)
    outcome = transaction(client(server), data)
    assert outcome.replies == ["continue", "continue", "continue"]
    assert outcome.results() == ["spf=pass", "dkim=pass", "arc=none", "dmarc=pass"]
    assert outcome.header().authserv_id == HOSTNAME
    assert set(outcome.ctx.tx.auth) == {"spf", "dkim", "arc", "dmarc"}  # the message let go
    assert without(data, outcome.ctx.tx.drop) == data.replace(FORGED, b"")


def test_spoofed_author_is_rejected_after_data(server: DNSServer) -> None:
    """Envelope from a domain that passes SPF, From: example.org (p=reject) unsigned."""
    outcome = transaction(client(server), message(), sender="news@lists.example.com",
                          client_ip="127.0.0.3")
    assert outcome.replies == ["continue", "continue", "reject 550 5.7.1"]
    assert outcome.ctx.tx.auth["dmarc"].disposition == "reject"  # type: ignore[attr-defined]


def test_spf_fail_is_refused_at_rcpt_but_not_for_the_postmaster(server: DNSServer) -> None:
    outcome = transaction(client(server), message(), client_ip="127.0.0.4",
                          rcpts=(BOB, POSTMASTER))
    assert outcome.replies == ["continue", "reject 550 5.7.23", "continue", "reject 550 5.7.1"]


def test_tampered_message_fails_dkim_and_dmarc(server: DNSServer, key: Key) -> None:
    data = sign(message(), key).replace(b"Hello, Bob.", b"Pay me, Bob.")
    outcome = transaction(client(server), data, sender="news@lists.example.com",
                          client_ip="127.0.0.3", modes={**ON, "dmarc": "tag"})
    assert outcome.replies == ["continue", "continue", "continue"]
    assert outcome.results() == ["spf=pass", "dkim=fail", "arc=none", "dmarc=fail"]


def test_mailing_list_with_an_arc_seal(server: DNSServer, key: Key) -> None:
    sealer = rsa_key("lists.example.com", "seal", bits=1024)
    sealer.publish(server)
    data = seal(sign(message(), key), sealer, "lists.example.com",
                "spf=pass smtp.mailfrom=example.org; dkim=pass header.d=example.org")
    outcome = transaction(client(server), data, sender="bounce@lists.example.com",
                          client_ip="127.0.0.3")
    assert outcome.results() == ["spf=pass", "dkim=pass", "arc=pass", "dmarc=pass"]


def test_only_the_methods_that_are_on(server: DNSServer, key: Key) -> None:
    outcome = transaction(client(server), sign(message(), key),
                          modes={"spf": "off", "dkim": "off", "arc": "off", "dmarc": "tag"})
    assert outcome.results() == ["dmarc=pass"]


def test_all_off_asks_nothing_and_still_drops_forgeries(server: DNSServer) -> None:
    outcome = transaction(client(server), message(extra=FORGED), modes={})
    assert outcome.replies == ["continue", "continue", "continue"]
    assert outcome.ctx.tx.prepend == [] and outcome.ctx.tx.drop == [(0, len(FORGED))]
    assert server.queries == []


@pytest.mark.parametrize(("ip", "user"), [(TRUSTED, None), ("127.0.0.5", "alice@example.org")])
def test_trusted_and_authenticated_clients_are_never_checked(server: DNSServer, ip: str,
                                                             user: str | None) -> None:
    outcome = transaction(client(server), message(), client_ip=ip, user=user)
    assert outcome.replies == ["continue", "continue", "continue"]
    assert outcome.ctx.tx.prepend == [] and server.queries == []


def test_a_dns_that_does_not_answer_never_refuses(server: DNSServer, key: Key) -> None:
    for name in ("example.org", key.name, "_dmarc.example.org"):
        server.drop(name)
    started = time.monotonic()
    outcome = transaction(client(server, FAST), sign(message(), key))
    assert outcome.replies == ["continue", "continue", "continue"]
    assert outcome.results() == ["spf=temperror", "dkim=temperror", "arc=none",
                                 "dmarc=temperror"]
    assert time.monotonic() - started < 3 * SLACK
