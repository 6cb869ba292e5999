"""Where to deliver mail for a domain: MX resolution (RFC 5321 section 5.1, RFC 7505).

:class:`Resolver` turns a recipient domain into the ordered list of hosts to try, each with its
addresses, and turns every way the lookup can go wrong into one of two outcomes the delivery code
can act on: :class:`TemporaryDNSError` (try again later: RFC 5321 section 5.1 has a temporary
DNS error defer delivery) or :class:`PermanentDNSError` (bounce). Each exception carries an
RFC 3463 enhanced status code in ``.status``.

The rules, from RFC 5321 section 5.1:

* MX records are sorted by preference, lowest first; records with equal preference are put in
  random order, so that load spreads over equally preferred exchangers.
* A domain without MX records (the name exists, NOERROR with no answer) has an implicit MX of
  itself with preference 0: its own A and AAAA records.
* A name that does not exist (NXDOMAIN) is a permanent failure; a server failure, a refusal or
  a timeout is temporary.
* A mail exchanger whose addresses cannot be found is skipped; if none has addresses, the result
  is temporary when any of the address lookups failed temporarily, permanent otherwise.

RFC 7505 null MX: a single MX record whose exchange is the root (``0 .``) says the domain does not
accept mail; :class:`NullMXError` (``5.1.10``, RFC 7505 section 4, registered in its section 6;
the matching reply code is 556, RFC 7504). RFC 7505 section 3 says a domain that publishes a
null MX "MUST NOT advertise any other MX RR"; when one does anyway, the zone is misconfigured
and its intent is ambiguous.
This module then ignores the ``.`` record and uses the other exchangers: mail to such a domain
has a real place to go, and the sender rule of RFC 7505 section 4 (do not attempt delivery) is
worded for the null MX proper, the single-record case.

Limits against hostile zones: at most :data:`MAX_MX_HOSTS` exchangers and
:data:`MAX_ADDRESSES_PER_HOST` addresses per exchanger are used, and the whole of one
:meth:`Resolver.mail_exchangers` call (MX query and every address query) runs against one deadline,
the configured ``[dns] timeout``.

Names are looked up as absolute names (never expanded with a resolv.conf search domain).
A non-ASCII domain is encoded with the ``idna`` codec (RFC 3490 ToASCII) before the lookup.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from taube.config import split_nameserver
from taube.lookup import make_resolver

__all__ = [
    "MAX_ADDRESSES_PER_HOST",
    "MAX_MX_HOSTS",
    "DNSFailure",
    "MXHost",
    "NullMXError",
    "PermanentDNSError",
    "Resolver",
    "TemporaryDNSError",
    "is_ip_literal",
]

MAX_MX_HOSTS = 10
"""At most this many mail exchangers (the most preferred ones) are used for a domain."""

MAX_ADDRESSES_PER_HOST = 5
"""At most this many addresses (IPv4 first, then IPv6) are used for one exchanger."""


class DNSFailure(Exception):
    """A lookup that gave no usable answer.

    ``temporary`` tells whether to try again later (RFC 5321 section 5.1) and ``status`` is the
    RFC 3463 enhanced status code to report. ``name`` and ``rdtype`` are those of the query that
    failed, when there is a single one.
    """

    temporary: bool = False
    status: str = "4.4.3"

    def __init__(
        self,
        message: str,
        *,
        status: str | None = None,
        name: str | None = None,
        rdtype: str | None = None,
    ) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.name = name
        self.rdtype = rdtype

    @property
    def message(self) -> str:
        """The readable explanation (what ``str()`` gives)."""
        return str(self.args[0]) if self.args else ""


class TemporaryDNSError(DNSFailure):
    """Server failure, refusal, timeout, no server reachable: defer (RFC 5321 section 5.1).

    ``status`` is ``4.4.3``, "directory server failure" (RFC 3463 section 3.5).
    """

    temporary = True
    status = "4.4.3"


class PermanentDNSError(DNSFailure):
    """The domain cannot be routed to: bounce.

    ``status`` is ``5.1.2`` ("bad destination system address", RFC 3463 section 3.2) when the
    name does not exist or is not a valid domain name, ``5.4.4`` ("unable to route", RFC 3463
    section 3.5) when it exists but has no address to deliver to.
    """

    temporary = False
    status = "5.1.2"


class NullMXError(PermanentDNSError):
    """The domain publishes a null MX (RFC 7505 section 3): it accepts no mail.

    ``status`` is ``5.1.10``, "recipient address has null MX" (RFC 7505 sections 4 and 6).
    """

    status = "5.1.10"


@dataclass(frozen=True, slots=True)
class MXHost:
    """One mail exchanger to try: host name (lower case, no trailing dot), preference, addresses.

    ``addresses`` lists IPv4 addresses first, then IPv6 ones, as text.
    """

    name: str
    preference: int
    addresses: tuple[str, ...]


def is_ip_literal(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 address in text form (no brackets, no ``IPv6:``)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _address_literal(domain: str) -> str | None:
    """The address in an RFC 5321 section 4.1.3 address literal ``[192.0.2.1]``, ``[IPv6:...]``."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner[:5].lower() == "ipv6:":
        try:
            return str(ipaddress.IPv6Address(inner[5:]))
        except ValueError:
            return None
    try:
        return str(ipaddress.IPv4Address(inner))
    except ValueError:
        return None


