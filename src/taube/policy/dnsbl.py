"""DNS block and allow lists (RFC 5782) as a :class:`~taube.policy.pipeline.Check`.

For each zone of ``[checks] dnsbl`` and ``[checks] dnswl`` the client's address is looked up
under the zone: an IPv4 address as its four octets reversed (``2.0.0.127.zen.example`` for
127.0.0.2, RFC 5782 section 2.1), an IPv6 address as its 32 nibbles reversed (section 2.4).
An A record in 127.0.0.0/8 means "listed" (section 2.3); the TXT record of the same name, if
any, is the list's reason (section 2.1), quoted in the refusal.

Some answers in 127.0.0.0/8 are not listings but the list speaking to the operator (see
:data:`ERROR_CODES`); they are logged once per zone and code and otherwise ignored, as is an
answer outside 127.0.0.0/8 (a resolver that rewrites NXDOMAIN). A look-up that times out or
fails is no listing either (a slow list must not stop mail): it is logged and the client is
accepted. A zone that lists its test entry 127.0.0.1, which RFC 5782 section 5 says must never
be listed, lists everything (an expired list's domain parked under a wildcard, a hijacked
zone): its listings are ignored and the fault logged, instead of refusing every client. That
test name is asked only when a client is listed, and is cached like any answer.

One look-up per connection: :meth:`DNSLists.connect` starts it for every zone at once, as a
task kept in ``ctx.notes`` under :data:`NOTE`, and RCPT awaits it, so the DNS is asked while the
client says EHLO and MAIL. Answers are cached for their TTL by the :class:`DNSClient`, so the
next connection from the same address asks nothing. The refusal comes at RCPT, not at connect,
so that a listed client can still reach the postmaster (RFC 5321 section 4.5.1; Postfix's
``smtpd_delay_reject``): ``RCPT TO:<postmaster>`` and ``postmaster@`` any domain pass.

Clients in ``trusted_networks`` and authenticated clients are never looked up, never refused.
The DNSWL result is kept for the greylisting check (:func:`dnswl_listed`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..lookup import DNSClient, TempError
from ..proto.replies import Reply
from .authcommon import printable
from .pipeline import Check, Context, Verdict
from .relay import client_address

__all__ = ["ERROR_CODES", "MAX_CODES", "NOTE", "DNSLists", "ListLookup", "ListResult", "Listing",
           "dnswl_listed", "query_name"]

log = logging.getLogger("taube.policy.dnsbl")

NOTE = "dnslists"
"""The key of the connection's :class:`ListLookup` in ``ctx.notes``."""

LISTED = ipaddress.ip_network("127.0.0.0/8")
"""RFC 5782 section 2.3: listings are A records in 127.0.0.0/8."""

ERROR_CODES = (
    # Spamhaus: 127.255.255.252 typo in the zone, .254 query through a public resolver,
    # .255 too many queries: the list refuses to answer, the client is not listed.
    ipaddress.ip_network("127.255.255.0/24"),
    # RFC 5782 section 5: 127.0.0.1 must never be listed; lists that return it mean "refused".
    ipaddress.ip_network("127.0.0.1/32"),
    # list.dnswl.org: 127.0.0.255, query limit exceeded.
    ipaddress.ip_network("127.0.0.255/32"),
)
"""Answers in 127.0.0.0/8 that are not listings: the list's way of reporting an error."""

MAX_REASON = 200
"""Characters of a list's TXT reason quoted to the client: enough for a URL and a sentence, and
a reply line well under RFC 5321's 512 octets (section 4.5.3.1.5) with the rest of the text."""

MAX_CODES = 8
"""Listing codes (A records) kept per zone: lists give one, or a few for several reasons."""

_MAX_LOGGED = 1000  # (zone, code) pairs logged once per process; bounded against a hostile list


@dataclass(frozen=True, slots=True)
class Listing:
    """The client is listed in ``zone``: the A records (``codes``, at most :data:`MAX_CODES`)
    and the TXT reason, printable ASCII at most :data:`MAX_REASON` characters ("" when the list
    gives none)."""

    zone: str
    codes: tuple[str, ...]
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ListResult:
    """All zones for one client: the first block list (in configuration order) that lists it,
    the first allow list that lists it, and the zones that gave no usable answer (no answer
    in time, or a zone that lists everything)."""

    blocked: Listing | None = None
    allowed: Listing | None = None
    errors: tuple[str, ...] = ()


