"""DKIM signing of the mail we send (RFC 6376 section 5; rsa-sha256 per RFC 8301, ed25519-sha256
per RFC 8463).

Which key signs (the issue's rule): the domain of the ``From:`` header if we hold a key for it,
else the envelope sender's domain when ``From:`` is none of ours. Each key (selector) of that
domain adds one signature, so a domain with an RSA and an Ed25519 key is dual-signed as RFC 8463
section 1 suggests: verifiers that do not know Ed25519 still find the RSA one.

Every signature is ``c=relaxed/relaxed`` (it survives the whitespace and folding changes of
relays, RFC 6376 section 3.4), covers the header fields RFC 6376 section 5.4.1 recommends that
are present, and lists ``From`` once more than it occurs ("oversigning", section 8.15): a second
``From:`` added on the way breaks the signature instead of being shown to the reader.

The body is read from a binary file in chunks and hashed incrementally (:mod:`.canon`), so a big
message costs no memory; dkimpy then builds and signs the header with that body hash
(``DomainSigner.gen_header``: the header canonicalization, the ``b=`` computation and the
folding are dkimpy's). An RSA signature is the one exception: dkimpy computes it in pure Python
(10-20 ms for a 2048-bit key), so :func:`_rsa_field` hashes exactly what ``gen_header`` hashes,
with dkimpy's own field building, folding and header canonicalization, and has OpenSSL (through
``cryptography``) make the RSASSA-PKCS1-v1_5 signature over that SHA-256 digest (RFC 6376
section 3.3.1, RFC 8017 section 8.2): the same octets, since that signature is deterministic, at
about a hundredth of the cost. Signing is CPU work: :meth:`Signer.sign_async` runs it in a
worker thread so the event loop keeps serving other sessions.

Keys are loaded once and kept; before each use the key files' identities (inode, mtime, size:
one directory read and a stat per key) are compared, so a key added, replaced or deleted with
``taube dkim`` is seen by the next message without a restart.
"""

from __future__ import annotations

import asyncio
import base64
import email.policy
import functools
import hashlib
import io
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import dkim
import nacl.signing
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from .canon import RelaxedBodyHash
from .keys import DKIMKeyError, KeyInfo, KeyStore, StoredKey, normalize_domain

__all__ = [
    "CHUNK",
    "MAX_FROM",
    "MAX_HEADER",
    "OVERSIGNED",
    "SIGNED_HEADERS",
    "Signature",
    "Signer",
    "SigningResult",
]

log = logging.getLogger(__name__)

# RFC 6376 section 5.4.1's list, with the fields dkimpy adds to it (Sender, Message-ID, the MIME
# fields, Resent-Sender/-Message-ID): whatever a reader sees or a filter acts on. Never Received,
# Return-Path or other fields that relays legitimately add or change (section 5.4.1, last list).
SIGNED_HEADERS: tuple[bytes, ...] = (
    b"from", b"sender", b"reply-to", b"subject", b"date", b"message-id", b"to", b"cc",
    b"mime-version", b"content-type", b"content-transfer-encoding", b"content-id",
    b"content-description", b"resent-date", b"resent-from", b"resent-sender", b"resent-to",
    b"resent-cc", b"resent-message-id", b"in-reply-to", b"references", b"list-id", b"list-help",
    b"list-unsubscribe", b"list-subscribe", b"list-post", b"list-owner", b"list-archive",
)
# Listed once more than present (RFC 6376 section 8.15): the From: a reader sees is the signed one.
OVERSIGNED: tuple[bytes, ...] = (b"from",)

MAX_HEADER = 1024 * 1024  # the SMTP session refuses far smaller header sections already
CHUNK = 1024 * 1024  # body read size: bounded memory for any message size
# The stdlib's address parser is slow on some pathological input; a real From: is one line of
# at most 998 octets (RFC 5322 2.1.1), a few folded lines with several addresses at most.
MAX_FROM = 8192

_ALGORITHMS = {"rsa": b"rsa-sha256", "ed25519": b"ed25519-sha256"}
_CANONICALIZATION = dkim.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
_FIELD = b"DKIM-Signature"
# Seconds Signer.has_keys() keeps its answer (see there).
KEYS_RECHECK = 1.0

# Signing in worker threads: the RSA and Ed25519 arithmetic and the body hash are CPU work that
# must not stall the event loop. Two threads: the machine has two cores and the queue runner
# uses the other process.
_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="taube-dkim")


