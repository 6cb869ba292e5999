"""DKIM verification (RFC 6376 section 6) as a :class:`~taube.policy.pipeline.Check` at the end
of DATA: every DKIM-Signature of the message, each with its own result.

For each signature (the topmost :data:`MAX_SIGNATURES`; more are logged and ignored, as
section 6.1 allows a verifier to limit its work):

1. its tags are parsed and checked (section 3.5, dkimpy's ``validate_signature_fields``): a
   signature that cannot be read (a missing or malformed tag, an unknown algorithm, v= not 1,
   i= outside d=, x= in the past) is **neutral**, RFC 8601 2.7.1's result for a signature
   "not able to be processed";
2. the key record ``s._domainkey.d`` is fetched through the :class:`DNSClient` (all keys of the
   message at once, before any verification): a look-up that times out or fails is
   **temperror**; no record, a record that is no usable key (section 3.6.1: bad syntax, an
   unknown k=, a key dkimpy cannot parse, one shorter than 1024 bits, an RSA key too costly to
   verify with: :func:`authcommon.key_problem`) or a revoked key (empty p=, section 3.6.1) is
   **permerror**;
3. dkimpy verifies the signature in a worker thread (:data:`authcommon.CRYPTO`) with a look-up
   function that answers from the fetched records only: **pass**, or **fail** when the body
   hash or the signature does not match (the message was changed).

No DKIM-Signature at all is **none**. rsa-sha256 and ed25519-sha256 (RFC 8463) are verified.
The message is read from the transaction (``ctx.tx.message``) only when there is a signature
to verify, and verification of a message larger than ``max_size`` is refused with the result
**policy** (RFC 8601 2.7.1: the signature "was not acceptable to the ADMD") rather than held in
memory.

Results go to ``ctx.tx.auth["dkim"]``: a tuple of :class:`DKIMResult`, one per signature in
header order, empty for none. ``[checks] dkim = "tag"`` only records; DKIM alone never refuses
(DMARC decides). Clients in trusted_networks and authenticated clients are not checked.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import authres
import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from ..lookup import DNSClient
from .authcommon import (CRYPTO, MIN_RSA_BITS, KeyRecords, complete_lines, exempt, fetch_keys,
                         key_name, message_bytes, safe_token, unfold)
from .pipeline import CONTINUE, Check, Context, Verdict

if TYPE_CHECKING:
    from ..config import ChecksSettings

__all__ = ["MAX_SIGNATURES", "MAX_SIZE", "DKIMCheck", "DKIMResult", "signatures", "verify"]

log = logging.getLogger("taube.policy.dkim")

Result = Literal["pass", "fail", "neutral", "policy", "temperror", "permerror"]

MAX_SIGNATURES = 10
"""Signatures verified per message, from the top: a forwarded, list-expanded message carries a
handful; each costs a key look-up and a hash of the body."""

MAX_SIZE = 64 * 1024 * 1024
"""Octets of a message verified at most: dkimpy holds the whole message in memory."""

DEADLINE = 30.0
"""Seconds the verification of one message may take in the worker thread; no signature is
begun after it."""

_SIGNATURE = re.compile(rb"(?im)^dkim-signature[ \t]*:")


@dataclass(frozen=True, slots=True)
class DKIMResult:
    """One signature's result: ``domain`` (d=), ``selector`` (s=), ``algorithm`` (a=) as given
    ("" when unreadable), ``reason`` for the log; ``length`` the body length the signature
    covers (l=), None when it covers the whole body."""

    result: Result
    domain: str = ""
    selector: str = ""
    algorithm: str = ""
    reason: str = ""
    length: int | None = None

    @property
    def summary(self) -> str:
        return f"{self.result} header.d={self.domain or '-'} header.s={self.selector or '-'}"

    def authres(self) -> authres.DKIMAuthenticationResult:
        """The ``dkim=`` clause of Authentication-Results (RFC 8601 section 2.7.1); a pass with
        l= says so in a comment: what follows that length in the body is nobody's."""
        comment = f"l={self.length}" if self.length is not None and self.result == "pass" else None
        return authres.DKIMAuthenticationResult(
            result=self.result, result_comment=comment, header_d=safe_token(self.domain),
            header_s=safe_token(self.selector), header_a=safe_token(self.algorithm))


