"""RSA DKIM signatures made by OpenSSL (taube.signing.dkim._rsa_field) are the octets dkimpy's
own ``gen_header`` makes with its pure-Python RSA: same hashed data, same folding, and an
RSASSA-PKCS1-v1_5 signature is deterministic, so any difference is a bug. dkimpy, Mail::DKIM
and OpenDKIM verify them in test_dkim_sign.py and test_dkim_verifiers.py."""

from __future__ import annotations

import hashlib
import string

import dkim
import dkim.crypto
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from taube.signing.dkim import Signer, _rsa_field, signed_fields
from taube.signing.keys import KeyStore

CANON = dkim.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
NOW = 1_700_000_000


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


def dkimpy_field(header: bytes, tags: list[tuple[bytes, bytes]], include: tuple[bytes, ...],
                 key: rsa.RSAPrivateKey) -> bytes:
    """What dkimpy itself makes: gen_header with its own RSA key form and arithmetic."""
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    signer = dkim.DKIM(header, signature_algorithm=b"rsa-sha256", linesep=b"\r\n")
    signer.hasher = hashlib.sha256
    return bytes(signer.gen_header(list(tags), include, CANON, b"DKIM-Signature",
                                   dkim.crypto.parse_private_key(der)))


def tags_for(include: tuple[bytes, ...], selector: bytes = b"s1") -> list[tuple[bytes, bytes]]:
    return [(b"v", b"1"), (b"a", b"rsa-sha256"), (b"c", b"relaxed/relaxed"), (b"d", b"example.org"),
            (b"s", selector), (b"t", str(NOW).encode()), (b"h", b" : ".join(include)),
            (b"bh", b"47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="), (b"b", b"0" * 60)]


def ours(header: bytes, include: tuple[bytes, ...], key: rsa.RSAPrivateKey, selector: bytes = b"s1") -> bytes:
    signer = dkim.DKIM(header, signature_algorithm=b"rsa-sha256", linesep=b"\r\n")
    return _rsa_field(signer, tags_for(include, selector), include, key)


HEADERS = [
    b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: greetings\r\n",
    b"From: a@example.org\r\nSubject:  lots   of\t space \r\n\tand a folded\r\n  line\r\nTo: x@y\r\n",
    b"Received: from x\r\nFrom: a@example.org\r\nCC: c1\r\ncc: c2\r\nFrom: second@example.org\r\n",
    b"Subject: no from at all\r\n",
]


@pytest.mark.parametrize("header", HEADERS)
def test_the_same_octets_as_dkimpy(key: rsa.RSAPrivateKey, header: bytes) -> None:
    names = [name for name, _ in dkim.rfc822_parse(header)[0]]
    include = signed_fields(names)
    assert ours(header, include, key) == dkimpy_field(header, tags_for(include), include, key)


def test_a_long_selector_and_field_list_fold_the_same(key: rsa.RSAPrivateKey) -> None:
    header = b"".join(b"%s: value %d\r\n" % (name, n) for n, name in
                      enumerate([b"From", b"To", b"Cc", b"Subject", b"Date", b"Message-ID",
                                 b"MIME-Version", b"Content-Type", b"List-Id", b"References"] * 3))
    include = signed_fields(name for name, _ in dkim.rfc822_parse(header)[0])
    selector = b"a-rather-long-selector-name-2024"
    assert ours(header, include, key, selector) == dkimpy_field(header, tags_for(include, selector), include, key)


_text = st.text(string.ascii_letters + string.digits + " \t<>@.,;:()\"'-", min_size=0, max_size=60)
_field = st.tuples(st.sampled_from(["From", "To", "Cc", "Subject", "Date", "Message-ID", "X-Other",
                                    "Reply-To", "from", "SUBJECT"]),
                   st.lists(_text, min_size=1, max_size=3))


@settings(max_examples=25, deadline=None)
@given(st.lists(_field, min_size=1, max_size=12))
def test_any_header_section_gives_dkimpys_octets(key: rsa.RSAPrivateKey, fields: list) -> None:  # type: ignore[type-arg]
    # Values with continuation lines (a space or tab after each CRLF), as relays fold them.
    header = b"".join(f"{name}: {' '.join(parts[:1])}".encode() + b"".join(
        b"\r\n " + part.encode() for part in parts[1:]) + b"\r\n" for name, parts in fields)
    include = signed_fields(name for name, _ in dkim.rfc822_parse(header)[0])
    assert ours(header, include, key) == dkimpy_field(header, tags_for(include), include, key)


def test_the_signer_signs_rsa_with_openssl_and_dkimpy_verifies(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    store = KeyStore(tmp_path)
    store.generate("example.org", "s1", bits=2048)

    def no_python_rsa(*args: object) -> bytes:
        raise AssertionError("dkimpy's pure-Python RSA was used")

    monkeypatch.setattr(dkim, "RSASSA_PKCS1_v1_5_sign", no_python_rsa)
    data = (b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\n"
            b"Hello.\r\n")
    result = Signer(store, clock=lambda: NOW).sign_bytes(data, sender="alice@example.org")
    assert result.errors == () and [s.algorithm for s in result.signatures] == ["rsa-sha256"]
    record = "".join(store.get("example.org", "s1").txt_strings()).encode()
    assert dkim.DKIM(result.header + data).verify(dnsfunc=lambda name, timeout=5: record)