NOT_LISTED = ListResult()


def query_name(client_ip: str, zone: str) -> str | None:
    """The name to look up for ``client_ip`` in ``zone`` (RFC 5782 sections 2.1 and 2.4); an
    IPv4-mapped IPv6 address is its IPv4 address. None for a string that is no IP address."""
    ip = client_address(client_ip)
    if ip is None:
        return None
    # reverse_pointer is exactly the reversed octets (nibbles) under in-addr.arpa (ip6.arpa).
    reversed_ip = ip.reverse_pointer.rsplit(".", 2)[0]
    return f"{reversed_ip}.{zone}"


def _reason(texts: Sequence[bytes]) -> str:
    """The first TXT record as a safe reply text: printable ASCII, spaces collapsed, cut."""
    for text in texts:
        clean = printable(text, MAX_REASON)
        if clean:
            return clean
    return ""


class ListLookup:
    """One connection's look-up of every zone, started once and awaited by whoever needs it."""

    def __init__(self, task: asyncio.Task[ListResult]) -> None:
        self._task = task  # a strong reference: the loop keeps only weak ones

    async def result(self) -> ListResult:
        # shield: a cancelled RCPT (a closed connection) must not cancel the look-up another
        # stage may still await.
        return await asyncio.shield(self._task)

    def cancel(self) -> None:
        """Stop the look-up (the connection is gone)."""
        self._task.cancel()


async def dnswl_listed(ctx: Context) -> bool:
    """Whether this connection's client is on a DNS allow list (False when no look-up was made:
    no DNSLists check, a trusted or authenticated client)."""
    lookup = ctx.notes.get(NOTE)
    return isinstance(lookup, ListLookup) and (await lookup.result()).allowed is not None


