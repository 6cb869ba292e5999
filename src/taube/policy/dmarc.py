"""DMARC (RFC 7489) as a :class:`~taube.policy.pipeline.Check` at the end of DATA, after SPF and
DKIM: is the author's domain (From:) authenticated, and what does its owner ask for when not?

1. **The From: domain** (section 6.6.1): the domain of the From: address. No From: at all is
   **none** (there is nothing to evaluate); a From: without any address with a valid domain is
   **permerror**. Several addresses, or several From: fields (which RFC 5322 forbids, but a
   reader shows), are evaluated each, and the strictest policy among those that fail applies
   (section 6.6.1), so that a second author cannot hide a spoofed one; more than
   :data:`MAX_AUTHOR_DOMAINS` distinct domains are **permerror** without a look-up.
2. **The policy record** (section 6.6.3): the TXT records at ``_dmarc.<From domain>`` that
   start with ``v=DMARC1``; if there is none, those at ``_dmarc.<organizational domain>``, the
   From: domain's registrable domain by the public suffix list (section 3.2; the list bundled
   with ``publicsuffixlist``, never fetched). No record, several records, or a record without
   a valid ``p=`` (or with an invalid ``sp=``) and no ``rua=`` is **none**: DMARC does not
   apply. A look-up that times out or fails is **temperror**.
3. **Alignment** (section 3.1): the SPF result counts if it is "pass" for a domain aligned
   with the From: domain (``aspf``), a DKIM result if it is "pass" with a d= aligned with it
   (``adkim``). Relaxed ("r", the default): both have the same organizational domain; strict
   ("s"): they are equal. One aligned pass is **pass**; none is **fail**, unless an aligned
   identifier could not be checked for a temporary reason (SPF or DKIM temperror), which makes
   it **temperror**: our DNS trouble must never turn into a refusal.
4. **Policy** (section 6.6.4): on fail, ``p=`` applies, or ``sp=`` when the From: domain is a
   subdomain whose record was found at the organizational domain (section 6.3). ``pct=`` takes
   that share of the failing mail (the random source is injectable); the rest gets the next
   lower policy (reject becomes quarantine, quarantine becomes none).

``[checks] dmarc = "tag"`` records the result (``ctx.tx.auth["dmarc"]``, a
:class:`DMARCResult`). ``"enforce"`` also acts on it: a disposition of reject refuses the
message after DATA with ``550 5.7.1`` (nothing is stored); quarantine delivers it with the
header field ``X-Taube-DMARC: quarantine`` above the Received (in ``ctx.tx.prepend``), for
mail filters (Sieve, procmail) to file it as junk. Only a fail is ever acted on. Clients in
trusted_networks and authenticated clients are not checked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import authres.dmarc
from dkim.util import InvalidTagValueList, parse_tag_value
from publicsuffixlist import PublicSuffixList

from ..lookup import DNSClient, TempError
from ..proto.replies import Reply
from .authcommon import exempt, from_domain, header_fields, safe_token
from .dkim import DKIMResult
from .pipeline import CONTINUE, Check, Context, Verdict
from .spf import SPFResult

if TYPE_CHECKING:
    from ..config import ChecksSettings

__all__ = ["MAX_AUTHOR_DOMAINS", "QUARANTINE_HEADER", "DMARCCheck", "DMARCRecord", "DMARCResult", "aligned", "discover",
           "evaluate", "organizational_domain", "parse_record"]

log = logging.getLogger("taube.policy.dmarc")

Policy = Literal["none", "quarantine", "reject"]
Alignment = Literal["r", "s"]
Result = Literal["pass", "fail", "none", "temperror", "permerror"]

QUARANTINE_HEADER = b"X-Taube-DMARC: quarantine\r\n"
"""Put above the Received of a message whose DMARC disposition is quarantine (enforce mode)."""

_POLICIES: dict[bytes, Policy] = {b"none": "none", b"quarantine": "quarantine", b"reject": "reject"}
_LOWER: dict[Policy, Policy] = {"reject": "quarantine", "quarantine": "none", "none": "none"}
_MAX_RECORDS = 10  # TXT records at one name looked at; more is no DMARC deployment
_VERSION = re.compile(rb"v[ \t]*=[ \t]*DMARC1[ \t]*(?:;|$)")
_RANK: dict[Policy, int] = {"none": 0, "quarantine": 1, "reject": 2}
# Which result of several author domains the message gets when none fails: the least good.
_ORDER = {"temperror": 0, "permerror": 1, "none": 2, "pass": 3}

MAX_AUTHOR_DOMAINS = 10
"""Distinct From: domains evaluated at most; a message naming more is a permerror, as DMARCbis
(draft-ietf-dmarc-dmarcbis, "Extract Author Domain") warns that many invite a denial of service."""


@functools.cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()  # the bundled list: no network


def organizational_domain(domain: str) -> str:
    """RFC 7489 section 3.2: the public suffix plus one label; a domain that is itself a
    public suffix is its own."""
    return _psl().privatesuffix(domain.lower()) or domain.lower()


def aligned(identifier: str, author: str, mode: Alignment) -> bool:
    """Identifier alignment (RFC 7489 section 3.1): strict is equality, relaxed a shared
    organizational domain."""
    identifier, author = identifier.lower().rstrip("."), author.lower().rstrip(".")
    if not identifier or not author:
        return False
    if mode == "s" or identifier == author:
        return identifier == author
    return organizational_domain(identifier) == organizational_domain(author)


@dataclass(frozen=True, slots=True)
class DMARCRecord:
    """A policy record (RFC 7489 section 6.3) and ``domain``, the name it was found under
    (without ``_dmarc.``)."""

    domain: str
    p: Policy
    sp: Policy | None = None
    pct: int = 100
    adkim: Alignment = "r"
    aspf: Alignment = "r"


def parse_record(text: bytes, domain: str) -> DMARCRecord | None:
    """The record, or None when it is none or invalid (section 6.6.3): v=DMARC1 must be the
    first tag; a missing or unknown p=, or an unknown sp=, makes it invalid unless rua= names
    a report address (then it reads as p=none). An invalid pct=, adkim= or aspf= takes the
    default (section 6.3: 100, r, r)."""
    try:
        tags = parse_tag_value(text)
    except InvalidTagValueList:
        return None
    if next(iter(tags), None) != b"v" or tags[b"v"] != b"DMARC1":
        return None
    p = _POLICIES.get(tags.get(b"p", b"").lower())
    sp = _POLICIES.get(tags[b"sp"].lower()) if b"sp" in tags else None
    if p is None or (b"sp" in tags and sp is None):
        if b"mailto:" not in tags.get(b"rua", b"").lower():
            return None
        p, sp = "none", None
    return DMARCRecord(
        domain=domain, p=p, sp=sp, pct=_percent(tags.get(b"pct", b"100")),
        adkim="s" if tags.get(b"adkim", b"r").lower() == b"s" else "r",
        aspf="s" if tags.get(b"aspf", b"r").lower() == b"s" else "r")


def _percent(text: bytes) -> int:
    """pct= (section 6.3): 0 to 100, else the default 100. The length is looked at before
    int(), which refuses more than 4300 digits with a ValueError."""
    if not text.isdigit() or len(text.lstrip(b"0")) > 3:
        return 100
    value = int(text)
    return value if value <= 100 else 100


async def _records(dns: DNSClient, domain: str) -> list[bytes]:
    """The DMARC records at ``_dmarc.<domain>``: those whose first tag is v=DMARC1 (section
    6.6.3), white space allowed around "=" and before ";" (section 6.4's *WSP), and not a
    "v=DMARC10" that merely starts alike."""
    answer = await dns.query(f"_dmarc.{domain}", "TXT")
    return [t for t in answer.texts()[:_MAX_RECORDS] if _VERSION.match(t)]


async def discover(dns: DNSClient, author: str) -> tuple[DMARCRecord | None, str]:
    """Policy discovery (section 6.6.3) for the From: domain ``author``: the record, or None
    and why; raises :class:`TempError` when a look-up fails."""
    where = author
    found = await _records(dns, author)
    if not found:
        org = organizational_domain(author)
        if org != author:
            where, found = org, await _records(dns, org)
    if not found:
        return None, "no DMARC record"
    if len(found) > 1:
        return None, f"{len(found)} DMARC records at _dmarc.{where}"
    record = parse_record(found[0], where)
    return record, "" if record is not None else f"invalid DMARC record at _dmarc.{where}"


@dataclass(frozen=True, slots=True)
class DMARCResult:
    """The evaluation: ``policy`` is what the domain asks for a failing message (p or sp;
    "none" without a record), ``disposition`` what is to be done with this one after pct
    (only ever other than "none" for a fail), ``reason`` for the log."""

    result: Result
    from_domain: str = ""
    policy: Policy = "none"
    disposition: Policy = "none"
    reason: str = ""
    record: DMARCRecord | None = None

    @property
    def summary(self) -> str:
        return (f"{self.result} header.from={self.from_domain or '-'} p={self.policy} "
                f"dis={self.disposition}")

    def authres(self) -> authres.dmarc.DMARCAuthenticationResult:
        """The ``dmarc=`` clause of Authentication-Results (RFC 7489 section 11.2), the
        requested policy and the disposition as a comment, as OpenDMARC writes them."""
        comment = f"p={self.policy} dis={self.disposition}" if self.record is not None else None
        return authres.dmarc.DMARCAuthenticationResult(
            result=self.result, result_comment=comment, header_from=safe_token(self.from_domain))


def evaluate(author: str, record: DMARCRecord, spf: SPFResult | None,
             dkim: Sequence[DKIMResult], rng: Callable[[], float] = random.random) -> DMARCResult:
    """Alignment, result and disposition for the From: domain ``author`` under ``record``
    (sections 3.1, 4.2, 6.6.4); ``rng`` gives a number in [0, 1) for pct sampling."""
    spf_pass = spf is not None and spf.result == "pass" and aligned(spf.domain, author, record.aspf)
    dkim_pass = [r for r in dkim if r.result == "pass" and aligned(r.domain, author, record.adkim)]
    policy = record.sp if record.sp is not None and record.domain != author else record.p
    if spf_pass or dkim_pass:
        how = "spf" if spf_pass else f"dkim d={dkim_pass[0].domain}"
        return DMARCResult("pass", author, policy, "none", f"aligned {how}", record)
    unsure = ((spf is not None and spf.result == "temperror"
               and aligned(spf.domain, author, record.aspf))
              or any(r.result == "temperror" and aligned(r.domain, author, record.adkim)
                     for r in dkim))
    if unsure:
        return DMARCResult("temperror", author, policy, "none",
                           "an aligned identifier could not be checked", record)
    disposition = policy
    sampled = record.pct == 100 or (record.pct > 0 and rng() * 100 < record.pct)
    if policy != "none" and not sampled:
        disposition = _LOWER[policy]  # not sampled (section 6.6.4)
    return DMARCResult("fail", author, policy, disposition, "no aligned pass", record)


async def check(dns: DNSClient, header: bytes, spf: SPFResult | None, dkim: Sequence[DKIMResult],
                rng: Callable[[], float] = random.random) -> DMARCResult:
    """DMARC for a message's header section (see the module docstring). Never raises."""
    author = from_domain(header_fields(header, ("From",)))
    if author.status == "missing":
        return DMARCResult("none", reason=author.reason)
    if author.status == "invalid":
        return DMARCResult("permerror", reason=author.reason)
    domains = author.domains
    if len(domains) > MAX_AUTHOR_DOMAINS:
        return DMARCResult("permerror", domains[0],
                           reason=f"{len(domains)} author domains (at most {MAX_AUTHOR_DOMAINS})")
    results = await asyncio.gather(*(_one(dns, d, spf, dkim, rng) for d in domains))
    result = _strictest(results)
    several = f"{len(domains)} author domains" if len(domains) > 1 else ""
    reason = "; ".join(r for r in (result.reason, author.reason, several) if r)
    return dataclasses.replace(result, reason=reason) if reason != result.reason else result


async def _one(dns: DNSClient, author: str, spf: SPFResult | None, dkim: Sequence[DKIMResult],
               rng: Callable[[], float]) -> DMARCResult:
    """Discovery and evaluation for one author domain."""
    try:
        record, why = await discover(dns, author)
    except TempError as exc:
        return DMARCResult("temperror", author, reason=f"policy look-up: {exc}")
    if record is None:
        return DMARCResult("none", author, reason=why)
    return evaluate(author, record, spf, dkim, rng)


def _strictest(results: Sequence[DMARCResult]) -> DMARCResult:
    """Of several author domains' results (section 6.6.1): the fail with the strictest
    disposition (then policy), else the least good result; the first on a tie."""
    failing = [r for r in results if r.result == "fail"]
    if failing:
        return max(failing, key=lambda r: (_RANK[r.disposition], _RANK[r.policy]))
    return min(results, key=lambda r: _ORDER[r.result])


class DMARCCheck(Check):
    """DMARC at data_end, after :class:`~taube.policy.spf.SPFCheck` and
    :class:`~taube.policy.dkim.DKIMCheck` (see the module docstring); ``rng`` is the pct
    sampling's random source.

    Reads ``ctx.client_ip``, ``ctx.user``, ``ctx.tx.header``, ``ctx.tx.auth["spf"]`` and
    ``ctx.tx.auth["dkim"]``; writes ``ctx.tx.auth["dmarc"]`` (a :class:`DMARCResult`), the
    result ``"dmarc"`` for the log and, enforcing a quarantine, :data:`QUARANTINE_HEADER` to
    ``ctx.tx.prepend``. Enforcing a reject, its verdict is a 550 reject."""

    name = "dmarc"

    def __init__(self, checks: ChecksSettings, dns: DNSClient, trusted: Callable[[str], bool],
                 *, rng: Callable[[], float] = random.random) -> None:
        self.active = checks.dmarc != "off"
        self.enforce = checks.dmarc == "enforce"
        self.dns = dns
        self.trusted = trusted
        self.rng = rng

    async def data_end(self, ctx: Context) -> Verdict:
        if not self.active or exempt(ctx, self.trusted):
            return CONTINUE
        spf, dkim = ctx.tx.auth.get("spf"), ctx.tx.auth.get("dkim")
        dkim_results = ([r for r in dkim if isinstance(r, DKIMResult)]
                        if isinstance(dkim, tuple) else [])
        result = await check(self.dns, ctx.tx.header or b"",
                             spf if isinstance(spf, SPFResult) else None, dkim_results, self.rng)
        ctx.tx.auth["dmarc"] = result
        results = {"dmarc": result.summary}
        if not self.enforce:
            return Verdict.cont(results=results)
        if result.disposition == "reject":
            reply = Reply(code=550, enhanced="5.7.1",
                          text="Message rejected: it fails the DMARC policy of "
                               f"{result.from_domain}")
            return Verdict.reject(reply, reason=f"dmarc=fail p={result.policy} ({result.reason})",
                                  results=results)
        if result.disposition == "quarantine":
            ctx.tx.prepend.append(QUARANTINE_HEADER)
        return Verdict.cont(results=results)