def _display(domain: str) -> str:
    """A domain as given, without the trailing dot, for messages."""
    return domain.strip().rstrip(".") or "."


def _to_name(domain: str, rdtype: str) -> dns.name.Name:
    """``domain`` as an absolute DNS name; PermanentDNSError (5.1.2) if it is not a valid one."""
    text = domain.strip()
    shown = _display(text)
    if not text.rstrip("."):
        raise PermanentDNSError(
            f"Name service error for name={shown} type={rdtype}: empty domain name",
            status="5.1.2",
            name=shown,
            rdtype=rdtype,
        )
    try:
        if not text.isascii():
            text = text.rstrip(".").encode("idna").decode("ascii")
        if not text.endswith("."):
            text += "."
        return dns.name.from_text(text)
    except (UnicodeError, dns.exception.DNSException) as exc:
        raise PermanentDNSError(
            f"Name service error for name={shown} type={rdtype}: invalid domain name ({exc})",
            status="5.1.2",
            name=shown,
            rdtype=rdtype,
        ) from None


def _host_text(name: dns.name.Name) -> str:
    """An exchange name as ``MXHost.name``: lower case, no trailing dot."""
    return name.to_text(omit_final_dot=True).lower()


@dataclass(slots=True)
class _AddressResult:
    """What an address lookup for one host gave: addresses, or the failure."""

    addresses: tuple[str, ...] = ()
    error: DNSFailure | None = None


