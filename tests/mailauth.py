"""Helpers for the mail authentication tests: DKIM keys made in the test (RSA, Ed25519), their
key records in the loopback DNS server, messages signed and sealed with dkimpy, and check
contexts as the session fills them.

RSA keys are made once per process and size (a 2048-bit key costs a noticeable fraction of a
second); a test that needs two different keys asks for two sizes or an Ed25519 key.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import random
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import dkim
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from taube.config import ChecksSettings
from taube.lookup import DNSClient
from taube.policy.pipeline import Context
from tests.dnsserver import DNSServer

T = TypeVar("T")

CLIENT = "127.0.0.2"  # outside trusted_networks in these tests
TRUSTED = "127.0.0.1"
HOSTNAME = "mx.example.net"
FAST = 0.5  # the DNS timeout of the cases that time out
SLACK = 2.5  # what such a case may take at most, the worker-thread hand-over included


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def trusted(ip: str) -> bool:
    return ip == TRUSTED


def checks(**values: Any) -> ChecksSettings:
    return ChecksSettings(**values)


def client(server: DNSServer, timeout: float = 3.0) -> DNSClient:
    return DNSClient([server.address], timeout)


def txt(text: str) -> str:
    """A TXT record's text in zone-file syntax: quoted strings of at most 255 octets each
    (RFC 1035 3.3.14; RFC 6376 3.6.2.2 joins them again)."""
    return " ".join(f'"{text[i:i + 255]}"' for i in range(0, len(text), 255))


@dataclass(frozen=True)
class Key:
    """A DKIM key: ``private`` as dkimpy's sign() takes it, ``record`` the key record's text."""

    domain: str
    selector: str
    algorithm: Literal["rsa-sha256", "ed25519-sha256"]
    private: bytes
    record: str

    @property
    def name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def publish(self, server: DNSServer) -> None:
        server.add(self.name, "TXT", txt(self.record))


def _probable_prime(bits: int, rng: random.Random) -> int:
    """Miller-Rabin with 32 random bases; the two top bits set so that p*q has 2*bits bits."""
    while True:
        n = rng.getrandbits(bits) | (3 << bits - 2) | 1
        d, s = n - 1, 0
        while d % 2 == 0:
            d, s = d // 2, s + 1
        for _ in range(32):
            x = pow(rng.randrange(2, n - 1), d, n)
            if x in (1, n - 1):
                continue
            for _ in range(s - 1):
                x = pow(x, 2, n)
                if x == n - 1:
                    break
            else:
                break  # composite
        else:
            return n


def _weak_rsa(bits: int) -> rsa.RSAPrivateKey:
    """An RSA key shorter than the library will make (it refuses under 1024 bits), from two
    primes of our own: for testing that verifiers refuse such keys."""
    rng, e = random.Random(bits), 65537
    while True:
        p, q = _probable_prime(bits // 2, rng), _probable_prime(bits // 2, rng)
        if p != q and (p - 1) * (q - 1) % e:
            break
    d = pow(e, -1, (p - 1) * (q - 1))
    return rsa.RSAPrivateNumbers(p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q),
                                 rsa.rsa_crt_iqmp(p, q), rsa.RSAPublicNumbers(e, p * q)
                                 ).private_key()


@functools.cache
def _rsa(bits: int) -> tuple[bytes, bytes]:
    key = (rsa.generate_private_key(public_exponent=65537, key_size=bits) if bits >= 1024
           else _weak_rsa(bits))
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def rsa_key(domain: str = "example.org", selector: str = "rsa", bits: int = 2048) -> Key:
    private, public = _rsa(bits)
    return Key(domain, selector, "rsa-sha256", private,
               f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}")


def _der(tag: int, body: bytes) -> bytes:
    size = len(body)
    length = (bytes([size]) if size < 128 else
              bytes([0x80 | (size.bit_length() + 7) // 8]) + size.to_bytes((size.bit_length() + 7) // 8, "big"))
    return bytes([tag]) + length + body


def rsa_record(modulus: int, exponent: int) -> str:
    """A key record for any RSA public numbers, those no library would make included (a huge
    exponent): an RFC 8017 RSAPublicKey, which dkimpy takes as p= as well as the usual
    SubjectPublicKeyInfo."""
    def integer(value: int) -> bytes:
        return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))

    der = _der(0x30, integer(modulus) + integer(exponent))
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def ed25519_key(domain: str = "example.org", selector: str = "ed") -> Key:
    """RFC 8463: the private key as dkimpy takes it (base64 of the 32-octet seed), the record's
    p= the raw 32-octet public key."""
    signing = nacl.signing.SigningKey.generate()
    return Key(domain, selector, "ed25519-sha256", base64.b64encode(bytes(signing)),
               f"v=DKIM1; k=ed25519; p={base64.b64encode(bytes(signing.verify_key)).decode()}")


def message(author: str | None = "Alice <alice@example.org>", *,
            body: bytes = b"Hello, Bob.\r\n", extra: bytes = b"") -> bytes:
    """A plain message with ``author`` as From: (None: no From:) and ``extra`` header lines
    on top."""
    lines = [b"From: " + author.encode() + b"\r\n"] if author is not None else []
    return (extra + b"".join(lines) + b"To: bob@example.net\r\nSubject: Greetings\r\n"
            b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\n"
            + body)


def sign(data: bytes, key: Key, **options: Any) -> bytes:
    """``data`` with a DKIM-Signature of ``key`` on top (relaxed/relaxed, From: oversigned by
    dkimpy's defaults)."""
    field = dkim.sign(data, key.selector.encode(), key.domain.encode(), key.private,
                      signature_algorithm=key.algorithm.encode(),
                      canonicalize=(b"relaxed", b"relaxed"), **options)
    return field + data


def seal(data: bytes, key: Key, srv_id: str, results: str) -> bytes:
    """``data`` as a forwarder ``srv_id`` passes it on: its Authentication-Results
    (``results``, e.g. "spf=pass smtp.mailfrom=example.org"), then its ARC set on top
    (RFC 8617)."""
    data = f"Authentication-Results: {srv_id}; {results}\r\n".encode() + data
    arc_set = dkim.arc_sign(data, key.selector.encode(), key.domain.encode(), key.private,
                            srv_id.encode())
    assert arc_set, "dkimpy made no ARC set"
    return b"".join(arc_set) + data


def header_of(data: bytes) -> bytes:
    """The header section as the session gives it: up to and including the last field's CRLF."""
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[:end + 2]


def context(data: bytes | None = None, *, client_ip: str = CLIENT,
            sender: str = "bounce@example.org", helo: str = "client.example.org",
            user: str | None = None, loads: list[int] | None = None) -> Context:
    """A connection's context in a transaction from ``sender``, with the message ``data``
    when given (``ctx.tx.header`` and ``ctx.tx.message``); each load of the message is
    counted in ``loads``."""
    ctx = Context(client_ip=client_ip, helo=helo, esmtp=True, user=user)
    ctx.tx.sender = sender
    if data is not None:
        ctx.tx.header = header_of(data)

        async def load() -> bytes:
            if loads is not None:
                loads.append(len(data))
            return data

        ctx.tx.message = load
    return ctx
