"""The DKIM key store (taube.signing.keys): files and modes, generation, import, the record."""

from __future__ import annotations

import base64
import os
import re
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from taube.signing import keys
from taube.signing.keys import DKIMKeyError, KeyStore, split_txt

# A 512-bit RSA key (too short for DKIM, RFC 8301 3.2); cryptography no longer makes such keys.
WEAK_RSA = b"""-----BEGIN RSA PRIVATE KEY-----
MIIBOgIBAAJBALWrTGTPkeAw4s6LWqYJxU5/Ga9u4LifdIHcqT/TKYFGpvhlltJC
OlGcNJIXTFIvx48XQNJsuo7XuRVLNUN6KpECAwEAAQJBAKhdDdqr6BSvGbOzwJn6
mioqbuKATrGrza0AlLZ6+487GmoGn3cEZ68e6TuU9HGqa4IWmQXX1Mnjn4UznrGT
vTUCIQDvLmooXoyL1NIS/YJuAQy/0K6ExsEDTrExI0wh6RLLMwIhAMJxllXM88KC
nK9IdbHpEUWs3+1UF3icKgPY2HR4zdMrAiEAv3w1WSR4+OnlVXbIGTGV92smjP5i
QDeb/G754Jwsg6kCH17xF3bNnDhdjiQIPW+hXc2nm69GYC+EEP/P4eD9G4MCIGXg
eJQmRsiyKSBaksN3P8SVAA22X2tUkxMO+vwY/cfk
-----END RSA PRIVATE KEY-----
"""


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "data")


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey,
        fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8,
        encryption: serialization.KeySerializationEncryption | None = None) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, fmt, encryption or serialization.NoEncryption())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def record_strings(record: str) -> list[str]:
    match = re.fullmatch(r'(\S+) IN TXT ((?:"[^"]*" ?)+)', record)
    assert match is not None, record
    return re.findall(r'"([^"]*)"', match.group(2))


# -- generate --------------------------------------------------------------------------------


