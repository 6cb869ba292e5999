"""ARC verification (RFC 8617 section 5.2) as a :class:`~taube.policy.pipeline.Check` at the end
of DATA: does the message carry an intact Authenticated Received Chain?

The keys of every ARC-Seal and ARC-Message-Signature (their ``s=`` and ``d=``, at most
:data:`MAX_KEYS` distinct names) are fetched through the :class:`DNSClient` first, all at once;
dkimpy's ``ARC.verify`` then validates the chain in a worker thread
(:data:`authcommon.CRYPTO`) with a look-up function that answers from those records only. The
result is one of the three RFC 8617 section 9.1 registers for ``arc``:

* **none**: no ARC header fields;
* **pass**: every ARC-Seal validates, the newest ARC-Message-Signature validates, and the
  chain's cv= values are consistent (section 5.2, steps 2 to 6);
* **fail**: anything else: a broken seal or message signature (the message was changed after
  sealing), an incomplete or duplicated set, more than 50 instances (section 4.2.1), an
  instance that reported cv=fail, a key that could not be fetched (a temporary DNS failure
  included: ARC has no temperror, and this result is information for the reader, never a
  refusal) or is no usable key (:func:`authcommon.key_problem`: revoked, unreadable, too short,
  too costly to verify with).

``[checks] arc = "tag"`` records the result in ``ctx.tx.auth["arc"]`` (an :class:`ARCResult`)
for the Authentication-Results header. Sealing (adding our own ARC set) is not done. Clients in
trusted_networks and authenticated clients are not checked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import authres.arc
import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from ..lookup import DNSClient
from .authcommon import (CRYPTO, MIN_RSA_BITS, KeyRecords, complete_lines, exempt, fetch_keys,
                         key_name, message_bytes, unfold)
from .pipeline import CONTINUE, Check, Context, Verdict

if TYPE_CHECKING:
    from ..config import ChecksSettings

__all__ = ["MAX_INSTANCES", "MAX_KEYS", "ARCCheck", "ARCResult", "verify"]

log = logging.getLogger("taube.policy.arc")

MAX_INSTANCES = 50
"""RFC 8617 section 4.2.1: i= is at most 50; a longer chain fails."""

MAX_KEYS = 20
"""Distinct key records fetched for one chain: a real chain has a few hops, often sharing keys;
a chain that needs more fails (its remaining keys are not found)."""

DEADLINE = 30.0
"""Seconds the validation of one chain may take in the worker thread."""

_MAX_SIZE = 64 * 1024 * 1024  # octets of a message validated at most (dkimpy holds it whole)
_SEALS = (b"arc-seal", b"arc-message-signature")
_INSTANCE = re.compile(rb"(?:^|[\s;])i\s*=\s*(\d+)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ARCResult:
    """The chain's validation: ``instances`` is the highest i= seen (0: no chain), ``reason``
    dkimpy's or ours, for the log; ``client_ip`` for the header's smtp.remote-ip."""

    result: Literal["pass", "fail", "none"]
    instances: int = 0
    reason: str = ""
    client_ip: str = ""

    def authres(self) -> authres.arc.ARCAuthenticationResult:
        """The ``arc=`` clause of Authentication-Results (RFC 8617 section 6)."""
        try:
            remote = str(ipaddress.ip_address(self.client_ip.split("%", 1)[0]))
        except ValueError:
            remote = None
        return authres.arc.ARCAuthenticationResult(result=self.result, smtp_remote_ip=remote)


def _chain(header: bytes) -> tuple[int, list[str]] | str:
    """The highest instance and the key names of the ARC-Seal and ARC-Message-Signature
    fields, newest first; or why the chain cannot be read."""
    try:
        fields, _ = dkim.rfc822_parse(complete_lines(header))
    except (dkim.MessageFormatError, IndexError) as exc:  # IndexError: a first line folded
        return f"the header section cannot be read: {exc}"[:200]
    seals: list[tuple[int, bytes]] = []
    highest = 0
    for name, value in fields:
        lowered = name.lower()
        if lowered not in (*_SEALS, b"arc-authentication-results"):
            continue
        found = _INSTANCE.search(value)
        if found is None:
            return f"{name.decode('ascii', 'replace')} without i="
        instance = int(found.group(1)[:6])
        highest = max(highest, instance)
        if lowered in _SEALS:
            seals.append((instance, value))
    names: list[str] = []
    for _, value in sorted(seals, key=lambda s: -s[0]):
        try:
            tags = parse_tag_value(unfold(value))
        except InvalidTagValueList:
            continue  # dkimpy says why when it gets there
        name = key_name(tags.get(b"s", b""), tags.get(b"d", b""))
        if name is not None and name not in names and len(names) < MAX_KEYS:
            names.append(name)
    return highest, names


def _validate_in_thread(message: bytes, keys: KeyRecords, expires: float) -> tuple[str, str]:
    if time.monotonic() >= expires:  # waited for the thread until the deadline: too late
        return "fail", "no worker thread free within the deadline"
    try:
        cv, _, reason = dkim.ARC(message, minkey=MIN_RSA_BITS).verify(dnsfunc=keys.txt)
    except Exception as exc:  # dkimpy's own errors and what it did not expect from the input
        return "fail", f"{type(exc).__name__}: {exc}"
    # cv None: an instance reported cv=fail, and the chain ended there (section 5.2 step 2).
    return ("pass" if cv == dkim.CV_Pass else "none" if cv == dkim.CV_None else "fail"), reason


async def verify(dns: DNSClient, header: bytes, client_ip: str = "", *,
                 load: Callable[[], Awaitable[bytes | None]] | None = None,
                 deadline: float = DEADLINE) -> ARCResult:
    """The ARC chain of the message validated (see the module docstring); ``load`` gives the
    whole message, awaited only when there is a chain. Never raises."""
    chain = _chain(header)
    if isinstance(chain, str):
        return ARCResult("fail", 0, chain, client_ip)
    highest, names = chain
    if highest == 0:
        return ARCResult("none", 0, "no ARC header fields", client_ip)
    if highest > MAX_INSTANCES:
        return ARCResult("fail", highest, f"i={highest} exceeds {MAX_INSTANCES}", client_ip)
    keys = await fetch_keys(dns, names)
    if keys.failed:
        return ARCResult("fail", highest, "key look-up failed: " + ", ".join(sorted(keys.failed)),
                         client_ip)
    if keys.unusable:  # never handed to dkimpy: too costly, or no key at all
        name, why = next(iter(keys.unusable.items()))
        return ARCResult("fail", highest, f"{why} ({name})"[:200], client_ip)
    data = await load() if load is not None else None
    if data is None:
        return ARCResult("fail", highest, "the message was not available", client_ip)
    if len(data) > _MAX_SIZE:
        return ARCResult("fail", highest, "message too large to validate", client_ip)
    try:
        async with asyncio.timeout(deadline):
            result, reason = await asyncio.get_running_loop().run_in_executor(
                CRYPTO, _validate_in_thread, data, keys, time.monotonic() + deadline)
    except TimeoutError:
        return ARCResult("fail", highest, f"no result within {deadline:g} s", client_ip)
    return ARCResult(result, highest, str(reason)[:200], client_ip)  # type: ignore[arg-type]


class ARCCheck(Check):
    """ARC validation at data_end when ``[checks] arc`` is on (see the module docstring).

    Reads ``ctx.client_ip``, ``ctx.user``, ``ctx.tx.header`` and, when there is a chain, the
    message through ``ctx.tx.message``; writes ``ctx.tx.auth["arc"]`` (an :class:`ARCResult`)
    and the result ``"arc"`` for the log."""

    name = "arc"

    def __init__(self, checks: ChecksSettings, dns: DNSClient, trusted: Callable[[str], bool],
                 *, deadline: float = DEADLINE) -> None:
        self.active = checks.arc != "off"
        self.dns = dns
        self.trusted = trusted
        self.deadline = deadline

    async def data_end(self, ctx: Context) -> Verdict:
        if not self.active or exempt(ctx, self.trusted):
            return CONTINUE
        result = await verify(self.dns, ctx.tx.header or b"", ctx.client_ip,
                              load=lambda: message_bytes(ctx), deadline=self.deadline)
        ctx.tx.auth["arc"] = result
        if result.result == "fail":
            log.info("ARC fail from %s: %s", ctx.client_ip, result.reason)
        return Verdict.cont(results={"arc": result.result})