@dataclass(frozen=True, slots=True)
class _Signature:
    """A DKIM-Signature as read before verification: its index among the message's
    DKIM-Signature fields (dkimpy's ``idx``), its tags, and a result when one is already
    known (neutral, or later temperror/permerror from the key)."""

    index: int
    domain: str
    selector: str
    algorithm: str
    key: str | None  # the key record's name
    early: DKIMResult | None
    length: int | None = None  # l=


def _text(value: bytes | None) -> str:
    return (value or b"").decode("ascii", "replace").strip()[:255]


def signatures(header: bytes) -> list[_Signature]:
    """The DKIM-Signature fields of a header section, read as dkimpy reads them (so that the
    index is dkimpy's), the first :data:`MAX_SIGNATURES`."""
    try:
        fields, _ = dkim.rfc822_parse(complete_lines(header))
    except (dkim.MessageFormatError, IndexError) as exc:  # IndexError: a first line folded
        if not _SIGNATURE.search(header):
            return []
        bad = DKIMResult("neutral", reason=f"the header section cannot be read: {exc}"[:200])
        return [_Signature(0, "", "", "", None, bad)]
    values = [value for name, value in fields if name.lower() == b"dkim-signature"]
    if len(values) > MAX_SIGNATURES:
        log.info("%d DKIM signatures; the first %d are verified", len(values), MAX_SIGNATURES)
    return [_read(i, v) for i, v in enumerate(values[:MAX_SIGNATURES])]


def _read(index: int, value: bytes) -> _Signature:
    try:
        tags = parse_tag_value(unfold(value))
    except InvalidTagValueList as exc:
        return _Signature(index, "", "", "", None,
                          DKIMResult("neutral", reason=f"bad tag list: {exc}"))
    domain, selector = _text(tags.get(b"d")), _text(tags.get(b"s"))
    algorithm = _text(tags.get(b"a"))
    try:
        dkim.validate_signature_fields(tags)
    except (dkim.ValidationError, ValueError) as exc:  # ValueError: t= or x= of 4300+ digits
        reason = str(exc)[:200]
        return _Signature(index, domain, selector, algorithm, None,
                          DKIMResult("neutral", domain, selector, algorithm, reason))
    name = key_name(tags[b"s"], tags[b"d"])
    if name is None:
        return _Signature(index, domain, selector, algorithm, None,
                          DKIMResult("neutral", domain, selector, algorithm, "bad d= or s="))
    given = tags.get(b"l", b"").strip()
    length = int(given) if given.isdigit() else None  # dkimpy's check lets an empty l= by
    return _Signature(index, domain, selector, algorithm, name, None, length)


def _key_problem(sig: _Signature, keys: KeyRecords) -> DKIMResult | None:
    """temperror or permerror from the key record, None when the key is usable."""
    assert sig.key is not None
    if sig.key in keys.failed:
        return DKIMResult("temperror", sig.domain, sig.selector, sig.algorithm,
                          "key look-up failed")
    why = keys.unusable.get(sig.key) or (None if keys.txt(sig.key) else "no key")
    if why is not None:
        return DKIMResult("permerror", sig.domain, sig.selector, sig.algorithm, why)
    return None


def _verify_in_thread(message: bytes, pending: list[_Signature], keys: KeyRecords,
                      expires: float) -> list[DKIMResult]:
    """dkimpy on the message for each pending signature (a worker thread), none begun after
    ``expires`` (:func:`time.monotonic`): the session has had its temperror by then, and the
    thread is wanted by the next message."""
    results: list[DKIMResult] = []
    if time.monotonic() >= expires:  # waited for the thread until the deadline
        return results
    try:
        verifier = dkim.DKIM(message, minkey=MIN_RSA_BITS)
    except (dkim.DKIMException, IndexError) as exc:
        return [DKIMResult("neutral", s.domain, s.selector, s.algorithm,
                           f"the message cannot be read: {exc}"[:200]) for s in pending]
    for sig in pending:
        if time.monotonic() >= expires:
            break
        try:
            ok = verifier.verify(idx=sig.index, dnsfunc=keys.txt)
            result: Result = "pass" if ok else "fail"
            reason = "" if ok else "signature did not verify"
            if ok and sig.length is not None:
                # RFC 6376 8.2: a pass all the same, but content may have been appended.
                reason = f"l={sig.length}: only that many body octets are signed"
        except dkim.ValidationError as exc:  # body hash mismatch among them: a changed message
            result, reason = "fail", str(exc)
        except dkim.KeyFormatError as exc:
            result, reason = "permerror", str(exc)
        except dkim.DKIMException as exc:
            result, reason = "neutral", str(exc)
        except Exception as exc:  # malformed input dkimpy did not expect (bad base64, ...)
            result, reason = "neutral", f"{type(exc).__name__}: {exc}"
        results.append(DKIMResult(result, sig.domain, sig.selector, sig.algorithm, reason[:200],
                                  sig.length))
    return results


