"""The Authentication-Results field (RFC 8601): building it with authres and reading it back,
and the forged fields that claim our authserv-id (section 5)."""

from __future__ import annotations

import authres
import pytest

from taube.policy.arc import ARCResult
from taube.policy.authresults import AuthResultsCheck, authserv_id, build, forged, without
from taube.policy.dkim import DKIMResult
from taube.policy.dmarc import DMARCRecord, DMARCResult
from taube.policy.pipeline import Context
from taube.policy.spf import SPFResult
from tests.mailauth import (CLIENT, HOSTNAME, TRUSTED, checks, context, header_of, message, run,
                            trusted)

SPF = SPFResult("pass", "mailfrom", "example.org", CLIENT)
DKIM = (DKIMResult("pass", "example.org", "sel", "rsa-sha256"),
        DKIMResult("fail", "lists.example.com", "s1", "ed25519-sha256", "body hash mismatch"))
ARC = ARCResult("none", 0, "", CLIENT)
DMARC = DMARCResult("pass", "example.org", "reject", "none", "",
                    DMARCRecord("example.org", "reject"))
ALL = {"spf": SPF, "dkim": DKIM, "arc": ARC, "dmarc": DMARC}


def parse(line: bytes) -> authres.AuthenticationResultsHeader:
    text = line.decode("ascii").replace("\r\n\t", " ").rstrip("\r\n")
    return authres.all_features().parse(text)


# -- authserv-id ----------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    (b" mx.example.net; spf=pass smtp.mailfrom=example.org", "mx.example.net"),
    (b" MX.Example.NET; none", "mx.example.net"),
    (b" mx.example.net. ; none", "mx.example.net"),
    (b" mx.example.net 1; none", "mx.example.net"),  # with a version
    (b" mx.example.net/1; none", "mx.example.net"),
    (b" (our (nested) comment) mx.example.net; none", "mx.example.net"),
    (b' "mx.example.net"; none', "mx.example.net"),
    (b' "mx\\.example.net"; none', "mx.example.net"),
    (b"\r\n\tmx.example.net;\r\n\tdkim=pass", "mx.example.net"),  # folded
    (b" mx.example.net", "mx.example.net"),  # no results: malformed, still ours
    (b" mx.example.net;;;garbage(((", "mx.example.net"),
    (b" mx.example.net.evil.example; none", "mx.example.net.evil.example"),
    (b" evil.example; mx.example.net", "evil.example"),
    (b" (unclosed mx.example.net; none", ""),
    (b" ; none", ""),
    (b"", ""),
])
def test_authserv_id(value: bytes, expected: str) -> None:
    assert authserv_id(value) == expected


# -- forged fields --------------------------------------------------------------------------

OURS = b"Authentication-Results: mx.example.net;\r\n\tdkim=pass header.d=paypal.com\r\n"
OURS_MALFORMED = b"authentication-results:MX.EXAMPLE.NET spf=pass\r\n"
THEIRS = b"Authentication-Results: relay.example.com; spf=pass smtp.mailfrom=example.org\r\n"
ARC_RESULTS = b"ARC-Authentication-Results: i=1; mx.example.net; spf=pass\r\n"


def test_forged_fields_are_found_and_others_kept() -> None:
    data = message(extra=OURS + THEIRS + OURS_MALFORMED + ARC_RESULTS)
    header = header_of(data)
    ranges = forged(header, HOSTNAME)
    assert [header[a:b] for a, b in ranges] == [OURS, OURS_MALFORMED]
    assert without(data, ranges) == message(extra=THEIRS + ARC_RESULTS)
    assert without(header, ranges) == header_of(message(extra=THEIRS + ARC_RESULTS))


def test_forged_field_at_the_end_of_the_header_section() -> None:
    data = message().replace(b"\r\n\r\n", b"\r\n" + OURS.rstrip(b"\r\n") + b"\r\n\r\n", 1)
    assert without(data, forged(header_of(data), HOSTNAME)) == message()


def test_forged_field_after_many_others_is_found() -> None:
    """However many fields come first (the session bounds the section's octets, not its
    fields), a forged one further down is still found."""
    junk = b"".join(b"X-%d: a\r\n" % i for i in range(3000))
    header = header_of(message(extra=junk + OURS))
    assert [header[a:b] for a, b in forged(header, HOSTNAME)] == [OURS]


def test_forged_field_folded_before_its_colon_is_found() -> None:
    """A name, a line end, then the colon on a continuation line: not RFC 5322, but a lax
    reader takes it for the field, so it is ours to remove."""
    field = b"Authentication-Results\r\n : mx.example.net; dkim=pass\r\n"
    header = header_of(message(extra=field))
    assert [header[a:b] for a, b in forged(header, HOSTNAME)] == [field]


