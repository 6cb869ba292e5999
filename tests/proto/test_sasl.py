"""SASL mechanisms with the seed documents' worked examples (002: benutzer / geheimes_passwort)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from taube.proto import sasl
from taube.proto.sasl import Challenge, CheckPassword, Failure, NeedScram, NeedSecret, Success

b64 = base64.b64decode
PASSWORD = "geheimes_passwort"


def test_plain_seed_example() -> None:
    mech = sasl.create("plain", hostname="h")
    assert mech.start(None) == Challenge(b"")
    step = mech.respond(b64("AGJlbnV0emVyQHplaXRmb3JtLmRlAGdlaGVpbWVzX3Bhc3N3b3J0"))
    assert step == CheckPassword(authcid="benutzer@zeitform.de", authzid="", password=PASSWORD)
    assert mech.resolve(True) == Success(authcid="benutzer@zeitform.de", authzid="benutzer@zeitform.de")


def test_plain_perl_script_identity() -> None:
    """The seed's Perl script encodes benutzer@zeitform-services.de; same shape, other user."""
    mech = sasl.create("PLAIN", hostname="h")
    step = mech.start(b"\x00benutzer@zeitform-services.de\x00" + PASSWORD.encode())
    assert isinstance(step, CheckPassword) and step.authcid == "benutzer@zeitform-services.de"
    assert mech.resolve(False) == Failure("bad credentials")


def test_plain_no_impersonation_and_malformed() -> None:
    mech = sasl.create("PLAIN", hostname="h")
    mech.start(b"boss@x\x00me@x\x00pw")
    assert isinstance(mech.resolve(True), Failure)
    assert sasl.create("PLAIN", hostname="h").start(b"only-one-part").malformed
    assert sasl.create("PLAIN", hostname="h").start(b"\x00user\x00").malformed


def test_login_seed_example() -> None:
    mech = sasl.create("LOGIN", hostname="h")
    first = mech.start(None)
    assert base64.b64encode(first.data) == b"VXNlcm5hbWU6"
    second = mech.respond(b64("YmVudXR6ZXJAemVpdGZvcm0uZGU="))
    assert base64.b64encode(second.data) == b"UGFzc3dvcmQ6"
    step = mech.respond(b64("Z2VoZWltZXNfcGFzc3dvcnQ="))
    assert step == CheckPassword(authcid="benutzer@zeitform.de", authzid="", password=PASSWORD)
    assert isinstance(mech.resolve(True), Success)


def test_cram_md5_seed_example() -> None:
    challenge = b64("PDQwMzYuMTA3NjMyNDM4MUBndWlsZGVuc3Rlcm4uemVpdGZvcm0uZGU+")
    mech = sasl.CramMD5("guildenstern", challenge=challenge)
    assert mech.start(None) == Challenge(challenge)
    response = b64("YmVudXR6ZXJAemVpdGZvcm0uZGUgMmQ5MzczZGZkOTFlMmU2NjMxYzhlMWFkNjk4MzRmYWQ=")
    assert response == b"benutzer@zeitform.de 2d9373dfd91e2e6631c8e1ad69834fad"
    assert mech.respond(response) == NeedSecret(username="benutzer@zeitform.de")
    assert mech.resolve(PASSWORD) == Success(authcid="benutzer@zeitform.de", authzid="benutzer@zeitform.de")


def test_cram_md5_wrong_or_unknown() -> None:
    mech = sasl.CramMD5("h", challenge=b"<1.2@h>")
    mech.start(None)
    mech.respond(b"user " + hmac.new(b"pw", b"<1.2@h>", "md5").hexdigest().encode())
    assert mech.resolve(None) == Failure("bad credentials")
    mech = sasl.CramMD5("h", challenge=b"<1.2@h>")
    mech.start(None)
    mech.respond(b"user 00000000000000000000000000000000")
    assert mech.resolve("pw") == Failure("bad credentials")
    assert sasl.CramMD5("h").start(b"initial").malformed


def scram_client(user: str, password: str, mech: sasl.Mechanism, creds, cnonce: str = "rOprNGfwEbeRWgbNEkqO"):
    """RFC 5802 client side, computed independently of the server code."""
    first_bare = f"n={user},r={cnonce}"
    assert mech.start((f"n,,{first_bare}").encode()) == NeedScram(username=user)
    server_first = mech.resolve(creds).data.decode()
    attrs = dict(a.split("=", 1) for a in server_first.split(","))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), b64(attrs["s"]), int(attrs["i"]))
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    without_proof = f"c=biws,r={attrs['r']}"
    auth = f"{first_bare},{server_first},{without_proof}".encode()
    sig = hmac.digest(hashlib.sha256(client_key).digest(), auth, "sha256")
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, sig))).decode()
    step = mech.respond(f"{without_proof},p={proof}".encode())
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return step, hmac.digest(server_key, auth, "sha256")


def test_scram_sha256_success_and_server_signature() -> None:
    creds = sasl.scram_credentials("pencil")
    mech = sasl.create("SCRAM-SHA-256", hostname="h")
    step, server_sig = scram_client("user", "pencil", mech, creds)
    assert step == Challenge(b"v=" + base64.b64encode(server_sig))
    assert mech.respond(b"") == Success(authcid="user", authzid="user")


@pytest.mark.parametrize(("password", "creds_known"), [("wrong", True), ("pencil", False)])
def test_scram_sha256_failures(password: str, creds_known: bool) -> None:
    creds = sasl.scram_credentials("pencil")
    mech = sasl.create("SCRAM-SHA-256", hostname="h")
    step, _ = scram_client("user", password, mech, creds if creds_known else None)
    assert step == Failure("bad credentials")


def test_scram_rfc7677_keys() -> None:
    """RFC 7677 section 3 example: user 'user', password 'pencil', salt W22ZaJ0SNY7soEsUEjb6gQ==."""
    creds = sasl.scram_credentials("pencil", salt=b64("W22ZaJ0SNY7soEsUEjb6gQ=="), iterations=4096)
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", creds.salt, 4096)
    assert creds.server_key == hmac.digest(salted, b"Server Key", "sha256")
    mech = sasl.ScramSHA256()
    mech.start(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    server_first = mech.resolve(creds).data.decode()
    assert server_first.startswith("r=rOprNGfwEbeRWgbNEkqO") and ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096" in server_first


def test_scram_malformed_and_channel_binding() -> None:
    assert sasl.create("SCRAM-SHA-256", hostname="h").start(b"p=tls-unique,,n=u,r=x").malformed
    assert sasl.create("SCRAM-SHA-256", hostname="h").start(b"n,,r=x").malformed
    assert sasl.create("SCRAM-SHA-256", hostname="h").start(b"n,,n=bad=name,r=x").malformed


def test_unknown_mechanism() -> None:
    assert sasl.create("FOOBAR", hostname="h") is None
