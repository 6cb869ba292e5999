"""SPF (RFC 7208) as a :class:`~taube.policy.pipeline.Check`: is the client allowed to send
mail for the MAIL FROM domain?

The identity is the domain of the MAIL FROM address, or the HELO name when the reverse path is
null (RFC 7208 sections 2.3 and 2.4). A domain that is no valid multi-label name (an address
literal, an over-long label) gives "none" without a look-up (section 4.3).

The record is evaluated by pyspf, which is synchronous and asks the DNS as it goes (include:,
a, mx, ptr, exists, redirect=). It runs in one of this module's worker threads (:data:`POOL`)
and its look-ups go through the :class:`DNSClient` on the event loop
(:meth:`DNSClient.blocking_lookup`): the ``[dns]`` servers, their timeout for each look-up, the
shared cache. The threads only wait for the loop, so there are enough of them for every
session at once: a zone that never answers holds up the sessions that ask it, not the others. pyspf has one module-level look-up function, ``spf.DNSLookup``; it is replaced
once by a dispatcher that hands each query to the client of the calling thread
(:data:`_THREAD`), so two configurations (two DNS clients) in one process never mix, and a
thread that is not ours gets pyspf's own look-up. The lookup limits of section 4.6.4 (10
mechanisms with look-ups, 2 void look-ups) are pyspf's; the whole evaluation is bounded too,
by ``deadline`` (section 4.6.4 asks for at least 20 seconds if there is such a limit), counted
from when the session asks, a wait for a free thread included: past it the result is
"temperror", as is any look-up that times out or fails (section 2.6.6), and an evaluation given
up on stops at its next look-up.

The evaluation is done at MAIL, not started there and awaited at RCPT: its result is a fact
of the transaction, and no task outlives the stage that started it (a transaction reset by
RSET leaves nothing running behind). A pipelining client has sent its RCPTs with the MAIL
anyway, and the answers wait for the MAIL reply whichever stage waits for the DNS.

``[checks] spf = "tag"`` only records the result (``ctx.tx.auth["spf"]``, an
:class:`SPFResult`; the Authentication-Results header shows it). ``"enforce"`` also refuses
each RCPT of a transaction whose result is "fail" with ``550 5.7.23`` (RFC 7372 section 3.2)
naming the domain, except RCPT TO:<postmaster> (any domain), which RFC 5321 section 4.5.1 says
must be accepted. Softfail, neutral and errors are never refused. Clients in trusted_networks
and authenticated clients are not checked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import authres
import spf

from ..lookup import DNSClient
from ..proto.replies import Reply
from .authcommon import ascii_domain, exempt, printable, safe_token
from .pipeline import CONTINUE, Check, Context, Recipient, Verdict

if TYPE_CHECKING:
    from ..config import ChecksSettings

__all__ = ["DEADLINE", "POOL", "SPFCheck", "SPFResult", "check_host"]

log = logging.getLogger("taube.policy.spf")

Result = Literal["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"]
_RESULTS: frozenset[str] = frozenset(Result.__args__)  # type: ignore[attr-defined]

DEADLINE = 20.0
"""Seconds for one whole evaluation: RFC 7208 section 4.6.4's floor for such a limit."""

_MARGIN = 0.5  # beyond the deadline: the thread hand-over (no look-up waits past the deadline)

POOL = ThreadPoolExecutor(max_workers=256, thread_name_prefix="taube-spf")
"""pyspf's threads. They wait for answers from the event loop and use no CPU meanwhile, so
there are more than the default [smtp] max_connections (200), each session evaluating one record
at a time: slow DNS in some sessions never leaves another without a thread (which would make
its SPF temperror, and let DMARC pass a spoofed p=reject domain as temperror). They are started
only when needed. With more connections configured, a session that finds them all busy waits
within its deadline."""

_THREAD = threading.local()  # .lookup: the look-up function of the evaluation on this thread
_PYSPF_LOOKUP: Callable[..., Any] = spf.DNSLookup
_install_lock = threading.Lock()


def _dispatch(name: str, qtype: str, strict: Any = True, timeout: float = 20.0) -> Any:
    """pyspf's ``DNSLookup``: the look-up of the evaluation running on this thread."""
    lookup = getattr(_THREAD, "lookup", None)
    if lookup is None:  # a thread that is not ours: pyspf as it was
        return _PYSPF_LOOKUP(name, qtype, strict, timeout)
    return lookup(name, qtype, strict, timeout)


def _install() -> None:
    with _install_lock:
        if spf.DNSLookup is not _dispatch:
            spf.DNSLookup = _dispatch


@dataclass(frozen=True, slots=True)
class SPFResult:
    """The result of check_host() (RFC 7208 section 2.6) for one identity: ``identity`` is
    "mailfrom" or "helo", ``domain`` the domain checked ("" when there was none to check),
    ``explanation`` pyspf's words or ours, for the log."""

    result: Result
    identity: Literal["mailfrom", "helo"]
    domain: str
    client_ip: str
    explanation: str = ""

    @property
    def summary(self) -> str:
        """``pass smtp.mailfrom=example.org``: the result as a log line shows it."""
        return f"{self.result} smtp.{self.identity}={self.domain or '-'}"

    def authres(self) -> authres.SPFAuthenticationResult:
        """The ``spf=`` clause of Authentication-Results (RFC 8601 section 2.7.2)."""
        domain = safe_token(self.domain)
        if self.identity == "helo":
            return authres.SPFAuthenticationResult(result=self.result, smtp_helo=domain)
        return authres.SPFAuthenticationResult(result=self.result, smtp_mailfrom=domain)


