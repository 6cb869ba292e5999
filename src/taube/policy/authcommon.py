"""What the mail authentication checks (:mod:`.spf`, :mod:`.dkim`, :mod:`.arc`, :mod:`.dmarc`,
:mod:`.authresults`) share: who is exempt, the header section as fields with their octet
ranges, the From: domain, domain name syntax, DKIM key records fetched ahead of the
verification, and the worker threads that verify.

dkimpy verifies synchronously and asks the DNS as it goes. Here the key records a message
needs are fetched first, asynchronously and all at once, through the :class:`DNSClient` (its
deadline, its cache); dkimpy then runs in one of this module's worker threads with a look-up
function that only answers from what was fetched (:class:`KeyRecords`), so a slow DNS costs the
one session that waits for it and never a thread.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import dkim
import idna
from dkim.util import parse_tag_value

from ..lookup import DNSClient, TempError
from .pipeline import Context

__all__ = ["CRYPTO", "MAX_RSA_BITS", "MAX_RSA_EXPONENT_BITS", "MIN_RSA_BITS", "FromDomain",
           "HeaderField", "KeyRecords", "ascii_domain", "complete_lines", "exempt", "fetch_keys",
           "from_domain", "header_fields", "key_name", "key_problem",
           "message_bytes", "printable", "release_message", "safe_token", "unfold"]

log = logging.getLogger("taube.policy.auth")

CRYPTO = ThreadPoolExecutor(max_workers=2, thread_name_prefix="taube-verify")
"""Signature verification (canonicalisation, hashing, RSA/Ed25519) is CPU work: two threads on
a small machine, so a burst of signed mail never takes every core from the sessions."""

_MESSAGE_KEY = "_message"  # where message_bytes keeps the message for the next check


def exempt(ctx: Context, trusted: Callable[[str], bool]) -> bool:
    """Clients in trusted_networks and authenticated clients are not checked: their mail is
    ours to sign, not to verify."""
    return bool(ctx.user) or trusted(ctx.client_ip)


# -- the header section ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class HeaderField:
    """One header field as received: ``name`` as written (ASCII), ``value`` the octets after the
    colon with any folding kept and without the final line end; ``start``/``end`` its octets in
    the header section, its line end(s) included."""

    name: str
    value: bytes
    start: int
    end: int

    def is_named(self, name: str) -> bool:
        return self.name.lower() == name.lower()


_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")  # RFC 5322 3.6.8: printable, no colon


def header_fields(header: bytes, names: Iterable[str] | None = None) -> list[HeaderField]:
    """The fields of a header section (RFC 5322 section 2.2), continuation lines (starting with
    a space or tab, section 2.2.3) joined to their field; only those named ``names`` (in any
    case) when given. Lines that are no field (no colon, a bad name) are skipped; a bare LF
    ends a line as CRLF does.

    Every field is looked at, however many there are: the session bounds the section's octets
    ([smtp] max_header_size), and a count limit here would let a field put below it go unseen
    (a forged Authentication-Results, a second From:)."""
    wanted = None if names is None else {n.lower() for n in names}
    fields: list[HeaderField] = []
    pos, size = 0, len(header)
    while pos < size:
        end = _line_end(header, pos)
        if header[pos:end] in (b"\r\n", b"\n"):
            break  # the blank line: the body follows
        while end < size and header[end:end + 1] in (b" ", b"\t"):
            end = _line_end(header, end)
        name, colon, value = header[pos:end].partition(b":")
        # RFC 5322 4.5.8: obsolete white space before the colon; a line end there too (no
        # syntax allows it, but a lax reader still sees the field).
        name = name.rstrip(b" \t\r\n")
        if colon and _FIELD_NAME.fullmatch(name):
            text = name.decode("ascii")
            if wanted is None or text.lower() in wanted:
                fields.append(HeaderField(name=text, value=_chomp(value), start=pos, end=end))
        pos = end
    return fields


def _line_end(data: bytes, pos: int) -> int:
    newline = data.find(b"\n", pos)
    return len(data) if newline < 0 else newline + 1


def _chomp(value: bytes) -> bytes:
    if value.endswith(b"\r\n"):
        return value[:-2]
    return value[:-1] if value.endswith(b"\n") else value


def complete_lines(header: bytes) -> bytes:
    """The header section up to its last line end: the session keeps a bounded prefix of the
    message, which may end inside a line, and a parser must not take that part for a field."""
    return header[:header.rfind(b"\n") + 1]


def unfold(value: bytes) -> bytes:
    """RFC 5322 section 2.2.3: unfolding removes the line ends before folding white space."""
    return re.sub(rb"\r?\n(?=[ \t])", b"", value)


# -- domain names ---------------------------------------------------------------------------

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_TOKEN = re.compile(r"[A-Za-z0-9._-]{1,255}")


def ascii_domain(name: str) -> str | None:
    """``name`` as a lower-case ASCII domain of at least two labels (U-labels converted to
    A-labels, RFC 5890 and 5891), or None when it is none: an address literal, with or without its
    brackets (an all-numeric top label is no domain, RFC 3696 section 2), a label longer than 63
    octets or empty, more than 253 octets (RFC 1035 2.3.4). Underscores are allowed, as DNS
    names (not host names) may carry them."""
    text = name.strip().rstrip(".")
    if not text or text.startswith("["):
        return None
    if not text.isascii():
        # IDNA2008 with the UTS 46 mapping, as registries and mail clients have it: Python's
        # own "idna" codec is IDNA2003, which maps "ß" to "ss" and so names another domain.
        try:
            text = idna.encode(text, uts46=True, transitional=False).decode("ascii")
        except UnicodeError:  # idna.IDNAError among them
            return None
    text = text.lower()
    labels = text.split(".")
    if (len(text) > 253 or len(labels) < 2 or labels[-1].isdigit()
            or not all(_LABEL.fullmatch(lb) for lb in labels)):
        return None
    return text


def printable(text: str | bytes, limit: int = 200) -> str:
    """Someone else's text (a DNS list's TXT reason, an SPF explanation) made fit for a log line
    or a reply: printable ASCII only (line ends and other controls would start a line of
    their own), white space runs as one space, at most ``limit`` characters."""
    if isinstance(text, bytes):
        text = text[:4 * limit].decode("ascii", "replace")
    chars = "".join(c if " " <= c <= "~" else " " for c in text[:4 * limit])
    clean = " ".join(chars.split())
    return clean if len(clean) <= limit else clean[:limit - 3] + "..."


def safe_token(value: str) -> str | None:
    """``value`` when it is a plain token (letters, digits, ``.``, ``_``, ``-``), such as a
    domain or a selector, fit to be written into a header field unquoted; else None."""
    return value if _TOKEN.fullmatch(value) else None


@dataclass(frozen=True, slots=True)
class FromDomain:
    """The RFC5322.From author domains (RFC 7489 sections 3.1.1 and 6.6.1), or why there are
    none: ``status`` is "ok" (``domains``: the distinct valid domains of every address of every
    From: field, in order), "missing" (no From: field) or "invalid" (no address with a valid
    domain in any From: field). ``reason`` says what was odd (several fields or addresses, an
    address left out)."""

    status: Literal["ok", "missing", "invalid"]
    domains: tuple[str, ...] = ()
    reason: str = ""

    @property
    def domain(self) -> str:
        """The first author domain ("" when there is none)."""
        return self.domains[0] if self.domains else ""


def from_domain(fields: Iterable[HeaderField]) -> FromDomain:
    """The author domains of RFC 7489 section 6.6.1. Every address of every From: field counts:
    RFC 5322 allows one field, with several addresses, but a reader shows what it finds, and an
    author the check left out (a second field, a second address, one beside an address that
    cannot be read) is one a spoofer would hide behind."""
    found = [f for f in fields if f.is_named("From")]
    if not found:
        return FromDomain("missing", reason="no From: field")
    domains: list[str] = []
    addresses = left_out = 0
    for author in found:
        text = unfold(author.value).decode("utf-8", "replace")
        try:
            parsed = [addr for _, addr in email.utils.getaddresses([text]) if addr]
        except Exception:  # the parser's own trouble with a hostile field: no author in it
            parsed = []
        left_out += not parsed
        for address in parsed:
            addresses += 1
            local, at, domain = address.rpartition("@")
            checked = ascii_domain(domain) if at and local else None
            if checked is None:
                left_out += 1
            elif checked not in domains:
                domains.append(checked)
    odd = [f"{len(found)} From: fields"] if len(found) > 1 else []
    odd += [f"{addresses} addresses"] if addresses > 1 else []
    odd += [f"{left_out} without a valid domain"] if left_out else []
    if not domains:
        return FromDomain("invalid", reason="no valid domain in From:")
    return FromDomain("ok", tuple(domains), ", ".join(odd))


# -- key records ----------------------------------------------------------------------------

MIN_RSA_BITS = 1024
"""RFC 8301 section 3.2: shorter RSA keys are not accepted."""

MAX_RSA_BITS = 16384
"""Longest RSA modulus used, as OpenSSL (OPENSSL_RSA_MAX_MODULUS_BITS); RFC 8301 asks
verifiers for 4096. dkimpy verifies in pure Python, so the cost grows with the square of this."""

MAX_RSA_EXPONENT_BITS = 64
"""Longest RSA public exponent used, as OpenSSL for large moduli (OPENSSL_RSA_MAX_PUBEXP_BITS);
real keys have 65537 (17 bits). An 8192-bit exponent on an 8192-bit modulus costs 2.5 s per
verification, and the signer's own zone chooses the key."""


