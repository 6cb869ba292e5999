"""DKIM signing keys: generated or imported, kept under the data directory, and the DNS record
each one needs.

Layout: ``<data_dir>/dkim/<domain>/<selector>.pem``, one unencrypted PKCS#8 PEM private key per
file, the directories mode 0700 and the files 0600 (only the server's user reads them). Files are
written through :func:`taube.store.durable.replace_file`: a reader (the signer, ``taube dkim
list``) sees a whole key or none, never half of one.

Two key types (RFC 8301 section 3.2, RFC 8463):

* ``rsa``: 1024 to 4096 bits, 2048 by default (RFC 8301: signers MUST use at least 1024 and
  SHOULD use 2048; verifiers need not go past 4096);
* ``ed25519``: published as the raw 32-octet public key (RFC 8463 section 4), not an ASN.1 one.

The record to publish (RFC 6376 section 3.6.1, 3.6.2.2)::

    sel._domainkey.example.org. IN TXT "v=DKIM1; k=rsa; p=MIIBIjANBgkq..."

A TXT record is a sequence of character-strings of at most 255 octets each (RFC 1035 section
3.3); verifiers join them (RFC 6376 section 3.6.2.2), so a long key is split over several quoted
strings on the one line.

Every operation raises one error type, :class:`DKIMKeyError`, whose message is meant for the
administrator and never contains key material.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa, x448, x25519

from ..store import durable

__all__ = [
    "DEFAULT_RSA_BITS",
    "KEY_TYPES",
    "MAX_PEM_SIZE",
    "MAX_RSA_BITS",
    "MIN_RSA_BITS",
    "DKIMKeyError",
    "KeyInfo",
    "KeyStore",
    "KeyType",
    "PrivateKey",
    "StoredKey",
    "dns_record",
    "split_txt",
]

log = logging.getLogger(__name__)

KeyType = Literal["rsa", "ed25519"]
KEY_TYPES: tuple[KeyType, ...] = ("rsa", "ed25519")
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

MIN_RSA_BITS = 1024  # RFC 8301 section 3.2: shorter keys MUST NOT be used (nor accepted)
MAX_RSA_BITS = 4096  # RFC 8301 section 3.2: verifiers MUST handle keys up to 4096 bits, no more
DEFAULT_RSA_BITS = 2048  # RFC 8301 section 3.2: signers SHOULD use at least 2048 bits
MAX_PEM_SIZE = 64 * 1024  # a 4096-bit RSA key in PEM is about 3.3 KB: anything far larger is not one
_TXT_STRING = 255  # RFC 1035 section 3.3: one character-string holds at most 255 octets

DIR_MODE = 0o700
KEY_MODE = 0o600
_SUFFIX = ".pem"

# One DNS label (RFC 1035 section 2.3.1, letters-digits-hyphen; IDNs in their xn-- form). A
# selector is one or more labels (RFC 6376 section 3.1); this also keeps both safe as path parts.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


class DKIMKeyError(Exception):
    """A key operation cannot be done; the message says why, for the administrator."""


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyInfo:
    """One stored key as ``taube dkim list`` shows it: no private material."""

    domain: str
    selector: str
    type: KeyType
    bits: int  # the RSA modulus size; 256 for ed25519
    public: str  # the p= value: base64 of the public key (RFC 6376 3.6.1, RFC 8463 section 4)
    path: Path

    @property
    def record_name(self) -> str:
        """Where the record goes: ``<selector>._domainkey.<domain>.`` (RFC 6376 section 3.6.2.1)."""
        return f"{self.selector}._domainkey.{self.domain}."

    @property
    def txt(self) -> str:
        """The record's text, before splitting into character-strings."""
        return f"v=DKIM1; k={self.type}; p={self.public}"

    def txt_strings(self) -> tuple[str, ...]:
        """The text as the TXT record's character-strings (each at most 255 octets)."""
        return split_txt(self.txt)

    def record(self) -> str:
        """The record as one zone-file line, e.g. ``sel._domainkey.example.org. IN TXT "v=DKIM1;
        k=rsa; p=..."`` (split into several quoted strings when longer than 255 octets)."""
        return dns_record(self.record_name, self.txt_strings())


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredKey:
    """A key loaded for signing, with the identity of the file it came from (see
    :meth:`KeyStore.keys_for`)."""

    info: KeyInfo
    private: PrivateKey
    stamp: tuple[int, int, int]  # (inode, mtime_ns, size) of the file when it was read