@dataclass(frozen=True, slots=True, kw_only=True)
class Signature:
    """One ``DKIM-Signature`` made: ``header`` is the complete field, CRLF-terminated."""

    domain: str
    selector: str
    algorithm: str  # "rsa-sha256" or "ed25519-sha256"
    header: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class SigningResult:
    """What signing one message gave. ``domain``: the signing domain chosen (None: no key for
    the From: domain nor the envelope sender's). ``errors``: for the log, one per key or
    message problem that left a signature out (an unparsable header section, a broken key)."""

    domain: str | None = None
    signatures: tuple[Signature, ...] = ()
    errors: tuple[str, ...] = ()

    @property
    def header(self) -> bytes:
        """Every signature's field, to prepend to the message (empty when none was made)."""
        return b"".join(s.header for s in self.signatures)


@dataclass(frozen=True, slots=True)
class _Key:
    """A stored key in the form dkimpy signs with."""

    info: KeyInfo
    algorithm: bytes
    private: Any  # a cryptography RSAPrivateKey, or a nacl SigningKey


@dataclass(slots=True)
class _Cached:
    stamps: dict[str, tuple[int, int, int]]
    keys: tuple[_Key, ...] = field(default_factory=tuple)


class _HeaderTooLarge(Exception):
    pass


def _prepare(stored: StoredKey) -> _Key:
    key = stored.private
    if isinstance(key, ed25519.Ed25519PrivateKey):
        # dkimpy signs Ed25519 with PyNaCl from the 32-octet seed (RFC 8032 section 5.1.5).
        seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
        return _Key(stored.info, b"ed25519-sha256", nacl.signing.SigningKey(seed))
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"not an RSA or Ed25519 key: {type(key).__name__}")
    return _Key(stored.info, b"rsa-sha256", key)