@dataclass(frozen=True, slots=True)
class KeyRecords:
    """The TXT records of DKIM key names (``selector._domainkey.domain``, RFC 6376 3.6.2.1)
    fetched ahead of a verification: ``records`` by lower-case name (an empty tuple: no such
    name or no TXT there), ``failed`` the names whose look-up failed temporarily,
    ``unusable`` the names whose key cannot or must not be used, with why (those are not in
    ``records``: no verifier ever gets them)."""

    records: dict[str, tuple[bytes, ...]]
    failed: frozenset[str] = frozenset()
    unusable: Mapping[str, str] = field(default_factory=dict)

    def txt(self, name: bytes | str, timeout: float = 0.0) -> bytes | None:
        """dkimpy's ``dnsfunc(name, timeout=...)``: the first TXT record of a fetched name
        (RFC 6376 3.6.2.2 leaves several records undefined; dkimpy's own look-up takes the
        first too), None for anything else. It never asks the DNS."""
        key = _key_name(name)
        found = self.records.get(key) if key is not None else None
        return found[0] if found else None


def key_problem(name: str, record: bytes) -> str | None:
    """Why the key record (RFC 6376 section 3.6.1) of ``name`` cannot be used, or None: revoked
    (an empty p=), unreadable (its syntax, an unknown k=, a key dkimpy cannot parse), an RSA
    key shorter than :data:`MIN_RSA_BITS`, or one too costly to verify with (see
    :data:`MAX_RSA_BITS`, :data:`MAX_RSA_EXPONENT_BITS`)."""
    try:
        if parse_tag_value(record).get(b"p", b"x").strip() == b"":
            return "key revoked"
        public, bits, ktag, _ = dkim.evaluate_pk(name.encode(), record)
    except Exception as exc:  # the record is the signer's text: whatever dkimpy makes of it
        return printable(f"unusable key: {exc}")
    if ktag != b"rsa":
        return None
    if bits < MIN_RSA_BITS:
        return "key too short"
    exponent_bits = int(public["publicExponent"]).bit_length()
    if bits > MAX_RSA_BITS or exponent_bits > MAX_RSA_EXPONENT_BITS:
        return (f"unusable key: RSA modulus of {bits} bits, exponent of {exponent_bits} bits "
                f"(at most {MAX_RSA_BITS} and {MAX_RSA_EXPONENT_BITS})")
    return None


