"""DNS look-ups for the inbound checks (SPF, DKIM, DMARC, ARC, DNS lists): asynchronous, bounded
and cached.

:class:`DNSClient` asks the servers of ``[dns] nameservers`` (or ``/etc/resolv.conf``) with the
``[dns] timeout`` as the deadline of one whole look-up, all servers and retries included; a slow
server therefore costs the one session that asked, never the others. Every way a look-up can go
wrong without an answer (timeout, SERVFAIL, REFUSED, no server reachable) is one
:class:`TempError`, which the checks turn into their ``temperror`` result (RFC 7208 section 2.6.6,
RFC 7489 section 6.6.2 "temporary failure"), never into a refusal.

Answers are cached for their TTL (at most :data:`MAX_TTL`), negative answers (NXDOMAIN, no data)
for the SOA minimum of the response (RFC 2308 section 5) or :data:`NEGATIVE_TTL`; temporary
failures are not cached. The cache holds at most ``max_entries`` answers and ``max_bytes`` octets
of them (the least recently used go first; a zone may answer anything up to 64 KB over TCP, under
any name it makes up), and concurrent look-ups of one name and type share one query.

pyspf evaluates an SPF record synchronously and asks the DNS as it goes (include:, a, mx, ptr,
exists); :meth:`DNSClient.blocking_lookup` gives it a look-up function that runs in its worker
thread and hands each query to this client on the event loop, so SPF shares the resolver, its
deadline and its cache.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from .config import split_nameserver

__all__ = ["MAX_BYTES", "MAX_TTL", "NEGATIVE_TTL", "Answer", "DNSClient", "TempError", "make_resolver"]

MAX_TTL = 86400.0
"""No answer is kept longer than a day, whatever its TTL."""

NEGATIVE_TTL = 300.0
"""How long NXDOMAIN or no data is kept when the response names no SOA minimum."""

MAX_BYTES = 16 * 1024 * 1024
"""Octets of answers the cache holds at most by default: thousands of ordinary answers, but not
10,000 answers of 64 KB that a hostile zone would hand out under made-up names."""

_ENTRY_OVERHEAD = 200  # octets an entry costs beyond its data: the key, the Answer, the tuples

_MAX_PER_TRY = 5.0
"""Longest wait for one answer from one server before retrying or asking the next one."""

# The record types the checks ask for; any other is refused before it reaches the network.
_TYPES = frozenset({"A", "AAAA", "TXT", "MX", "PTR", "SPF"})


class TempError(Exception):
    """No answer: timeout, server failure, refusal, no server configured or reachable."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What one look-up gave. ``records`` by type: A/AAAA the addresses as text; TXT (and SPF)
    one tuple of byte strings per record (RFC 1035 character-strings, not yet joined); MX
    ``(preference, exchange)``; PTR the target. Names are lower case without the final dot.
    ``nxdomain``: the name does not exist (``records`` is then empty)."""

    name: str
    rdtype: str
    records: tuple[Any, ...] = ()
    nxdomain: bool = False

    @property
    def size(self) -> int:
        """About how many octets the answer holds in memory (for the cache's bound)."""
        size = _ENTRY_OVERHEAD + len(self.name)
        for record in self.records:
            if isinstance(record, tuple):
                size += 16 + sum(len(part) if isinstance(part, (bytes, str)) else 8
                                 for part in record)
            else:
                size += 16 + len(record)
        return size

    def texts(self) -> list[bytes]:
        """TXT records, each one's strings joined (RFC 7208 section 3.3, RFC 6376 3.6.2.2)."""
        return [b"".join(strings) for strings in self.records]


def make_resolver(nameservers: Sequence[str], timeout: float, *,
                  resolv_conf: str = "/etc/resolv.conf") -> dns.asyncresolver.Resolver:
    """An asynchronous dnspython resolver for ``[dns]``: the given servers (``"ip"``,
    ``"ip:port"``, ``"[ipv6]:port"``) or the system's, ``timeout`` for one whole look-up, no
    search list, EDNS0 so that larger answers fit in UDP.

    Raises :class:`dns.resolver.NoResolverConfiguration` when no server is given and the
    system has none."""
    if nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(*split_nameserver(entry))
                                for entry in nameservers]
    else:
        resolver = dns.asyncresolver.Resolver(filename=resolv_conf, configure=True)
    resolver.lifetime = timeout
    # Per try: a third of the whole, so that there is room for a retry or a second server, at
    # least one second (less if the whole is shorter) and at most five.
    resolver.timeout = min(max(timeout / 3, min(1.0, timeout)), _MAX_PER_TRY)
    resolver.search = []
    resolver.use_search_by_default = False
    resolver.use_edns(0, 0, 1232)
    return resolver