async def verify(dns: DNSClient, header: bytes, *,
                 load: Callable[[], Awaitable[bytes | None]] | None = None,
                 max_size: int = MAX_SIZE, deadline: float = DEADLINE) -> tuple[DKIMResult, ...]:
    """Every DKIM-Signature of ``header`` verified (see the module docstring); ``load`` gives
    the whole message (awaited only when a signature needs verifying). Never raises."""
    sigs = signatures(header)
    if not sigs:
        return ()
    keys = await fetch_keys(dns, [s.key for s in sigs if s.key is not None and s.early is None])
    known: dict[int, DKIMResult] = {}
    pending: list[_Signature] = []
    for sig in sigs:
        early = sig.early or _key_problem(sig, keys)
        if early is not None:
            known[sig.index] = early
        else:
            pending.append(sig)
    if pending:
        for sig, result in zip(pending, await _verify(pending, keys, load, max_size, deadline)):
            known[sig.index] = result
    return tuple(known[s.index] for s in sigs)


async def _verify(pending: list[_Signature], keys: KeyRecords,
                  load: Callable[[], Awaitable[bytes | None]] | None, max_size: int,
                  deadline: float) -> list[DKIMResult]:
    def all_(result: Result, reason: str) -> list[DKIMResult]:
        return [DKIMResult(result, s.domain, s.selector, s.algorithm, reason) for s in pending]

    data = await load() if load is not None else None
    if data is None:
        return all_("temperror", "the message was not available")
    if len(data) > max_size:
        return all_("policy", f"message larger than {max_size} octets not verified")
    try:
        async with asyncio.timeout(deadline):
            done = await asyncio.get_running_loop().run_in_executor(
                CRYPTO, _verify_in_thread, data, pending, keys, time.monotonic() + deadline)
    except TimeoutError:
        return all_("temperror", f"no result within {deadline:g} s")
    late = all_("temperror", f"no result within {deadline:g} s")
    return done + late[len(done):]


class DKIMCheck(Check):
    """DKIM verification at data_end (see the module docstring). Verifies when ``[checks]
    dkim`` is on, and also when only ``dmarc`` is, which needs the results.

    Reads ``ctx.client_ip``, ``ctx.user``, ``ctx.tx.header`` and, when there is a signature,
    the message through ``ctx.tx.message``; writes ``ctx.tx.auth["dkim"]`` (a tuple of
    :class:`DKIMResult`) and the result ``"dkim"`` for the log."""

    name = "dkim"

    def __init__(self, checks: ChecksSettings, dns: DNSClient, trusted: Callable[[str], bool],
                 *, max_size: int = MAX_SIZE, deadline: float = DEADLINE) -> None:
        self.active = checks.dkim != "off" or checks.dmarc != "off"
        self.dns = dns
        self.trusted = trusted
        self.max_size = max_size
        self.deadline = deadline

    async def data_end(self, ctx: Context) -> Verdict:
        if not self.active or exempt(ctx, self.trusted):
            return CONTINUE
        results = await verify(self.dns, ctx.tx.header or b"", load=lambda: message_bytes(ctx),
                               max_size=self.max_size, deadline=self.deadline)
        ctx.tx.auth["dkim"] = results
        summary = "; ".join(r.summary for r in results) or "none"
        return Verdict.cont(results={"dkim": summary})