def test_nothing_forged() -> None:
    assert forged(header_of(message(extra=THEIRS)), HOSTNAME) == []
    assert forged(b"", HOSTNAME) == []


@pytest.mark.parametrize(("ranges", "expected"), [
    ([], b"0123456789"), ([(2, 4)], b"01456789"), ([(6, 8), (2, 4)], b"014589"),
    ([(2, 6), (4, 8)], b"0189"), ([(8, 20)], b"01234567"), ([(5, 5), (7, 3)], b"0123456789"),
])
def test_without(ranges: list[tuple[int, int]], expected: bytes) -> None:
    assert without(b"0123456789", ranges) == expected


# -- building -------------------------------------------------------------------------------

def test_build_parses_back() -> None:
    line = build(HOSTNAME, [SPF.authres(), *(r.authres() for r in DKIM), ARC.authres(),
                            DMARC.authres()])
    assert line.startswith(b"Authentication-Results: mx.example.net;\r\n\t")
    assert line.endswith(b"\r\n") and b"\r\n\r\n" not in line
    assert all(len(part) <= 78 for part in line.split(b"\r\n"))
    header = parse(line)
    assert header.authserv_id == "mx.example.net"
    found = [(r.method, r.result) for r in header.results]
    assert found == [("spf", "pass"), ("dkim", "pass"), ("dkim", "fail"), ("arc", "none"),
                     ("dmarc", "pass")]
    spf, dkim, _, arc, dmarc = header.results
    assert spf.smtp_mailfrom == "example.org"
    assert (dkim.header_d, dkim.header_s, dkim.header_a) == ("example.org", "sel", "rsa-sha256")
    assert arc.smtp_remote_ip == CLIENT
    assert dmarc.header_from == "example.org"


def test_values_that_are_no_tokens_are_left_out() -> None:
    """A d= from the message may not write clauses of its own into our field."""
    evil = DKIMResult("neutral", "x@evil.example; dmarc=pass", "s (1)", "rsa-sha256")
    header = parse(build(HOSTNAME, [evil.authres()]))
    assert [(r.method, r.result) for r in header.results] == [("dkim", "neutral")]
    assert header.results[0].header_d is None and header.results[0].header_s is None


def test_build_nothing() -> None:
    assert build(HOSTNAME, []) == b""


# -- the check ------------------------------------------------------------------------------

def run_check(ctx: Context, **modes: str) -> None:
    run(AuthResultsCheck(checks(**modes), HOSTNAME, trusted).data_end(ctx))


def test_one_field_with_the_methods_that_are_on() -> None:
    ctx = context(message(extra=OURS + THEIRS))
    ctx.tx.auth.update(ALL)
    ctx.tx.prepend.append(b"X-Taube-DMARC: quarantine\r\n")
    run_check(ctx, spf="enforce", dkim="tag", dmarc="tag")
    assert len(ctx.tx.prepend) == 2
    header = parse(ctx.tx.prepend[1])
    assert [r.method for r in header.results] == ["spf", "dkim", "dkim", "dmarc"]
    assert ctx.tx.drop == [(0, len(OURS))]


def test_no_signature_is_dkim_none() -> None:
    ctx = context(message())
    ctx.tx.auth["dkim"] = ()
    run_check(ctx, dkim="tag")
    assert ctx.tx.prepend == [b"Authentication-Results: mx.example.net;\r\n\tdkim=none\r\n"]


def test_all_off_adds_nothing_but_still_drops_forgeries() -> None:
    ctx = context(message(extra=THEIRS + OURS))
    ctx.tx.auth.update(ALL)
    run_check(ctx)
    assert ctx.tx.prepend == []
    assert ctx.tx.drop == [(len(THEIRS), len(THEIRS) + len(OURS))]


def test_trusted_client_gets_nothing_and_keeps_its_fields() -> None:
    ctx = context(message(extra=OURS), client_ip=TRUSTED)
    ctx.tx.auth.update(ALL)
    run_check(ctx, spf="tag", dkim="tag", arc="tag", dmarc="tag")
    assert ctx.tx.prepend == [] and ctx.tx.drop == []


def test_authenticated_client_gets_no_field_but_loses_forgeries() -> None:
    ctx = context(message(extra=OURS), user="alice@example.org")
    run_check(ctx, spf="tag", dkim="tag", arc="tag", dmarc="tag")
    assert ctx.tx.prepend == [] and ctx.tx.drop == [(0, len(OURS))]