def _key_name(name: bytes | str) -> str | None:
    if isinstance(name, bytes):
        try:
            name = name.decode("ascii")
        except UnicodeDecodeError:
            return None
    return name.strip().rstrip(".").lower()


def key_name(selector: bytes, domain: bytes) -> str | None:
    """``selector._domainkey.domain`` (RFC 6376 3.6.2.1) when both are plain ASCII names."""
    try:
        name = f"{selector.decode('ascii').strip()}._domainkey.{domain.decode('ascii').strip()}"
    except UnicodeDecodeError:
        return None
    return _key_name(name) if ascii_domain(name) else None


async def fetch_keys(dns: DNSClient, names: Iterable[str]) -> KeyRecords:
    """The TXT records of every name, asked all at once, each key checked
    (:func:`key_problem`); each look-up is bounded by the client's deadline, so the whole is
    too."""
    unique = list(dict.fromkeys(names))

    async def one(name: str) -> tuple[bytes, ...] | None:
        try:
            answer = await dns.query(name, "TXT")
        except TempError as exc:
            log.info("DKIM key %s: %s", name, exc)
            return None
        return tuple(answer.texts())

    answers = await asyncio.gather(*(one(n) for n in unique))
    records = {n: a for n, a in zip(unique, answers) if a is not None}
    unusable = {n: why for n, a in records.items() if a
                and (why := key_problem(n, a[0])) is not None}
    return KeyRecords(records={n: a for n, a in records.items() if n not in unusable},
                      failed=frozenset(n for n, a in zip(unique, answers) if a is None),
                      unusable=unusable)


# -- the message ----------------------------------------------------------------------------

async def message_bytes(ctx: Context) -> bytes | None:
    """The whole message from ``ctx.tx.message``, read once per transaction and kept for the
    next check that needs it (DKIM, then ARC); None when the session gives none."""
    kept = ctx.tx.auth.get(_MESSAGE_KEY)
    if isinstance(kept, bytes):
        return kept
    if ctx.tx.message is None:
        log.warning("no message to verify signatures over (ctx.tx.message is not set)")
        return None
    data = await ctx.tx.message()
    ctx.tx.auth[_MESSAGE_KEY] = data
    return data


def release_message(ctx: Context) -> None:
    """Forget the message :func:`message_bytes` kept, once no check needs it any more: it is
    not held while the session commits."""
    ctx.tx.auth.pop(_MESSAGE_KEY, None)
