"""DMARC (RFC 7489): records, alignment, policy discovery against the loopback DNS server, and
the check at the end of DATA with SPF and DKIM results, tagging and enforcing."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from taube.policy.dkim import DKIMResult
from taube.policy.dmarc import (MAX_AUTHOR_DOMAINS, QUARANTINE_HEADER, DMARCCheck, DMARCRecord,
                                DMARCResult, aligned, check, evaluate, organizational_domain,
                                parse_record)
from taube.policy.pipeline import Pipeline
from taube.policy.spf import SPFResult
from tests.dnsserver import DNSServer
from tests.mailauth import (CLIENT, FAST, SLACK, TRUSTED, checks, client, context, header_of,
                            message, run, trusted)


@pytest.fixture
def server() -> Iterator[DNSServer]:
    with DNSServer() as srv:
        yield srv


def spf_result(result: str, domain: str = "example.org") -> SPFResult:
    return SPFResult(result, "mailfrom", domain, CLIENT)  # type: ignore[arg-type]


def dkim_result(result: str, domain: str = "example.org") -> DKIMResult:
    return DKIMResult(result, domain, "sel", "rsa-sha256")  # type: ignore[arg-type]


def never() -> float:
    raise AssertionError("pct=100 and pct=0 need no random number")


# -- records --------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    (b"v=DMARC1; p=reject", DMARCRecord("example.org", "reject")),
    (b"v=DMARC1;p=quarantine;sp=none;pct=20;adkim=s;aspf=s;rua=mailto:d@example.org",
     DMARCRecord("example.org", "quarantine", "none", 20, "s", "s")),
    (b"v=DMARC1; p=NONE; ", DMARCRecord("example.org", "none")),
    (b"v=DMARC1; p=reject; pct=150; adkim=x; aspf=", DMARCRecord("example.org", "reject")),
    (b"v=DMARC1; p=reject; pct=-5", DMARCRecord("example.org", "reject")),
    (b"v=DMARC1; p=reject; pct=" + b"9" * 5000, DMARCRecord("example.org", "reject")),  # int()
    (b"v=DMARC1; p=reject; pct=007", DMARCRecord("example.org", "reject", pct=7)),
    (b"v=DMARC1; p=reject; pct=000", DMARCRecord("example.org", "reject", pct=0)),
    (b"v=DMARC1; p=reject; pct=", DMARCRecord("example.org", "reject")),
    (b"v=DMARC1; p=bogus; rua=mailto:d@example.org", DMARCRecord("example.org", "none")),
    (b"v=DMARC1; rua=mailto:d@example.org", DMARCRecord("example.org", "none")),
    (b"v=DMARC1; p=reject; sp=bogus; rua=mailto:d@example.org", DMARCRecord("example.org", "none")),
    (b"v=DMARC1; p=bogus", None),
    (b"v=DMARC1", None),  # no p= and no rua=: invalid (RFC 7489 6.6.3)
    (b"v=DMARC1; p=reject; sp=bogus", None),
    (b"p=reject; v=DMARC1", None),  # v= must come first
    (b"v=DMARC2; p=reject", None),
    (b"v=dmarc1; p=reject", None),
    (b"v=DMARC1; p=reject; p=none", None),  # a tag twice
    (b"v=DMARC1; p", None),
    (b"", None),
])
def test_parse_record(text: bytes, expected: DMARCRecord | None) -> None:
    assert parse_record(text, "example.org") == expected


@pytest.mark.parametrize(("domain", "org"), [
    ("example.org", "example.org"), ("a.b.example.org", "example.org"),
    ("news.example.co.uk", "example.co.uk"), ("co.uk", "co.uk"),
    ("Mail.Example.TEST", "example.test"),  # an unknown TLD is a public suffix too
])
def test_organizational_domain(domain: str, org: str) -> None:
    assert organizational_domain(domain) == org


@pytest.mark.parametrize(("identifier", "author", "relaxed", "strict"), [
    ("example.org", "example.org", True, True),
    ("mail.example.org", "example.org", True, False),
    ("example.org", "news.example.org", True, False),
    ("a.example.org", "b.example.org", True, False),
    ("EXAMPLE.org.", "example.ORG", True, True),
    ("example.net", "example.org", False, False),
    ("evil-example.org", "example.org", False, False),
    ("a.co.uk", "b.co.uk", False, False),  # a public suffix is no shared organization
    ("", "example.org", False, False),
])
def test_alignment(identifier: str, author: str, relaxed: bool, strict: bool) -> None:
    assert aligned(identifier, author, "r") is relaxed
    assert aligned(identifier, author, "s") is strict


# -- evaluation -----------------------------------------------------------------------------

REJECT = DMARCRecord("example.org", "reject")


@pytest.mark.parametrize(("spf", "dkim", "expected"), [
    (spf_result("pass"), [], "pass"),
    (spf_result("pass", "bounces.example.org"), [], "pass"),  # relaxed
    (spf_result("pass", "example.net"), [], "fail"),  # not aligned
    (spf_result("fail"), [dkim_result("pass")], "pass"),
    (None, [dkim_result("fail"), dkim_result("pass", "mail.example.org")], "pass"),
    (None, [dkim_result("pass", "example.net")], "fail"),  # a third party's signature
    (spf_result("softfail"), [dkim_result("fail")], "fail"),
    (spf_result("neutral"), [dkim_result("neutral")], "fail"),
    (None, [], "fail"),
    (spf_result("temperror"), [], "temperror"),  # our DNS trouble is no fail
    (None, [dkim_result("temperror")], "temperror"),
    (spf_result("temperror", "example.net"), [], "fail"),  # could never have aligned
    (spf_result("permerror"), [dkim_result("permerror")], "fail"),
])
def test_evaluate(spf: SPFResult | None, dkim: list[DKIMResult], expected: str) -> None:
    result = evaluate("example.org", REJECT, spf, dkim, never)
    assert result.result == expected
    assert result.disposition == ("reject" if expected == "fail" else "none")


def test_strict_alignment() -> None:
    record = DMARCRecord("example.org", "reject", adkim="s", aspf="s")
    sub = [dkim_result("pass", "mail.example.org")]
    assert evaluate("example.org", record, spf_result("pass", "m.example.org"), sub,
                    never).result == "fail"
    assert evaluate("example.org", record, None, [dkim_result("pass")], never).result == "pass"


def test_subdomain_policy_applies_to_subdomains_found_at_the_organization() -> None:
    record = DMARCRecord("example.org", "reject", sp="quarantine")
    assert evaluate("news.example.org", record, None, [], never).disposition == "quarantine"
    assert evaluate("example.org", record, None, [], never).disposition == "reject"
    own = DMARCRecord("news.example.org", "reject", sp="none")  # its own record: p applies
    assert evaluate("news.example.org", own, None, [], never).disposition == "reject"


@pytest.mark.parametrize(("pct", "draw", "disposition"), [
    (100, None, "reject"), (0, None, "quarantine"),
    (50, 0.49, "reject"), (50, 0.5, "quarantine"), (1, 0.0, "reject"), (1, 0.01, "quarantine"),
])
def test_pct_sampling(pct: int, draw: float | None, disposition: str) -> None:
    """RFC 7489 6.6.4: messages not sampled get the next lower policy."""
    record = DMARCRecord("example.org", "reject", pct=pct)
    rng = never if draw is None else (lambda: draw)
    assert evaluate("example.org", record, None, [], rng).disposition == disposition
    quarantine = DMARCRecord("example.org", "quarantine", pct=pct)
    expected = "quarantine" if disposition == "reject" else "none"
    assert evaluate("example.org", quarantine, None, [], rng).disposition == expected


# -- discovery and the whole check ----------------------------------------------------------

def dmarc(server: DNSServer, author: str | None = "Alice <alice@example.org>", *,
          spf: SPFResult | None = None, dkim: tuple[DKIMResult, ...] = (),
          timeout: float = 3.0, extra: bytes = b"") -> DMARCResult:
    header = header_of(message(author, extra=extra))
    return run(check(client(server, timeout), header, spf, dkim, never))


def test_record_at_the_from_domain(server: DNSServer) -> None:
    server.add("_dmarc.example.org", "TXT", '"v=DMARC1; p=reject"')
    result = dmarc(server, spf=spf_result("pass"))
    assert (result.result, result.policy, result.from_domain) == ("pass", "reject", "example.org")
    assert str(result.authres()) == "dmarc=pass (p=reject dis=none) header.from=example.org"


def test_record_at_the_organizational_domain(server: DNSServer) -> None:
    server.add("_dmarc.example.org", "TXT", '"v=DMARC1; p=none; sp=reject"')
    result = dmarc(server, "alice@news.example.org")
    assert (result.result, result.policy, result.disposition) == ("fail", "reject", "reject")
    assert result.record is not None and result.record.domain == "example.org"
    assert ("_dmarc.news.example.org", "TXT") in server.queries


def test_other_txt_records_are_ignored(server: DNSServer) -> None:
    server.add("_dmarc.example.org", "TXT", '"google-site-verification=x"', '"v=DMARC1; p=reject"')
    assert dmarc(server).policy == "reject"


@pytest.mark.parametrize("records", [
    ['"v = DMARC1 ; p=reject"'],  # RFC 7489 6.4: white space around "=" and ";"
    ['"v=DMARC1; p=reject"', '"v=DMARC10; p=none"'],  # not a DMARC1 record: not a second one
    ['"v=DMARC1; p=reject"', '"v=DMARC1x"'],
])
def test_which_txt_records_are_dmarc_records(server: DNSServer, records: list[str]) -> None:
    server.add("_dmarc.example.org", "TXT", *records)
    assert (dmarc(server).result, dmarc(server).policy) == ("fail", "reject")


@pytest.mark.parametrize("records", [
    [], ['"v=spf1 -all"'], ['"v=DMARC1; p=reject"', '"v=DMARC1; p=none"'], ['"v=DMARC1; p=x"']])
def test_no_usable_record_is_none(server: DNSServer, records: list[str]) -> None:
    if records:
        server.add("_dmarc.example.org", "TXT", *records)
    result = dmarc(server)
    assert (result.result, result.disposition) == ("none", "none")
    assert str(result.authres()) == "dmarc=none header.from=example.org"


def test_several_records_at_the_from_domain_do_not_fall_back(server: DNSServer) -> None:
    server.add("_dmarc.news.example.org", "TXT", '"v=DMARC1; p=none"', '"v=DMARC1; p=quarantine"')
    server.add("_dmarc.example.org", "TXT", '"v=DMARC1; p=reject"')
    assert dmarc(server, "alice@news.example.org").result == "none"


def test_dropped_query_is_temperror_within_the_timeout(server: DNSServer) -> None:
    server.drop("_dmarc.example.org")
    started = time.monotonic()
    result = dmarc(server, timeout=FAST)
    assert (result.result, result.disposition) == ("temperror", "none")
    assert time.monotonic() - started < SLACK


def test_servfail_at_the_organizational_domain_is_temperror(server: DNSServer) -> None:
    server.servfail("_dmarc.example.org")
    assert dmarc(server, "alice@news.example.org").result == "temperror"


@pytest.mark.parametrize(("author", "extra", "expected"), [
    (None, b"", "none"),  # no From: at all
    ("undisclosed-recipients:;", b"", "permerror"),
    ("alice", b"", "permerror"),  # no domain
    ("alice@[127.0.0.1]", b"", "permerror"),
    ("alice@localhost", b"", "permerror"),
])
def test_from_field_problems(server: DNSServer, author: str | None, extra: bytes,
                             expected: str) -> None:
    """RFC 7489 6.6.1: no author domain to evaluate."""
    assert dmarc(server, author, extra=extra).result == expected
    assert server.queries == []


@pytest.mark.parametrize(("author", "extra"), [
    ("alice@example.org, eve@example.com", b""),  # two addresses in one field
    ("eve@example.com", b"From: alice@example.org\r\n"),  # two From: fields
    ("Eve <eve@example.com>, alice@example.org, nobody", b""),  # one of them no address
])
def test_several_authors_get_the_strictest_failing_policy(server: DNSServer, author: str,
                                                           extra: bytes) -> None:
    """RFC 7489 6.6.1: each author domain is evaluated and the strictest policy among those
    that fail applies; a second author must not turn a spoofed p=reject domain into a
    permerror that is let through."""
    server.add("_dmarc.example.org", "TXT", '"v=DMARC1; p=reject"')
    server.add("_dmarc.example.com", "TXT", '"v=DMARC1; p=none"')
    result = dmarc(server, author, extra=extra, dkim=(dkim_result("pass", "example.com"),))
    assert (result.result, result.from_domain, result.disposition) == ("fail", "example.org",
                                                                         "reject")
    assert "2 author domains" in result.reason


def test_several_authors_that_all_pass(server: DNSServer) -> None:
    server.add("_dmarc.example.org", "TXT", '"v=DMARC1; p=reject"')
    result = dmarc(server, "alice@example.org, bob@mail.example.org",
                   dkim=(dkim_result("pass"),))
    assert (result.result, result.from_domain) == ("pass", "example.org")


def test_too_many_author_domains_are_not_looked_up(server: DNSServer) -> None:
    authors = ", ".join(f"a@d{i}.example.org" for i in range(MAX_AUTHOR_DOMAINS + 1))
    assert dmarc(server, authors).result == "permerror"
    assert server.queries == []


def test_from_field_after_many_others_is_evaluated(server: DNSServer) -> None:
    """A From: below thousands of other fields is still the author: leaving it unseen would
    make the message "none" and let it through a p=reject."""
    server.add("_dmarc.example.org", "TXT", '"v=DMARC1; p=reject"')
    junk = b"".join(b"X-%d: a\r\n" % i for i in range(3000))
    result = dmarc(server, extra=junk)
    assert (result.result, result.disposition) == ("fail", "reject")
    doubled = dmarc(server, extra=junk + b"From: eve@example.com\r\n")
    assert (doubled.result, doubled.from_domain) == ("fail", "example.org")


def test_an_idn_author_is_looked_up_by_its_idna2008_name(server: DNSServer) -> None:
    """straße.example is xn--strae-oqa.example (IDNA2008, RFC 5891); Python's own codec
    (IDNA2003) makes it strasse.example, another domain, whose owner's policy (or lack of one)
    would then decide for the spoofed one."""
    server.add("_dmarc.xn--strae-oqa.example", "TXT", '"v=DMARC1; p=reject"')
    server.add("_dmarc.strasse.example", "TXT", '"v=DMARC1; p=none"')
    result = dmarc(server, "Alice <alice@Straße.example>")
    assert (result.result, result.from_domain, result.disposition) == (
        "fail", "xn--strae-oqa.example", "reject")


def test_folded_from_with_a_display_name(server: DNSServer) -> None:
    server.add("_dmarc.example.org", "TXT", '"v=DMARC1; p=reject"')
    result = dmarc(server, '"Alice, the Sender"\r\n <Alice@Example.ORG>',
                   dkim=(dkim_result("pass"),))
    assert (result.result, result.from_domain) == ("pass", "example.org")


def run_check(server: DNSServer, mode: str, auth: dict[str, object],
              data: bytes | None = None, **options: object) -> tuple[str, object, list[bytes]]:
    ctx = context(data or message(), **options)  # type: ignore[arg-type]
    ctx.tx.auth.update(auth)
    pipeline = Pipeline([DMARCCheck(checks(dmarc=mode), client(server), trusted, rng=never)])
    verdict = run(pipeline.data_end(ctx))
    shown = (f"{verdict.action} {verdict.reply.code} {verdict.reply.enhanced} {verdict.reply.text}"
             if verdict.reply else verdict.action)
    return shown, ctx.tx.auth.get("dmarc"), ctx.tx.prepend


def test_enforce_rejects_p_reject(server: DNSServer) -> None:
    server.add("_dmarc.example.org", "TXT", '"v=DMARC1; p=reject"')
    shown, result, prepend = run_check(server, "enforce", {"spf": spf_result("fail")})
    assert shown == ("reject 550 5.7.1 Message rejected: it fails the DMARC policy of "
                     "example.org")
    assert isinstance(result, DMARCResult) and result.disposition == "reject"
    assert prepend == []


def test_enforce_with_pct_0_never_rejects(server: DNSServer) -> None:
    server.add("_dmarc.example.org", "TXT", '"v=DMARC1; p=reject; pct=0"')
    shown, _, prepend = run_check(server, "enforce", {"spf": spf_result("fail")})
    assert shown == "continue" and prepend == [QUARANTINE_HEADER]


def test_enforce_quarantines(server: DNSServer) -> None:
    server.add("_dmarc.example.org", "TXT", '"v=DMARC1; p=quarantine"')
    shown, result, prepend = run_check(server, "enforce", {})
    assert shown == "continue" and prepend == [b"X-Taube-DMARC: quarantine\r\n"]
    assert isinstance(result, DMARCResult) and result.disposition == "quarantine"


def test_enforce_passes_aligned_mail(server: DNSServer) -> None:
    server.add("_dmarc.example.org", "TXT", '"v=DMARC1; p=reject"')
    auth = {"spf": spf_result("fail"), "dkim": (dkim_result("pass"),)}
    assert run_check(server, "enforce", auth)[::2] == ("continue", [])


def test_enforce_never_rejects_on_a_temperror(server: DNSServer) -> None:
    server.add("_dmarc.example.org", "TXT", '"v=DMARC1; p=reject"')
    shown, result, _ = run_check(server, "enforce", {"dkim": (dkim_result("temperror"),)})
    assert shown == "continue" and isinstance(result, DMARCResult)
    assert result.result == "temperror"


def test_tag_only_records(server: DNSServer) -> None:
    server.add("_dmarc.example.org", "TXT", '"v=DMARC1; p=reject"')
    shown, result, prepend = run_check(server, "tag", {"spf": spf_result("fail")})
    assert (shown, prepend) == ("continue", [])
    assert isinstance(result, DMARCResult) and result.disposition == "reject"


@pytest.mark.parametrize(("mode", "ip", "user"), [
    ("off", CLIENT, None), ("enforce", TRUSTED, None), ("enforce", CLIENT, "alice@example.org")])
def test_check_skips(server: DNSServer, mode: str, ip: str, user: str | None) -> None:
    server.add("_dmarc.example.org", "TXT", '"v=DMARC1; p=reject"')
    assert run_check(server, mode, {}, client_ip=ip, user=user) == ("continue", None, [])
    assert server.queries == []