def _rsa_field(signer: dkim.DKIM, tags: list[tuple[bytes, bytes]], include: tuple[bytes, ...],
               key: rsa.RSAPrivateKey) -> bytes:
    """The DKIM-Signature value (after the colon, CRLF-terminated) that dkimpy's ``gen_header``
    makes for these ``tags`` (``b=`` last, a placeholder) with relaxed/relaxed, but signed by
    OpenSSL. Step for step as dkimpy 1.1: the tags joined and folded, ``b=`` emptied, the signed
    fields and then this field canonicalized and hashed (RFC 6376 section 3.7), the digest
    signed with RSASSA-PKCS1-v1_5 (section 3.3.1), ``b=`` filled in and the value folded again."""
    value = dkim.fold(b"; ".join(b"=".join(tag) for tag in tags), namelen=len(_FIELD), linesep=b"\r\n")
    value = dkim.RE_BTAG.sub(b"\\1", value)
    digest = hashlib.sha256()
    dkim.hash_headers(digest, _CANONICALIZATION, _CANONICALIZATION.canonicalize_headers(signer.headers),
                      include, (_FIELD, b" " + value), dict(tags))
    signature = key.sign(digest.digest(), padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    signed = [(name, base64.b64encode(signature) if name == b"b" else tag) for name, tag in tags]
    return dkim.fold(b"; ".join(b"=".join(tag) for tag in signed) + b"\r\n", namelen=len(_FIELD),
                     linesep=b"\r\n")


def signed_fields(names: Iterable[bytes]) -> tuple[bytes, ...]:
    """The ``h=`` list for a header section with fields ``names`` (in order): each recommended
    field as often as it occurs, then the oversigned ones once more (so ``from`` is always
    there, as RFC 6376 section 5.4 requires, even for a message without From:)."""
    present = [n.lower() for n in names if n.lower() in SIGNED_HEADERS]
    return tuple(present) + OVERSIGNED


def from_domains(fields: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """The domains of the From: addresses, in order (RFC 5322 section 3.6.2 allows several);
    a value that does not parse, or is longer than :data:`MAX_FROM`, gives none."""
    domains: list[str] = []
    for name, value in fields:
        if name.strip().lower() != b"from" or len(value) > MAX_FROM:
            continue
        text = value.decode("utf-8", "replace").replace("\r\n", "").replace("\n", "").strip()
        try:
            parsed = email.policy.default.header_factory("From", text)
            addresses = parsed.addresses  # type: ignore[attr-defined]
        except Exception:  # the stdlib parser's errors are not one type; unparsable means none
            continue
        domains.extend(a.domain for a in addresses if a.domain)
    return domains


def _normalized(domain: str) -> str | None:
    try:
        return normalize_domain(domain)
    except DKIMKeyError:
        return None


class Signer:
    """Signs outbound messages with the keys of a :class:`~taube.signing.keys.KeyStore`.

    ``trusted(client_ip)``: whether a client is in trusted_networks (e.g.
    ``RelayPolicy(settings.networks()).is_trusted``); with ``user`` it decides :meth:`applies`.
    ``clock`` gives the ``t=`` time (RFC 6376 section 3.5); ``monotonic`` paces
    :meth:`has_keys`. ``executor`` runs :meth:`sign_async` (default: a small pool of this
    module's own). Thread-safe.
    """

    def __init__(self, keys: KeyStore, *, trusted: Callable[[str], bool] = lambda ip: False,
                 clock: Callable[[], float] = time.time, executor: Executor | None = None,
                 max_header: int = MAX_HEADER,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.keys = keys
        self._trusted = trusted
        self._clock = clock
        self._monotonic = monotonic
        self._executor = executor or _POOL
        self._max_header = max_header
        self._lock = threading.Lock()
        self._cache: dict[str, _Cached] = {}
        self._any_keys: tuple[int, bool] | None = None  # (mtime of dkim/, a domain directory in it)
        self._keys_checked = -KEYS_RECHECK  # when has_keys() last looked (monotonic)
        self._keys_answer = False

    def applies(self, *, client_ip: str, user: str | None) -> bool:
        """Whether mail from this client is ours to sign: submitted by an authenticated user
        or received from trusted_networks (never mail merely passing through), and there is a
        key at all (see :meth:`has_keys`)."""
        return (user is not None or self._trusted(client_ip)) and self.has_keys()

    def has_keys(self) -> bool:
        """Whether the key store holds a domain's key directory, so that a server without keys
        does not read every message back to find that out. Asked on the event loop for every
        message from trusted networks and authenticated users: the answer is kept for
        :data:`KEYS_RECHECK` seconds, then one stat of ``dkim/`` (a listing only when it
        changed). A system call on the loop hands the interpreter lock to the commit threads
        and waits to get it back, which cost more than the stat itself. A domain added or
        removed with ``taube dkim`` is seen within that second."""
        now = self._monotonic()
        if now - self._keys_checked < KEYS_RECHECK:
            return self._keys_answer
        self._keys_answer = self._look_for_keys()
        self._keys_checked = now
        return self._keys_answer

    def _look_for_keys(self) -> bool:
        try:
            stamp = os.stat(self.keys.root).st_mtime_ns
        except OSError:
            return False
        # A change within the file system's timestamp granularity may keep the same mtime: a
        # directory changed in the last two seconds is listed every time (as git treats a
        # "racily clean" index entry).
        recent = time.time_ns() - stamp < 2_000_000_000
        if recent or self._any_keys is None or self._any_keys[0] != stamp:
            try:
                with os.scandir(self.keys.root) as entries:
                    found = any(entry.is_dir() for entry in entries)
            except OSError:
                found = False
            self._any_keys = (stamp, found)
        return self._any_keys[1]

    def keys_for(self, domain: str) -> tuple[_Key, ...]:
        """The keys of ``domain`` (normalized), from the cache unless a key file changed."""
        try:
            stamps = self.keys.stamps(domain)
        except DKIMKeyError as exc:  # the domain's key directory cannot be read
            log.warning("dkim: %s", exc)
            return ()
        if not stamps:  # no key: nothing kept, so the cache holds only domains with keys
            with self._lock:
                self._cache.pop(domain, None)
            return ()
        with self._lock:
            cached = self._cache.get(domain)
            if cached is not None and cached.stamps == stamps:
                return cached.keys
        # Read outside the lock (file I/O); stamps taken before the read, so a change during
        # it shows as a difference next time and the keys are read again.
        loaded: list[_Key] = []
        for stored in self._stored(domain):
            try:
                loaded.append(_prepare(stored))
            except ValueError as exc:  # a key type that signs no DKIM (a DSA or EC key file)
                log.warning("dkim: %s: %s", stored.info.path, exc)
        with self._lock:
            self._cache[domain] = _Cached(stamps, tuple(loaded))
        return tuple(loaded)

    def _stored(self, domain: str) -> list[StoredKey]:
        try:
            return self.keys.keys_for(domain)
        except DKIMKeyError as exc:
            log.warning("dkim: %s", exc)
            return []

    def choose(self, fields: list[tuple[bytes, bytes]], sender: str) -> tuple[str, tuple[_Key, ...]] | None:
        """The signing domain and its keys: the first From: domain we hold a key for, else the
        envelope sender's domain (``sender`` "" for the null sender); None if neither."""
        candidates = from_domains(fields)
        if "@" in sender:
            candidates.append(sender.rpartition("@")[2])
        for candidate in candidates:
            domain = _normalized(candidate)
            if domain is not None and (keys := self.keys_for(domain)):
                return domain, keys
        return None

    def sign(self, message: BinaryIO, *, sender: str) -> SigningResult:
        """Sign the message read from ``message`` (a binary file at the message's first
        octet; CRLF line ends) as mail from ``sender``. Reads to the end of the file when a key
        applies, else only the header section. Bad input (an unparsable or oversized header
        section, a broken key) gives a result with ``errors``, never an exception; an OSError
        reading the file is raised."""
        try:
            header = self._read_header(message)
        except _HeaderTooLarge:
            return SigningResult(errors=(f"header section larger than {self._max_header} octets: not signed",))
        if header[:1] in (b" ", b"\t"):  # dkimpy's parser fails on it with an IndexError
            return SigningResult(errors=("header section not signable: it starts with a continuation line",))
        try:
            fields = [(bytes(n), bytes(v)) for n, v in dkim.rfc822_parse(header)[0]]
        except dkim.MessageFormatError as exc:
            return SigningResult(errors=(f"header section not signable: {exc}",))
        chosen = self.choose(fields, sender)
        if chosen is None:
            return SigningResult()
        domain, keys = chosen
        body = RelaxedBodyHash()  # SHA-256 for both algorithms (RFC 8463 section 3)
        while chunk := message.read(CHUNK):
            body.update(chunk)
        bh = body.bh()
        include = signed_fields(name for name, _ in fields)
        now = int(self._clock())
        signatures: list[Signature] = []
        errors: list[str] = []
        for key in keys:
            try:
                signatures.append(self._sign_header(header, key, domain, include, bh, now))
            except (dkim.DKIMException, ValueError) as exc:
                errors.append(f"{key.info.selector}._domainkey.{domain}: {exc}")
        return SigningResult(domain=domain, signatures=tuple(signatures), errors=tuple(errors))

    def sign_bytes(self, message: bytes, *, sender: str) -> SigningResult:
        """:meth:`sign` for a message in memory."""
        return self.sign(io.BytesIO(message), sender=sender)

    async def sign_async(self, message: BinaryIO, *, sender: str) -> SigningResult:
        """:meth:`sign` in a worker thread (the file must not be used meanwhile)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(self.sign, message, sender=sender))

    # -- inside ----------------------------------------------------------------------------

    def _read_header(self, message: BinaryIO) -> bytes:
        """The header section without the empty line that ends it (all of a message that has
        no body); the file is left at the body's first octet."""
        header = bytearray()
        while True:
            line = message.readline(self._max_header + 1 - len(header))
            if not line or line in (b"\r\n", b"\n"):
                return bytes(header)
            header += line
            if len(header) > self._max_header:
                raise _HeaderTooLarge

    def _sign_header(self, header: bytes, key: _Key, domain: str, include: tuple[bytes, ...],
                     bh: bytes, now: int) -> Signature:
        signer = dkim.DKIM(header, signature_algorithm=key.algorithm, linesep=b"\r\n")
        signer.hasher = dkim.HASH_ALGORITHMS[key.algorithm]  # as DKIM.sign sets it
        selector = key.info.selector.encode("ascii")
        # The tags of DKIM.sign, with our body hash (RFC 6376 section 3.5). b= is a placeholder
        # that forces b= onto its own folded line, so that filling it in leaves the rest as hashed.
        tags = [
            (b"v", b"1"),
            (b"a", key.algorithm),
            (b"c", _CANONICALIZATION.to_c_value()),
            (b"d", domain.encode("ascii")),
            (b"s", selector),
            (b"t", str(now).encode("ascii")),
            (b"h", b" : ".join(include)),
            (b"bh", bh),
            (b"b", b"0" * 60),
        ]
        if key.algorithm == b"rsa-sha256":
            value = _rsa_field(signer, tags, include, key.private)
        else:
            value = signer.gen_header(tags, include, _CANONICALIZATION, _FIELD, key.private)
        return Signature(domain=domain, selector=key.info.selector,
                         algorithm=key.algorithm.decode("ascii"), header=_FIELD + b": " + value)