def _text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


def _absolute(name: str) -> dns.name.Name:
    text = name.strip()
    if not text.isascii():
        text = text.rstrip(".").encode("idna").decode("ascii")
    return dns.name.from_text(text if text.endswith(".") else text + ".")


def _negative_ttl(response: dns.message.Message | None) -> float:
    """RFC 2308 section 5: the SOA's minimum (capped by its own TTL) from the authority section."""
    if response is not None:
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA:
                return float(min(rrset.ttl, rrset[0].minimum))
    return NEGATIVE_TTL


def _records(rdtype: str, rrset: Any) -> tuple[Any, ...]:
    if rdtype in ("A", "AAAA"):
        return tuple(r.address for r in rrset)
    if rdtype in ("TXT", "SPF"):
        return tuple(tuple(r.strings) for r in rrset)
    if rdtype == "MX":
        return tuple((int(r.preference), _text(r.exchange)) for r in rrset)
    return tuple(_text(r.target) for r in rrset)  # PTR


class DNSClient:
    """Cached asynchronous look-ups (see the module's docstring). ``clock`` is monotonic seconds
    (the cache's expiry); ``resolver`` replaces the one made from ``nameservers``/``timeout``."""

    def __init__(self, nameservers: Sequence[str] = (), timeout: float = 10.0, *,
                 max_entries: int = 10000, max_bytes: int = MAX_BYTES, clock: Callable[[], float] = time.monotonic,
                 resolv_conf: str = "/etc/resolv.conf") -> None:
        if timeout <= 0:
            raise ValueError("the DNS timeout must be positive")
        self.timeout = float(timeout)
        self._nameservers = tuple(nameservers)
        self._resolv_conf = resolv_conf
        self._resolver: dns.asyncresolver.Resolver | None = None
        self._clock = clock
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._cache: OrderedDict[tuple[str, str], tuple[float, Answer]] = OrderedDict()
        self.cached_bytes = 0
        """Octets of answers in the cache now (:attr:`Answer.size`)."""
        self._inflight: dict[tuple[str, str], asyncio.Task[Answer]] = {}

    def _get_resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            try:
                self._resolver = make_resolver(self._nameservers, self.timeout,
                                               resolv_conf=self._resolv_conf)
            except dns.resolver.NoResolverConfiguration as exc:
                raise TempError(f"no name server configured ({exc})") from None
        return self._resolver

    async def query(self, name: str, rdtype: str) -> Answer:
        """The records of ``rdtype`` for ``name``, from the cache or the DNS; TempError when
        there is no answer within the deadline. A name that is not a valid domain name gives
        an NXDOMAIN answer without a query."""
        rdtype = rdtype.upper()
        if rdtype not in _TYPES:
            raise ValueError(f"unsupported record type {rdtype}")
        try:
            qname = _absolute(name)
        except (UnicodeError, dns.exception.DNSException):
            return Answer(name=name.strip().rstrip(".").lower(), rdtype=rdtype, nxdomain=True)
        key = (_text(qname), rdtype)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None:
            if cached[0] > now:
                self._cache.move_to_end(key)
                return cached[1]
            self._forget(key)
        task = self._inflight.get(key)
        if task is None:
            # The query is a task of its own, not the first asker's: a session that goes away
            # (cancelled) leaves it running for the others that wait for the same name, within
            # the resolver's own deadline.
            task = asyncio.get_running_loop().create_task(self._fetch(qname, key, rdtype))
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._landed, key))
        return await asyncio.shield(task)

    def _landed(self, key: tuple[str, str], task: asyncio.Task[Answer]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: every asker may have gone away

    async def _fetch(self, qname: dns.name.Name, key: tuple[str, str], rdtype: str) -> Answer:
        answer, ttl = await self._ask(qname, key[0], rdtype)
        if ttl > 0 and answer.size <= self._max_bytes:
            self._forget(key)
            self._cache[key] = (self._clock() + min(ttl, MAX_TTL), answer)
            self.cached_bytes += answer.size
            while len(self._cache) > self._max_entries or self.cached_bytes > self._max_bytes:
                self._forget(next(iter(self._cache)))
        return answer

    def _forget(self, key: tuple[str, str]) -> None:
        entry = self._cache.pop(key, None)
        if entry is not None:
            self.cached_bytes -= entry[1].size

    async def _ask(self, qname: dns.name.Name, shown: str, rdtype: str) -> tuple[Answer, float]:
        resolver = self._get_resolver()
        where = f"{shown}/{rdtype}"
        try:
            result = await resolver.resolve(qname, rdtype, search=False, raise_on_no_answer=True,
                                            lifetime=self.timeout)
        except dns.resolver.NXDOMAIN as exc:
            responses = list(exc.responses().values()) if hasattr(exc, "responses") else []
            return (Answer(name=shown, rdtype=rdtype, nxdomain=True),
                    _negative_ttl(responses[0] if responses else None))
        except dns.resolver.NoAnswer as exc:
            response = exc.kwargs.get("response") if hasattr(exc, "kwargs") else None
            return Answer(name=shown, rdtype=rdtype), _negative_ttl(response)
        except dns.exception.Timeout:
            raise TempError(f"{where}: timed out") from None
        except dns.resolver.NoNameservers:
            raise TempError(f"{where}: no server answered (SERVFAIL or REFUSED)") from None
        except (dns.exception.DNSException, OSError) as exc:
            raise TempError(f"{where}: {exc}") from None
        assert result.rrset is not None
        return (Answer(name=shown, rdtype=rdtype, records=_records(rdtype, result.rrset)),
                float(result.rrset.ttl))

    def blocking_lookup(self, loop: asyncio.AbstractEventLoop, temp_error: type[Exception], *,
                        expires: float | None = None) -> Callable[..., list[tuple[Any, Any]]]:
        """A look-up function in pyspf's ``DNSLookup(name, qtype, strict, timeout)`` shape, to be
        called from a worker thread while ``loop`` runs: each query is made by this client on
        ``loop``; a failure raises ``temp_error`` (pyspf's TempError). ``expires``
        (:func:`time.monotonic` seconds): the evaluation's deadline; no look-up waits past it,
        and after it every look-up fails at once, so that an evaluation the session gave up
        on lets its thread go."""

        def lookup(name: str, qtype: str, strict: Any = True, timeout: float | None = None
                   ) -> list[tuple[Any, Any]]:
            wait = self.timeout if timeout is None else min(float(timeout), self.timeout)
            # A second more than the client's own deadline, to get its TempError rather than
            # a bare timeout; but never past the evaluation's deadline.
            limit = wait + 1.0
            if expires is not None:
                limit = min(limit, expires - time.monotonic())
                if limit <= 0:
                    raise temp_error(f"DNS {name}/{qtype}: past the evaluation's deadline")
            future = asyncio.run_coroutine_threadsafe(self.query(name, qtype), loop)
            try:
                answer = future.result(limit)
            except TempError as exc:
                raise temp_error(f"DNS {exc}") from None
            except TimeoutError:
                future.cancel()
                raise temp_error(f"DNS {name}/{qtype}: timed out") from None
            if qtype.upper() in ("TXT", "SPF"):
                return [((name, qtype), list(strings)) for strings in answer.records]
            return [((name, qtype), record) for record in answer.records]

        return lookup