def split_txt(text: str) -> tuple[str, ...]:
    """``text`` cut into character-strings of at most 255 octets (RFC 1035 section 3.3)."""
    data = text.encode("ascii")
    return tuple(data[i:i + _TXT_STRING].decode("ascii") for i in range(0, len(data), _TXT_STRING)) or ("",)


def dns_record(name: str, strings: tuple[str, ...]) -> str:
    """A TXT record as one zone-file line (RFC 1035 section 5.1). The strings are base64 and
    tag syntax: no quote or backslash that would need escaping."""
    return f"{name} IN TXT " + " ".join(f'"{s}"' for s in strings)


def normalize_domain(domain: str) -> str:
    """A signing domain as stored and as written in ``d=``: lower case, A-labels (RFC 5890),
    no trailing dot; :class:`DKIMKeyError` if it is not a host name."""
    name = domain.strip().rstrip(".")
    try:
        name = name.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise DKIMKeyError(f"{domain!r} is not a valid domain name") from None
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or not all(_LABEL.fullmatch(x) for x in labels):
        raise DKIMKeyError(f"{domain!r} is not a valid domain name")
    return name


def normalize_selector(selector: str, domain: str) -> str:
    """A selector (RFC 6376 section 3.1: labels separated by dots), lower case; its record
    name must fit in a domain name (253 octets)."""
    name = selector.strip().lower()
    if not name or not all(_LABEL.fullmatch(x) for x in name.split(".")):
        raise DKIMKeyError(f"{selector!r} is not a valid selector (letters, digits, '-', dots between labels)")
    if len(f"{name}._domainkey.{domain}") > 253:
        raise DKIMKeyError(f"the record name {name}._domainkey.{domain} is longer than 253 octets")
    return name


def _public_value(key: PrivateKey) -> str:
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:  # RFC 6376 3.6.1: the DER SubjectPublicKeyInfo, as opendkim-genkey publishes it
        raw = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(raw).decode("ascii")


def _info(domain: str, selector: str, key: PrivateKey, path: Path) -> KeyInfo:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        kind: KeyType = "ed25519"
        bits = 256
    else:
        kind, bits = "rsa", key.key_size
    return KeyInfo(domain=domain, selector=selector, type=kind, bits=bits,
                   public=_public_value(key), path=path)


def _algorithm_name(key: object) -> str:
    for kind, name in ((ec.EllipticCurvePrivateKey, "an EC (ECDSA)"), (ed448.Ed448PrivateKey, "an Ed448"), (x25519.X25519PrivateKey, "an X25519"),
                       (x448.X448PrivateKey, "an X448")):
        if isinstance(key, kind):
            return name
    return "another kind of"