def test_generated_rsa_key_file_and_directories_are_private(store: KeyStore) -> None:
    info = store.generate("Example.ORG.", "Sel1")
    assert (info.domain, info.selector, info.type, info.bits) == ("example.org", "sel1", "rsa", 2048)
    assert info.path == store.root / "example.org" / "sel1.pem"
    assert mode(store.root) == 0o700
    assert mode(store.root / "example.org") == 0o700
    assert mode(info.path) == 0o600
    assert not list(info.path.parent.glob("*.tmp"))
    key = serialization.load_pem_private_key(info.path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    assert info.path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_modes_hold_under_a_permissive_umask(store: KeyStore) -> None:
    old = os.umask(0)
    try:
        info = store.generate("example.org", "s", kind="ed25519")
    finally:
        os.umask(old)
    assert (mode(store.root), mode(info.path.parent), mode(info.path)) == (0o700, 0o700, 0o600)


def test_a_wider_existing_directory_is_narrowed(store: KeyStore) -> None:
    (store.root / "example.org").mkdir(parents=True)
    store.root.chmod(0o755)
    (store.root / "example.org").chmod(0o777)
    store.generate("example.org", "s", kind="ed25519")
    assert mode(store.root) == mode(store.root / "example.org") == 0o700


def test_rsa_record_is_the_spki_public_key(store: KeyStore) -> None:
    info = store.generate("example.org", "sel", bits=1024)
    assert info.bits == 1024
    assert info.record_name == "sel._domainkey.example.org."
    assert info.txt == f"v=DKIM1; k=rsa; p={info.public}"
    key = serialization.load_pem_private_key(info.path.read_bytes(), password=None)
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    assert base64.b64decode(info.public) == spki
    assert info.record() == f'sel._domainkey.example.org. IN TXT "{info.txt}"'


def test_ed25519_record_is_the_raw_public_key(store: KeyStore) -> None:
    """RFC 8463 section 4: p= is the base64 of the 32-octet public key itself."""
    info = store.generate("example.org", "ed", kind="ed25519")
    assert (info.type, info.bits) == ("ed25519", 256)
    raw = base64.b64decode(info.public)
    assert len(raw) == 32
    key = serialization.load_pem_private_key(info.path.read_bytes(), password=None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    assert raw == key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert info.record() == f'ed._domainkey.example.org. IN TXT "v=DKIM1; k=ed25519; p={info.public}"'


def test_a_4096_bit_record_is_split_into_strings_of_at_most_255_octets(store: KeyStore) -> None:
    info = store.generate("example.org", "big", bits=4096)
    strings = record_strings(info.record())
    assert len(strings) >= 3
    assert all(len(s.encode()) <= 255 for s in strings)
    assert all(len(s) == 255 for s in strings[:-1])  # cut only where a string is full
    assert "".join(strings) == info.txt
    assert strings == list(info.txt_strings())


def test_split_txt_boundaries() -> None:
    assert split_txt("") == ("",)
    assert split_txt("a" * 255) == ("a" * 255,)
    assert split_txt("a" * 256) == ("a" * 255, "a")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"bits": 512}, "1024 to 4096 bits"),
    ({"bits": 8192}, "1024 to 4096 bits"),
    ({"kind": "dsa"}, "unknown key type 'dsa'"),
])
def test_generate_refuses_bad_parameters(store: KeyStore, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(DKIMKeyError, match=message):
        store.generate("example.org", "s", **kwargs)  # type: ignore[arg-type]
    assert not (store.root / "example.org" / "s.pem").exists()


def test_an_existing_selector_is_never_replaced(store: KeyStore) -> None:
    first = store.generate("example.org", "s", kind="ed25519")
    before = first.path.read_bytes()
    with pytest.raises(DKIMKeyError, match="already has a key with selector 's'"):
        store.generate("example.org", "S", kind="ed25519")
    with pytest.raises(DKIMKeyError, match="already has a key"):
        store.import_pem("example.org", "s", pem(ed25519.Ed25519PrivateKey.generate()))
    assert first.path.read_bytes() == before


@pytest.mark.parametrize(("domain", "selector", "message"), [
    ("../etc", "s", "not a valid domain"),
    ("example.org/x", "s", "not a valid domain"),
    ("localhost", "s", "not a valid domain"),
    ("-bad.example", "s", "not a valid domain"),
    ("example.org", "../s", "not a valid selector"),
    ("example.org", "a/b", "not a valid selector"),
    ("example.org", "", "not a valid selector"),
    ("example.org", "under_score", "not a valid selector"),
    ("example.org", "a..b", "not a valid selector"),
    ("example.org", ".".join(["a" * 60] * 4), "longer than 253"),
])
def test_names_that_are_not_dns_names_are_refused(store: KeyStore, domain: str, selector: str,
                                                  message: str) -> None:
    with pytest.raises(DKIMKeyError, match=message):
        store.generate(domain, selector, kind="ed25519")
    assert not store.root.exists() or not any(store.root.rglob("*.pem"))


def test_international_domain_is_stored_as_a_labels(store: KeyStore) -> None:
    info = store.generate("Bücher.example", "2024.mail", kind="ed25519")
    assert info.domain == "xn--bcher-kva.example"
    assert info.record_name == "2024.mail._domainkey.xn--bcher-kva.example."
    assert store.get("bücher.example", "2024.MAIL") == info


# -- import ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [serialization.PrivateFormat.TraditionalOpenSSL,  # PKCS#1
                                 serialization.PrivateFormat.PKCS8])
def test_import_rsa_pkcs1_and_pkcs8(store: KeyStore, rsa_key: rsa.RSAPrivateKey,
                                    fmt: serialization.PrivateFormat) -> None:
    data = pem(rsa_key, fmt)
    assert data.startswith(b"-----BEGIN RSA PRIVATE KEY" if fmt is serialization.PrivateFormat.TraditionalOpenSSL
                           else b"-----BEGIN PRIVATE KEY")
    info = store.import_pem("example.org", "imported", data)
    assert (info.type, info.bits) == ("rsa", 2048)
    assert mode(info.path) == 0o600
    stored = serialization.load_pem_private_key(info.path.read_bytes(), password=None)
    assert isinstance(stored, rsa.RSAPrivateKey)
    assert stored.private_numbers() == rsa_key.private_numbers()
    assert store.list() == [info]


def test_import_ed25519_pkcs8(store: KeyStore) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    info = store.import_pem("example.org", "ed", pem(key))
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert (info.type, base64.b64decode(info.public)) == ("ed25519", raw)