def _client_address(client_ip: str) -> str | None:
    try:
        ip = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:192.0.2.1 is checked against ip4: mechanisms
    return str(ip)


async def check_host(dns: DNSClient, client_ip: str, sender: str, helo: str | None, *,
                     receiver: str = "", deadline: float = DEADLINE) -> SPFResult:
    """check_host() of RFC 7208 section 4 for the MAIL FROM ``sender`` ("" for the null path:
    then the ``helo`` name, section 2.4), evaluated by pyspf in :data:`POOL` within
    ``deadline`` seconds. Never raises: every problem is a result."""
    identity: Literal["mailfrom", "helo"] = "mailfrom" if sender else "helo"
    local, at, raw_domain = sender.rpartition("@") if sender else ("postmaster", "@", helo or "")
    domain = ascii_domain(raw_domain) if at else None
    shown = domain or raw_domain.strip().lower()[:255]
    ip = _client_address(client_ip)
    if domain is None or ip is None:
        return SPFResult("none", identity, shown, client_ip,
                         "no valid domain to check" if ip else "no valid client address")
    _install()
    loop = asyncio.get_running_loop()
    expires = time.monotonic() + deadline
    lookup = dns.blocking_lookup(loop, spf.TempError, expires=expires)

    def evaluate() -> tuple[str, int, str]:
        left = expires - time.monotonic()
        if left <= 0:  # every thread was busy until the deadline: too late to start
            return "temperror", 0, "no worker thread free within the deadline"
        _THREAD.lookup = lookup
        try:
            query = spf.query(i=ip, s=f"{local or 'postmaster'}@{domain}", h=helo or domain,
                              receiver=receiver or "unknown", querytime=left)
            # pyspf splits the sender at its first "@"; a quoted local part may hold one
            # (RFC 5321 4.1.2), and the domain checked must be the one reported.
            query.l, query.o, query.d = local or "postmaster", domain, domain
            return query.check()
        finally:
            _THREAD.lookup = None

    try:
        async with asyncio.timeout(deadline + _MARGIN):
            result, _, explanation = await loop.run_in_executor(POOL, evaluate)
    except TimeoutError:
        return SPFResult("temperror", identity, domain, client_ip,
                         f"no result within {deadline:g} s")
    except Exception as exc:  # pyspf on input it did not expect: not the domain's fault alone
        log.warning("SPF evaluation of %s for %s failed: %s", domain, client_ip,
                    printable(repr(exc)))
        return SPFResult("permerror", identity, domain, client_ip,
                         printable(f"evaluation failed: {exc}"))
    if result not in _RESULTS:  # pyspf's pre-RFC 7208 names, in case
        result = {"error": "temperror", "unknown": "permerror"}.get(result, "permerror")
    # The explanation may be the domain's own exp= text (section 6.2), bound for the log.
    return SPFResult(result, identity, domain, client_ip,  # type: ignore[arg-type]
                     printable(str(explanation)))


def is_postmaster(rcpt: Recipient | None) -> bool:
    """RCPT TO:<postmaster> or postmaster@ any domain (RFC 5321 section 4.5.1)."""
    return rcpt is not None and (not rcpt.domain or rcpt.local.lower() == "postmaster")


class SPFCheck(Check):
    """SPF at MAIL, its refusal at RCPT (see the module docstring). Evaluates when ``[checks]
    spf`` is on, and also when only ``dmarc`` is, which needs the result (RFC 7489 section
    4.2); refuses only when spf is "enforce".

    Reads ``ctx.client_ip``, ``ctx.helo``, ``ctx.user``, ``ctx.tx.sender``, ``ctx.tx.rcpt``;
    writes ``ctx.tx.auth["spf"]`` (an :class:`SPFResult`) and the result ``"spf"`` for the log.
    """

    name = "spf"

    def __init__(self, checks: ChecksSettings, hostname: str, dns: DNSClient,
                 trusted: Callable[[str], bool], *, deadline: float = DEADLINE) -> None:
        self.active = checks.spf != "off" or checks.dmarc != "off"
        self.enforce = checks.spf == "enforce"
        self.hostname = hostname
        self.dns = dns
        self.trusted = trusted
        self.deadline = deadline

    async def mail(self, ctx: Context) -> Verdict:
        if not self.active or exempt(ctx, self.trusted) or ctx.tx.sender is None:
            return CONTINUE
        result = await check_host(self.dns, ctx.client_ip, ctx.tx.sender, ctx.helo,
                                  receiver=self.hostname, deadline=self.deadline)
        ctx.tx.auth["spf"] = result
        if result.result in ("temperror", "permerror"):
            log.info("SPF %s for %s from %s: %s", result.result, result.domain, ctx.client_ip,
                     result.explanation)
        return Verdict.cont(results={"spf": result.summary})

    async def rcpt(self, ctx: Context) -> Verdict:
        result = ctx.tx.auth.get("spf")
        if (not self.enforce or not isinstance(result, SPFResult) or result.result != "fail"
                or is_postmaster(ctx.tx.rcpt)):
            return CONTINUE
        # RFC 7372 3.2: X.7.23, "SPF validation failed". The domain's own explanation (exp=)
        # is its text, not ours: it goes to the log, not to the client.
        reply = Reply(code=550, enhanced="5.7.23",
                      text=f"SPF validation failed: {result.domain} does not allow "
                           f"[{result.client_ip}] to send its mail")
        return Verdict.reject(reply, reason=f"spf=fail {result.domain}: {result.explanation}")