def load_pem(pem: bytes, *, what: str = "the key") -> PrivateKey:
    """An RSA (PKCS#1 or PKCS#8) or Ed25519 (PKCS#8) private key from unencrypted PEM, checked
    against the RFC 8301 sizes; :class:`DKIMKeyError` for anything else. The message names
    ``what`` and never quotes the input."""
    if len(pem) > MAX_PEM_SIZE:
        raise DKIMKeyError(f"{what} is {len(pem)} bytes: too large to be one private key in PEM")
    if b"-----BEGIN" not in pem:
        raise DKIMKeyError(f"{what} is not PEM (no '-----BEGIN' line)")
    if b"ENCRYPTED" in pem:
        raise DKIMKeyError(f"{what} is encrypted: decrypt it first (openssl pkey -in KEY -out PLAIN)")
    if re.search(rb"-----BEGIN (?:RSA )?PUBLIC KEY-----", pem):
        raise DKIMKeyError(f"{what} is a public key: the private key is needed to sign")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:  # a password is needed (Proc-Type: 4,ENCRYPTED without the word above)
        raise DKIMKeyError(f"{what} is encrypted: decrypt it first (openssl pkey -in KEY -out PLAIN)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise DKIMKeyError(f"{what} is not a readable RSA or Ed25519 private key "
                           "(PEM, PKCS#1 or PKCS#8)") from None
    if not isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise DKIMKeyError(f"{what} is {_algorithm_name(key)} key: DKIM signs with RSA "
                           "(rsa-sha256) or Ed25519 (ed25519-sha256) only")
    if isinstance(key, rsa.RSAPrivateKey) and not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
        raise DKIMKeyError(f"{what} is a {key.key_size}-bit RSA key: DKIM keys have "
                           f"{MIN_RSA_BITS} to {MAX_RSA_BITS} bits (RFC 8301 section 3.2)")
    return key