@pytest.mark.parametrize(("data", "message"), [
    (b"", "not PEM"),
    (b"garbage that is no key at all", "not PEM"),
    (b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n", "not a readable RSA or Ed25519"),
    (b"-----BEGIN RSA PRIVATE KEY-----\n!!!!\n-----END RSA PRIVATE KEY-----\n", "not a readable RSA or Ed25519"),
    (WEAK_RSA, "512-bit RSA key"),
    (b"-----BEGIN" + b"A" * 70000, "too large"),
])
def test_import_rejects_what_is_not_a_usable_key(store: KeyStore, data: bytes, message: str) -> None:
    with pytest.raises(DKIMKeyError, match=message):
        store.import_pem("example.org", "s", data)
    assert store.list() == []


def test_import_rejects_other_algorithms_public_and_encrypted_keys(store: KeyStore,
                                                                  rsa_key: rsa.RSAPrivateKey) -> None:
    cases = {
        "an EC \\(ECDSA\\) key": pem(ec.generate_private_key(ec.SECP256R1())),
        "is a public key": rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "is encrypted": pem(rsa_key, encryption=serialization.BestAvailableEncryption(b"secret")),
        "is encrypted: decrypt": pem(rsa_key, serialization.PrivateFormat.TraditionalOpenSSL,
                                     serialization.BestAvailableEncryption(b"secret")),
    }
    for message, data in cases.items():
        with pytest.raises(DKIMKeyError, match=message):
            store.import_pem("example.org", "s", data)
    assert store.list() == []


def test_errors_never_show_key_material(store: KeyStore, rsa_key: rsa.RSAPrivateKey) -> None:
    data = pem(rsa_key)
    broken = data.replace(b"\n", b"\n!", 3)  # unreadable, but full of key material
    with pytest.raises(DKIMKeyError) as caught:
        store.import_pem("example.org", "s", broken)
    body = b"".join(data.splitlines()[1:-1]).decode()
    assert not any(body[i:i + 16] in str(caught.value) for i in range(0, len(body) - 16, 16))


def test_import_of_a_key_above_the_limit_is_refused(store: KeyStore, rsa_key: rsa.RSAPrivateKey,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """(The limit lowered: making a key over 4096 bits takes seconds.)"""
    monkeypatch.setattr(keys, "MAX_RSA_BITS", 2040)
    with pytest.raises(DKIMKeyError, match="2048-bit RSA key: DKIM keys have 1024 to 2040 bits"):
        store.import_pem("example.org", "s", pem(rsa_key))


# -- list, get, delete -----------------------------------------------------------------------


def test_list_sorted_and_per_domain(store: KeyStore) -> None:
    b = store.generate("b.example", "s1", kind="ed25519")
    a2 = store.generate("a.example", "s2", kind="ed25519")
    a1 = store.generate("a.example", "s1", bits=1024)
    assert store.list() == [a1, a2, b]
    assert store.list("A.example") == [a1, a2]
    assert store.list("c.example") == []
    assert KeyStore(store.root.parent / "nothing").list() == []


def test_list_skips_and_logs_a_broken_file_and_ignores_strays(store: KeyStore,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    good = store.generate("example.org", "good", kind="ed25519")
    (good.path.parent / "bad.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    (good.path.parent / "good.pem.tmp").write_bytes(b"staged")
    (good.path.parent / "README").write_text("not a key")
    assert store.list() == [good]
    assert "bad.pem" in caplog.text


def test_get_and_delete(store: KeyStore) -> None:
    info = store.generate("example.org", "s", kind="ed25519")
    other = store.generate("example.org", "t", kind="ed25519")
    assert store.get("EXAMPLE.org", "S") == info
    assert store.delete("example.org", "s") == info
    assert not info.path.exists()
    assert store.list() == [other]
    with pytest.raises(DKIMKeyError, match="no key for selector 's' of example.org"):
        store.get("example.org", "s")
    with pytest.raises(DKIMKeyError, match="no key for selector"):
        store.delete("example.org", "s")
    store.delete("example.org", "t")
    assert not (store.root / "example.org").exists()  # the last key took its directory along


def test_write_failure_is_a_key_error_and_leaves_nothing(store: KeyStore,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from taube.store import durable

    class Full(durable.SystemCalls):
        def write(self, fd: int, data: memoryview) -> int:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(durable, "calls", Full())
    with pytest.raises(DKIMKeyError, match="cannot write .*s.pem: No space left"):
        store.generate("example.org", "s", kind="ed25519")
    assert not list((store.root / "example.org").iterdir())


def test_stamps_change_when_a_key_is_replaced(store: KeyStore) -> None:
    store.generate("example.org", "s", kind="ed25519")
    before = store.stamps("example.org")
    store.delete("example.org", "s")
    assert store.stamps("example.org") == {}
    store.generate("example.org", "s", kind="ed25519")
    after = store.stamps("example.org")
    assert set(after) == {"s"} and after != before
    assert store.stamps("unknown.example") == {}
