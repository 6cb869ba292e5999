"""``taube dkim`` as an administrator runs it: keygen prints the record to publish, list shows the
keys, import takes an existing PEM key, delete removes one; errors are messages, never a key."""

from __future__ import annotations

import base64
import re
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.unit.cli_helpers import run, write_config

RECORD = re.compile(r'^(?P<name>\S+) IN TXT (?P<strings>(?:"[^"]{0,255}" ?)+)$')


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path)


def record_text(line: str) -> tuple[str, str]:
    m = RECORD.match(line.strip())
    assert m, line
    return m["name"], "".join(re.findall(r'"([^"]*)"', m["strings"]))


def test_keygen_prints_the_record_and_keeps_the_key_private(config: Path) -> None:
    made = run(config, "dkim", "keygen", "Example.Test", "--selector", "s2026")
    assert made.returncode == 0, made.stderr
    name, text = record_text(made.stdout)
    assert name == "s2026._domainkey.example.test."
    assert text.startswith("v=DKIM1; k=rsa; p=MII")
    assert "PRIVATE" not in made.stdout + made.stderr
    key = config.parent / "var" / "dkim" / "example.test" / "s2026.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(key.parent.parent.stat().st_mode) == 0o700
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    assert isinstance(private, rsa.RSAPrivateKey) and private.key_size == 2048

    # A 4096-bit key: the record is split into strings of at most 255 octets.
    big = run(config, "dkim", "keygen", "example.test", "-s", "big", "--bits", "4096")
    assert big.returncode == 0, big.stderr
    assert big.stdout.count('" "') >= 2
    assert record_text(big.stdout)[1].startswith("v=DKIM1; k=rsa; p=")

    ed = run(config, "dkim", "keygen", "example.test", "-s", "ed", "--type", "ed25519")
    assert ed.returncode == 0, ed.stderr
    assert re.fullmatch(r"v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}=", record_text(ed.stdout)[1])

    listed = run(config, "dkim", "list")
    assert listed.returncode == 0
    rows = [line.split("\t") for line in listed.stdout.splitlines()]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("example.test", "big", "rsa"), ("example.test", "ed", "ed25519"),
        ("example.test", "s2026", "rsa")]
    assert rows[2][3] == made.stdout.strip()
    assert run(config, "dkim", "list", "other.test").stdout == ""


def test_refusals_are_messages(config: Path) -> None:
    assert run(config, "dkim", "keygen", "example.test", "-s", "a").returncode == 0
    again = run(config, "dkim", "keygen", "example.test", "-s", "a")
    assert again.returncode == 1 and again.stderr.startswith("taube: ") and "already" in again.stderr
    small = run(config, "dkim", "keygen", "example.test", "-s", "b", "--bits", "512")
    assert small.returncode == 1 and "Traceback" not in small.stderr
    bad = run(config, "dkim", "keygen", "not a domain", "-s", "c")
    assert bad.returncode == 1 and bad.stderr.startswith("taube: ")
    missing = run(config, "dkim", "delete", "example.test", "-s", "nope")
    assert missing.returncode == 1 and missing.stderr.startswith("taube: ")
    usage = run(config, "dkim", "keygen", "example.test")  # no --selector
    assert usage.returncode == 2


def test_import_and_delete(config: Path, tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pkcs1 = tmp_path / "old.key"
    pkcs1.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.TraditionalOpenSSL,
                                        serialization.NoEncryption()))
    imported = run(config, "dkim", "import", "example.test", "--selector", "old", str(pkcs1))
    assert imported.returncode == 0, imported.stderr
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    assert record_text(imported.stdout)[1] == f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"
    stored = config.parent / "var" / "dkim" / "example.test" / "old.pem"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600

    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a key\n")
    refused = run(config, "dkim", "import", "example.test", "-s", "g", str(garbage))
    assert refused.returncode == 1 and refused.stderr.startswith("taube: ")
    nofile = run(config, "dkim", "import", "example.test", "-s", "g", str(tmp_path / "none.pem"))
    assert nofile.returncode == 1 and "cannot read" in nofile.stderr

    deleted = run(config, "dkim", "delete", "example.test", "-s", "old")
    assert (deleted.returncode, deleted.stdout) == (0, "deleted old._domainkey.example.test\n")
    assert not stored.exists()
    assert run(config, "dkim", "list").stdout == ""