class KeyStore:
    """The keys under ``<data_dir>/dkim``. Domains are stored in lower case A-label form,
    selectors in lower case; every method takes them in any case."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / "dkim"

    # -- for the command line --------------------------------------------------------------

    def generate(self, domain: str, selector: str, *, kind: str = "rsa",
                 bits: int = DEFAULT_RSA_BITS) -> KeyInfo:
        """Make a new key and store it; the existing key of that selector is never replaced
        (delete it first: its record may still be published)."""
        domain, selector = self._names(domain, selector)
        key: PrivateKey
        if kind == "rsa":
            if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
                raise DKIMKeyError(f"RSA keys have {MIN_RSA_BITS} to {MAX_RSA_BITS} bits "
                                   f"(RFC 8301 section 3.2), not {bits}")
            # 65537: the public exponent every DKIM implementation expects (RFC 8017 advice).
            key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        elif kind == "ed25519":
            key = ed25519.Ed25519PrivateKey.generate()
        else:
            raise DKIMKeyError(f"unknown key type {kind!r}: use one of {', '.join(KEY_TYPES)}")
        return self._store(domain, selector, key)

    def import_pem(self, domain: str, selector: str, pem: bytes) -> KeyInfo:
        """Store an existing private key (RSA in PKCS#1 or PKCS#8 PEM, Ed25519 in PKCS#8 PEM),
        rewritten as PKCS#8; never replaces a key already stored under that selector."""
        domain, selector = self._names(domain, selector)
        return self._store(domain, selector, load_pem(pem))

    def list(self, domain: str | None = None) -> list[KeyInfo]:
        """Every stored key (of ``domain``), sorted by domain and selector. A file that is not a
        usable key is left out and logged: one bad file must not hide the others."""
        if domain is not None:
            domains = [normalize_domain(domain)]
        else:
            try:
                domains = sorted(p.name for p in self.root.iterdir() if p.is_dir())
            except FileNotFoundError:
                return []
            except OSError as exc:
                raise DKIMKeyError(f"cannot read {self.root}: {exc.strerror}") from None
        return [stored.info for name in domains for stored in self.keys_for(name)]

    def get(self, domain: str, selector: str) -> KeyInfo:
        domain, selector = self._names(domain, selector)
        return self._read(domain, selector, self._path(domain, selector)).info

    def delete(self, domain: str, selector: str) -> KeyInfo:
        """Remove a key; what it was is returned (its record can now be withdrawn)."""
        domain, selector = self._names(domain, selector)
        path = self._path(domain, selector)
        info = self._read(domain, selector, path).info
        try:
            durable.unlink(path)
            durable.fsync_directory(path.parent)
        except OSError as exc:
            raise DKIMKeyError(f"cannot remove {path}: {exc.strerror}") from None
        with contextlib.suppress(OSError):  # the last key of a domain: its directory goes too
            path.parent.rmdir()
        return info

    # -- for the signer --------------------------------------------------------------------

    def keys_for(self, domain: str) -> list[StoredKey]:
        """The usable keys of ``domain`` (already normalized), sorted by selector; none if the
        domain has no directory. Unreadable files are logged and left out."""
        folder = self.root / domain
        found: list[StoredKey] = []
        for selector, path in self._files(folder):
            try:
                found.append(self._read(domain, selector, path))
            except DKIMKeyError as exc:
                log.warning("dkim: %s", exc)
        return found

    def stamps(self, domain: str) -> dict[str, tuple[int, int, int]]:
        """``{selector: (inode, mtime_ns, size)}`` of the key files of ``domain``: a cheap
        way (one directory read, a stat per key) to see that a key was added, replaced or
        removed. A file is always replaced by a rename, so a new key has a new inode."""
        stamps: dict[str, tuple[int, int, int]] = {}
        for selector, path in self._files(self.root / domain):
            with contextlib.suppress(OSError):
                st = path.stat()
                stamps[selector] = (st.st_ino, st.st_mtime_ns, st.st_size)
        return stamps

    # -- inside ----------------------------------------------------------------------------

    @staticmethod
    def _names(domain: str, selector: str) -> tuple[str, str]:
        name = normalize_domain(domain)
        return name, normalize_selector(selector, name)

    def _path(self, domain: str, selector: str) -> Path:
        return self.root / domain / f"{selector}{_SUFFIX}"

    @staticmethod
    def _files(folder: Path) -> Iterator[tuple[str, Path]]:
        try:
            names = sorted(os.listdir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise DKIMKeyError(f"cannot read {folder}: {exc.strerror}") from None
        for name in names:
            selector = name.removesuffix(_SUFFIX)
            # A staged "<selector>.pem.tmp" and anything else that is not a key file is skipped.
            if name.endswith(_SUFFIX) and all(_LABEL.fullmatch(x) for x in selector.split(".")):
                yield selector, folder / name

    def _read(self, domain: str, selector: str, path: Path) -> StoredKey:
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                pem = f.read(MAX_PEM_SIZE + 1)
        except FileNotFoundError:
            raise DKIMKeyError(f"no key for selector {selector!r} of {domain}") from None
        except OSError as exc:
            raise DKIMKeyError(f"cannot read {path}: {exc.strerror}") from None
        key = load_pem(pem, what=str(path))
        return StoredKey(info=_info(domain, selector, key, path), private=key,
                         stamp=(st.st_ino, st.st_mtime_ns, st.st_size))

    def _store(self, domain: str, selector: str, key: PrivateKey) -> KeyInfo:
        path = self._path(domain, selector)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            self.root.parent.mkdir(parents=True, exist_ok=True)  # the data directory
            self._make_directory(self.root)
            self._make_directory(path.parent)
            if path.exists():
                raise DKIMKeyError(f"{domain} already has a key with selector {selector!r} "
                                   f"({path}); delete it first or choose another selector")
            durable.replace_file(path, pem, mode=KEY_MODE)
        except OSError as exc:
            raise DKIMKeyError(f"cannot write {path}: {exc.strerror or exc}") from None
        return _info(domain, selector, key, path)

    @staticmethod
    def _make_directory(path: Path) -> None:
        """``path`` as a directory of mode 0700 (made so if it exists with a wider mode: it
        holds private keys), its creation durable."""
        try:
            path.mkdir(mode=DIR_MODE)
        except FileExistsError:
            if not path.is_dir():
                raise DKIMKeyError(f"{path} exists and is not a directory") from None
        else:
            durable.fsync_directory(path.parent)
        if path.stat().st_mode & 0o777 != DIR_MODE:
            path.chmod(DIR_MODE)  # mkdir's mode is subject to the umask; an old one may be wider