class Resolver:
    """Asynchronous MX and address lookups with dnspython.

    ``nameservers``: ``[dns] nameservers`` entries (``"ip"``, ``"ip:port"``, ``"[ipv6]:port"``);
    empty means the system configuration (``resolv_conf``, ``/etc/resolv.conf``), read at the
    first lookup, and again at later lookups as long as it cannot be used (missing file, no
    ``nameserver`` line): each such lookup fails with :class:`TemporaryDNSError`.
    ``timeout``: seconds for one whole lookup, all servers and retries included.
    ``rng``: the source of randomness for ordering MX records of equal preference.
    """

    def __init__(
        self,
        nameservers: Sequence[str] = (),
        timeout: float = 10.0,
        rng: random.Random | None = None,
        *,
        resolv_conf: str = "/etc/resolv.conf",
    ) -> None:
        if timeout <= 0:
            raise ValueError("the DNS timeout must be positive")
        self.timeout = float(timeout)
        self._rng = rng if rng is not None else random.Random()
        self._resolv_conf = resolv_conf
        self._nameservers = tuple(nameservers)
        for entry in self._nameservers:
            split_nameserver(entry)  # a bad entry fails here, not at the first look-up
        self._resolver: dns.asyncresolver.Resolver | None = None

    def _get_resolver(self, name: str, rdtype: str) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            try:
                self._resolver = make_resolver(self._nameservers, self.timeout,
                                               resolv_conf=self._resolv_conf)
            except dns.resolver.NoResolverConfiguration as exc:
                raise TemporaryDNSError(
                    f"Name service error for name={name} type={rdtype}: "
                    f"no name server configured ({self._resolv_conf}: {exc})",
                    name=name,
                    rdtype=rdtype,
                ) from None
        return self._resolver

    async def _query(
        self, qname: dns.name.Name, rdtype: str, deadline: float
    ) -> dns.resolver.Answer | None:
        """One query; the answer, None for NODATA (RFC 2308 section 2.2), or a DNSFailure."""
        shown = _host_text(qname) or "."
        resolver = self._get_resolver(shown, rdtype)
        remaining = deadline - time.monotonic()

        def fail(cls: type[DNSFailure], reason: str, status: str | None = None) -> DNSFailure:
            return cls(
                f"Name service error for name={shown} type={rdtype}: {reason}",
                status=status,
                name=shown,
                rdtype=rdtype,
            )

        if remaining <= 0:
            raise fail(TemporaryDNSError, "timed out")
        try:
            return await resolver.resolve(
                qname,
                rdtype,
                search=False,
                raise_on_no_answer=True,
                lifetime=remaining,
            )
        except dns.resolver.NXDOMAIN:
            raise fail(PermanentDNSError, "Host not found", "5.1.2") from None
        except dns.resolver.NoAnswer:
            return None
        except dns.resolver.NoNameservers as exc:
            reason = "Host not found, try again (no server answered"
            errors = getattr(exc, "kwargs", {}).get("errors") or []
            details = sorted({str(e[3]) for e in errors if len(e) > 3 and str(e[3] or "")})
            if details:
                reason += ": " + "; ".join(details)
            raise fail(TemporaryDNSError, reason + ")") from None
        except dns.exception.Timeout:
            raise fail(TemporaryDNSError, "Host not found, try again (timed out)") from None
        except dns.resolver.NoResolverConfiguration as exc:
            raise fail(TemporaryDNSError, f"no name server configured ({exc})") from None
        except dns.exception.DNSException as exc:
            raise fail(TemporaryDNSError, f"Host not found, try again ({exc})") from None
        except OSError as exc:
            raise fail(TemporaryDNSError, f"Host not found, try again ({exc})") from None

    async def _addresses(self, qname: dns.name.Name, deadline: float) -> tuple[str, ...]:
        """A then AAAA records of ``qname`` (queried in parallel), at most the per-host limit.

        One family failing temporarily while the other gives addresses still gives those
        addresses. NXDOMAIN, or neither family having records, is permanent (``5.1.2``,
        ``5.4.4``); otherwise a temporary failure of either family makes the whole temporary.
        """
        results = await asyncio.gather(
            self._query(qname, "A", deadline),
            self._query(qname, "AAAA", deadline),
            return_exceptions=True,
        )
        found: list[str] = []
        errors: list[DNSFailure] = []
        for result in results:
            if isinstance(result, DNSFailure):
                errors.append(result)
            elif isinstance(result, BaseException):
                raise result
            elif result is not None:
                for rdata in result:
                    text = rdata.to_text()
                    if text not in found:
                        found.append(text)
        if found:
            return tuple(found[:MAX_ADDRESSES_PER_HOST])
        for error in errors:
            if not error.temporary:
                raise error
        if errors:
            raise errors[0]
        shown = _host_text(qname)
        raise PermanentDNSError(
            f"Name service error for name={shown} type=A: No address associated with hostname",
            status="5.4.4",
            name=shown,
            rdtype="A",
        )

    async def addresses(self, host: str) -> tuple[str, ...]:
        """The addresses of ``host``: A records, then AAAA records (at most
        :data:`MAX_ADDRESSES_PER_HOST`).

        An IP address (or an RFC 5321 section 4.1.3 address literal) is returned as is.
        PermanentDNSError if the name does not exist (``5.1.2``) or has neither record type
        (``5.4.4``); TemporaryDNSError if the lookup failed.
        """
        literal = _address_literal(host.strip())
        if literal is not None:
            return (literal,)
        if is_ip_literal(host.strip()):
            return (str(ipaddress.ip_address(host.strip())),)
        deadline = time.monotonic() + self.timeout
        return await self._addresses(_to_name(host, "A"), deadline)

    async def mail_exchangers(self, domain: str) -> list[MXHost]:
        """The hosts to deliver mail for ``domain`` to, in the order to try them (RFC 5321 5.1).

        Sorted by preference, equal preferences in random order; at most :data:`MAX_MX_HOSTS`
        hosts, each name once (at its best preference), each with at least one address; an
        address already listed for a more preferred host is not repeated (a host left without
        addresses by that is dropped). No MX records: the domain itself with preference 0.
        An address literal ``[192.0.2.1]`` / ``[IPv6:2001:db8::1]`` (RFC 5321 section 4.1.3)
        gives that address and no lookup.

        Raises NullMXError (RFC 7505), PermanentDNSError (NXDOMAIN, no usable exchanger and no
        temporary failure), TemporaryDNSError (anything that may go away by itself).
        """
        text = domain.strip()
        literal = _address_literal(text)
        if literal is not None:
            return [MXHost(name=text.lower(), preference=0, addresses=(literal,))]
        shown = _display(text)
        qname = _to_name(text, "MX")
        deadline = time.monotonic() + self.timeout
        answer = await self._query(qname, "MX", deadline)

        if answer is None:
            # RFC 5321 section 5.1: no MX records, the domain is its own (implicit) exchanger.
            try:
                found = await self._addresses(qname, deadline)
            except PermanentDNSError as exc:
                if exc.status == "5.1.2":
                    raise
                raise PermanentDNSError(
                    f"Name service error for name={shown} type=MX: "
                    "no MX records and no address for the domain itself",
                    status="5.4.4",
                    name=shown,
                    rdtype="MX",
                ) from None
            return [MXHost(name=_host_text(qname), preference=0, addresses=found)]

        records = [(int(r.preference), r.exchange) for r in answer]
        real = [(pref, name) for pref, name in records if name != dns.name.root]
        if not real:
            # RFC 7505 section 3: a null MX (normally exactly "0 .").
            raise NullMXError(
                f"Domain {shown} does not accept mail (null MX)",
                name=shown,
                rdtype="MX",
            )

        # Each name once, at its best preference; then by preference, shuffled within one.
        best: dict[dns.name.Name, int] = {}
        for pref, name in real:
            if name not in best or pref < best[name]:
                best[name] = pref
        groups: dict[int, list[dns.name.Name]] = {}
        for name, pref in best.items():
            groups.setdefault(pref, []).append(name)
        ordered: list[tuple[int, dns.name.Name]] = []
        for pref in sorted(groups):
            names = sorted(groups[pref], key=lambda n: n.to_text().lower())
            self._rng.shuffle(names)
            ordered.extend((pref, n) for n in names)
        ordered = ordered[:MAX_MX_HOSTS]

        async def lookup(name: dns.name.Name) -> _AddressResult:
            host = _host_text(name)
            if is_ip_literal(host):
                # Not allowed as an exchange (RFC 5321 section 5.1), but unambiguous.
                return _AddressResult(addresses=(str(ipaddress.ip_address(host)),))
            try:
                return _AddressResult(addresses=await self._addresses(name, deadline))
            except DNSFailure as exc:
                return _AddressResult(error=exc)

        results = await asyncio.gather(*(lookup(name) for _, name in ordered))
        hosts: list[MXHost] = []
        seen: set[str] = set()
        errors: list[tuple[str, DNSFailure]] = []
        for (pref, name), result in zip(ordered, results, strict=True):
            if result.error is not None:
                errors.append((_host_text(name), result.error))
                continue
            fresh = tuple(a for a in result.addresses if a not in seen)
            seen.update(fresh)
            if fresh:
                hosts.append(MXHost(name=_host_text(name), preference=pref, addresses=fresh))
        if hosts:
            return hosts

        temporary = any(err.temporary for _, err in errors)
        listing = "; ".join(f"{host}: {err}" for host, err in errors)
        message = f"No address for any mail exchanger of {shown}"
        if listing:
            message += f" ({listing})"
        if temporary:
            raise TemporaryDNSError(message, name=shown, rdtype="MX")
        raise PermanentDNSError(message, status="5.4.4", name=shown, rdtype="MX")
