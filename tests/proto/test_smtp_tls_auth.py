"""STARTTLS (RFC 3207) and AUTH (RFC 4954) in the engine, with the seed's SASL examples."""

from __future__ import annotations

import base64

import pytest

from taube.proto import sasl
from taube.proto.replies import Reply
from taube.proto.smtp import (
    NEED_DATA,
    AuthDone,
    AuthLookup,
    AuthStart,
    Decision,
    Hello,
    SMTPConfig,
    SMTPConnection,
    StartTLS,
    State,
)
from tests.proto.helpers import accept_all, codes, drive, session

PASSWORD = "geheimes_passwort"
MECHS = ("PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256")


def tls_config(**kw) -> SMTPConfig:
    return SMTPConfig(hostname="mail.zeitform.de", tls_available=True, auth_mechanisms=MECHS, **kw)


def directory(request: object) -> object:
    """A directory with one user benutzer@zeitform.de / geheimes_passwort."""
    user_ok = getattr(request, "authcid", getattr(request, "username", "")) == "benutzer@zeitform.de"
    if isinstance(request, sasl.CheckPassword):
        return user_ok and request.password == PASSWORD
    if isinstance(request, sasl.NeedSecret):
        return PASSWORD if user_ok else None
    return sasl.scram_credentials(PASSWORD) if user_ok else None


def no_starttls(event: Decision) -> Reply | None:
    if isinstance(event, StartTLS):
        raise AssertionError("use the STARTTLS tests for that")
    return accept_all(event)


def run(data: bytes, config: SMTPConfig) -> tuple[bytes, list]:
    """Like drive(), but answers AuthLookup from a one-user directory."""
    out, events, _ = session(data, config=config, answer=no_starttls, lookup=directory)
    return out, events


def test_ehlo_lists_auth_only_under_tls_by_default() -> None:
    out, _ = run(b"EHLO x\r\nQUIT\r\n", tls_config())
    assert b"250-STARTTLS" in out and b"AUTH" not in out
    out, _ = run(b"EHLO x\r\nQUIT\r\n", tls_config(tls_active=True))
    assert b"STARTTLS" not in out
    assert b"250-AUTH PLAIN LOGIN CRAM-MD5 SCRAM-SHA-256\r\n" in out
    assert b"250-AUTH=PLAIN LOGIN CRAM-MD5 SCRAM-SHA-256\r\n" in out


def test_auth_before_tls_is_538() -> None:
    out, _ = run(b"EHLO x\r\nAUTH PLAIN AGJlbnV0emVyQHplaXRmb3JtLmRlAGdlaGVpbWVzX3Bhc3N3b3J0\r\nQUIT\r\n", tls_config())
    assert codes(out)[-2] == "538 5.7.11"


def test_seed_plain_with_initial_response() -> None:
    out, events = run(b"EHLO x\r\nAUTH PLAIN AGJlbnV0emVyQHplaXRmb3JtLmRlAGdlaGVpbWVzX3Bhc3N3b3J0\r\nQUIT\r\n",
                      tls_config(tls_active=True))
    assert codes(out)[-2:] == ["235 2.7.0", "221 2.0.0"]
    assert [e.user for e in events if isinstance(e, AuthDone)] == ["benutzer@zeitform.de"]


def test_seed_plain_after_334() -> None:
    out, _ = run(b"EHLO x\r\nAUTH PLAIN\r\nAGJlbnV0emVyQHplaXRmb3JtLmRlAGdlaGVpbWVzX3Bhc3N3b3J0\r\nQUIT\r\n",
                 tls_config(tls_active=True))
    assert b"334 \r\n" in out
    assert codes(out)[-2] == "235 2.7.0"


def test_seed_login_dialogue() -> None:
    out, _ = run(b"EHLO x\r\nAUTH LOGIN\r\nYmVudXR6ZXJAemVpdGZvcm0uZGU=\r\nZ2VoZWltZXNfcGFzc3dvcnQ=\r\nQUIT\r\n",
                 tls_config(tls_active=True))
    assert b"334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 2.7.0" in out