class DNSLists(Check):
    """DNSBL refusal at RCPT, DNSWL fact for greylisting (see the module docstring).

    ``blocklists``/``allowlists``: the zones (``[checks] dnsbl``/``dnswl``); ``dns``: the
    client for look-ups; ``trusted``: whether an address is in ``trusted_networks``.

    Stages: ``connect`` starts the look-up (``ctx.notes[NOTE]``, a :class:`ListLookup`);
    ``rcpt`` awaits it (starting it if connect did not), and refuses a listed client with
    ``554 5.7.1`` except for postmaster."""

    name = "dnsbl"

    def __init__(self, blocklists: Sequence[str], allowlists: Sequence[str], dns: DNSClient,
                 trusted: Callable[[str], bool]) -> None:
        self.blocklists = tuple(blocklists)
        self.allowlists = tuple(allowlists)
        self.dns = dns
        self.trusted = trusted
        self._logged: set[tuple[str, str]] = set()

    @property
    def enabled(self) -> bool:
        """Whether there is any zone to ask (the pipeline needs the check only then)."""
        return bool(self.blocklists or self.allowlists)

    def _exempt(self, ctx: Context) -> bool:
        return ctx.user is not None or self.trusted(ctx.client_ip)

    def start(self, ctx: Context) -> ListLookup | None:
        """The connection's look-up, started now if it was not yet; None for exempt clients."""
        lookup = ctx.notes.get(NOTE)
        if isinstance(lookup, ListLookup):
            return lookup
        if not self.enabled or self._exempt(ctx):
            return None
        lookup = ListLookup(asyncio.get_running_loop().create_task(
            self.lookup(ctx.client_ip), name=f"dnslists {ctx.client_ip}"))
        ctx.notes[NOTE] = lookup
        return lookup

    async def connect(self, ctx: Context) -> Verdict:
        self.start(ctx)
        return Verdict.cont()

    async def rcpt(self, ctx: Context) -> Verdict:
        rcpt = ctx.tx.rcpt
        if self._exempt(ctx) or rcpt is None:
            return Verdict.cont()
        lookup = self.start(ctx)
        if lookup is None:
            return Verdict.cont()
        result = await lookup.result()
        listing = result.blocked
        if listing is None:
            return Verdict.cont()
        if not rcpt.domain or rcpt.local.lower() == "postmaster":
            return Verdict.cont()  # RFC 5321 4.5.1: postmaster stays reachable
        text = f"Service unavailable; client [{ctx.client_ip}] blocked using {listing.zone}"
        if listing.reason:
            text += f"; {listing.reason}"
        return Verdict.reject(Reply(code=554, enhanced="5.7.1", text=text),
                              f"listed in {listing.zone} ({', '.join(listing.codes)})")

    # --- the look-up -------------------------------------------------------------------------

    async def lookup(self, client_ip: str) -> ListResult:
        """Every zone for ``client_ip`` at once; never raises (a failure is a zone in
        ``errors``). Bounded by twice the DNS client's deadline: the A record, then the TXT
        reason and the test entry together."""
        try:
            zones = (*self.blocklists, *self.allowlists)
            found = await asyncio.gather(*(self._zone(client_ip, zone) for zone in zones))
        except Exception:  # a bug must not take the session down: accept, and say why
            log.exception("DNS list look-up for %s failed", client_ip)
            return ListResult(errors=(*self.blocklists, *self.allowlists))
        blocked = [f for f in found[:len(self.blocklists)] if isinstance(f, Listing)]
        allowed = [f for f in found[len(self.blocklists):] if isinstance(f, Listing)]
        errors = tuple(zone for zone, f in zip(zones, found) if f == "temperror")
        return ListResult(blocked=blocked[0] if blocked else None,
                          allowed=allowed[0] if allowed else None, errors=errors)

    async def _zone(self, client_ip: str, zone: str) -> Listing | str | None:
        """One zone: a Listing, None (not listed), or "temperror"."""
        name = query_name(client_ip, zone)
        if name is None:
            return None
        try:
            answer = await self.dns.query(name, "A")
        except TempError as exc:
            log.warning("DNS list %s: no answer for %s (%s); not treated as listed",
                        zone, client_ip, exc)
            return "temperror"
        # A few codes say what the list means; thousands (one answer over TCP holds them)
        # would only make every refusal's log line long.
        codes = tuple(code for code in answer.records if self._is_listing(zone, code))[:MAX_CODES]
        if not codes:
            return None
        # Both at once: a listed client waits for two look-ups in a row, not three.
        everything, reason = await asyncio.gather(self._lists_everything(zone),
                                                  self._reason(name))
        if everything:
            return "temperror"
        log.info("client %s listed in %s (%s)%s", client_ip, zone, ", ".join(codes),
                 f": {reason}" if reason else "")
        return Listing(zone=zone, codes=codes, reason=reason)

    async def _reason(self, name: str) -> str:
        """The list's TXT reason for ``name``, cleaned; "" when there is none or no answer (the
        A record decides; the reason is a courtesy)."""
        try:
            return _reason((await self.dns.query(name, "TXT")).texts())
        except TempError:
            return ""

    async def _lists_everything(self, zone: str) -> bool:
        """Whether ``zone`` lists 127.0.0.1, its never-listed test entry (RFC 5782 section 5).
        A failed look-up of it is no proof: the listing then stands."""
        try:
            answer = await self.dns.query(f"1.0.0.127.{zone}", "A")
        except TempError:
            return False
        if not any(self._is_listing(zone, code) for code in answer.records):
            return False
        key = (zone, "everything")
        if key not in self._logged and len(self._logged) < _MAX_LOGGED:
            self._logged.add(key)
            log.warning("DNS list %s lists 127.0.0.1, which no list may (RFC 5782 section 5): it "
                        "answers for every address, so its listings are ignored", zone)
        return True

    def _is_listing(self, zone: str, code: str) -> bool:
        try:
            address = ipaddress.ip_address(code)
        except ValueError:
            return False
        if address in LISTED and not any(address in net for net in ERROR_CODES):
            return True
        key = (zone, code)
        if key not in self._logged and len(self._logged) < _MAX_LOGGED:
            self._logged.add(key)
            what = "an error code" if address in LISTED else "outside 127.0.0.0/8"
            log.warning("DNS list %s answered %s (%s): not a listing; is the zone name right and "
                        "may this server query it?", zone, code, what)
        return False