def test_seed_cram_md5_dialogue() -> None:
    conn = SMTPConnection(tls_config(tls_active=True))
    conn.data_to_send()
    conn.receive_data(b"EHLO x\r\nAUTH CRAM-MD5\r\n")
    conn.next_event()
    conn.accept()
    assert isinstance(conn.next_event(), AuthStart)
    conn.accept()
    assert conn.data_to_send().split(b"\r\n")[-2].startswith(b"334 ")
    # the seed's challenge instead of the fresh random one, to reproduce its digest
    conn._mech.challenge = base64.b64decode(  # noqa: SLF001
        "PDQwMzYuMTA3NjMyNDM4MUBndWlsZGVuc3Rlcm4uemVpdGZvcm0uZGU+")
    conn.receive_data(b"YmVudXR6ZXJAemVpdGZvcm0uZGUgMmQ5MzczZGZkOTFlMmU2NjMxYzhlMWFkNjk4MzRmYWQ=\r\n")
    lookup = conn.next_event()
    assert isinstance(lookup, AuthLookup)
    assert lookup.request == sasl.NeedSecret(username="benutzer@zeitform.de")
    conn.auth_resolve(PASSWORD)
    assert isinstance(conn.next_event(), AuthDone)
    assert conn.data_to_send().startswith(b"235 2.7.0")
    assert conn.authenticated == "benutzer@zeitform.de"


@pytest.mark.parametrize(("lines", "code"), [
    (b"AUTH PLAIN AGJlbnV0emVyQHplaXRmb3JtLmRlAHdyb25n\r\n", "535 5.7.8"),
    (b"AUTH PLAIN !!!notbase64\r\n", "501 5.5.2"),
    (b"AUTH LOGIN\r\n*\r\n", "501 5.7.0"),
    (b"AUTH FOOBAR\r\n", "504 5.5.4"),
    (b"AUTH\r\n", "501 5.5.4"),
    (b"AUTH PLAIN Ym9zcwBiZW51dHplckB6ZWl0Zm9ybS5kZQBnZWhlaW1lc19wYXNzd29ydA==\r\n", "535 5.7.8"),  # impersonation
])
def test_auth_errors(lines: bytes, code: str) -> None:
    out, events = run(b"EHLO x\r\n" + lines + b"QUIT\r\n", tls_config(tls_active=True))
    assert codes(out)[-2] == code


def test_auth_twice_and_in_transaction_are_503() -> None:
    plain = b"AUTH PLAIN AGJlbnV0emVyQHplaXRmb3JtLmRlAGdlaGVpbWVzX3Bhc3N3b3J0\r\n"
    out, _ = run(b"EHLO x\r\n" + plain + plain + b"QUIT\r\n", tls_config(tls_active=True))
    assert codes(out)[-3:] == ["235 2.7.0", "503 5.5.1", "221 2.0.0"]
    out, _ = run(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\n" + plain + b"QUIT\r\n", tls_config(tls_active=True))
    assert codes(out)[-2] == "503 5.5.1"


def test_submission_requires_auth_before_mail() -> None:
    out, _ = run(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nQUIT\r\n", tls_config(tls_active=True, auth_required=True))
    assert codes(out)[-2] == "530 5.7.0"


def test_starttls_drops_pipelined_plaintext_and_resets() -> None:
    conn = SMTPConnection(tls_config())
    conn.data_to_send()
    conn.receive_data(b"EHLO x\r\n")
    conn.next_event()
    conn.accept()
    conn.data_to_send()
    conn.receive_data(b"STARTTLS\r\nMAIL FROM:<evil@x.test>\r\nRSET\r\n")
    assert isinstance(conn.next_event(), StartTLS)
    conn.accept()
    assert conn.data_to_send() == b"220 2.0.0 Ready to start TLS\r\n"
    assert conn.state is State.TLS_HANDSHAKE
    assert conn.next_event() is NEED_DATA  # nothing of the injected commands is parsed
    conn.tls_started()
    assert conn.tls_active and conn.state is State.CONNECTED
    conn.receive_data(b"MAIL FROM:<a@b.c>\r\nEHLO x\r\nSTARTTLS\r\n")
    assert isinstance(conn.next_event(), Hello)
    assert conn.data_to_send().startswith(b"503 5.5.1")  # EHLO again first
    conn.accept()
    assert b"STARTTLS" not in conn.data_to_send()
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send().startswith(b"503 5.5.1")  # second STARTTLS


def test_starttls_not_offered_without_certificate_and_never_in_transaction() -> None:
    out, _ = drive(b"EHLO x\r\nSTARTTLS\r\nQUIT\r\n")
    assert codes(out)[-2] == "502 5.5.1"
    out, _ = run(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nSTARTTLS\r\nQUIT\r\n", tls_config())
    assert codes(out)[-2] == "503 5.5.1"
