"""STARTTLS, implicit TLS, SMTP AUTH and submission against the real server (smtplib, raw TLS)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import mailbox
import smtplib
import ssl
import stat

import pytest

from tests.e2e.conftest import TaubeServer
from tests.e2e.rawsmtp import RawSMTP

PASSWORD = "correct horse battery staple"


def client_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the server's self-signed certificate
    return ctx


@pytest.fixture
def tls_server(make_server) -> TaubeServer:
    """Loopback is NOT trusted here: relaying needs AUTH."""
    server = make_server(trusted=("192.0.2.0/24",), submission=True, smtps=True)
    server.add_user("alice@example.test", PASSWORD)
    server.add_user("bob@example.test", PASSWORD)
    server.cli("alias", "add", "sales@example.test", "alice@example.test")
    return server.start()


def starttls_raw(c: RawSMTP) -> None:
    assert c.cmd("STARTTLS").startswith("220 2.0.0")
    assert c.buf == b""
    c.sock = client_context().wrap_socket(c.sock)


def test_starttls_then_login_with_plain_and_login(tls_server: TaubeServer) -> None:
    for mechanism in ("PLAIN", "LOGIN"):
        with smtplib.SMTP("127.0.0.1", tls_server.port, timeout=10) as c:
            c.ehlo("client.test")
            assert c.has_extn("starttls") and not c.has_extn("auth")
            c.starttls(context=client_context())
            assert c.sock.version() in ("TLSv1.2", "TLSv1.3")
            c.ehlo("client.test")
            assert not c.has_extn("starttls")
            assert set(c.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN", "SCRAM-SHA-256"}
            c.user, c.password = "alice@example.test", PASSWORD
            authobject = c.auth_plain if mechanism == "PLAIN" else c.auth_login
            code, text = c.auth(mechanism, authobject, initial_response_ok=mechanism == "PLAIN")
            assert (code, text[:5]) == (235, b"2.7.0")
            assert c.send_message(_message(), "alice@example.test", ["friend@remote.test"]) == {}
    assert len(list((tls_server.data_dir / "queue" / "envelopes").glob("*.json"))) == 2


def test_plaintext_auth_refused_before_tls(tls_server: TaubeServer) -> None:
    with RawSMTP(tls_server.port) as c:
        ehlo = c.cmd("EHLO x")
        assert "STARTTLS" in ehlo and "AUTH" not in ehlo
        plain = base64.b64encode(b"\0alice@example.test\0" + PASSWORD.encode()).decode()
        assert c.cmd(f"AUTH PLAIN {plain}").startswith("538 5.7.11")


def test_pipelined_commands_after_starttls_are_never_executed(make_server) -> None:
    """CVE-2011-0411: plaintext sent with STARTTLS must not run inside TLS. With the default
    strict_pipelining the connection is closed outright (tests/e2e/test_abuse_protocol.py);
    without it, the injected commands are dropped."""
    server = make_server(trusted=("192.0.2.0/24",), smtp_toml="strict_pipelining = false").start()
    with RawSMTP(server.port) as c:
        c.cmd("EHLO x")
        c.send(b"STARTTLS\r\nHELP\r\nMAIL FROM:<evil@x.test>\r\n")
        assert c.reply().startswith("220 2.0.0")
        c.buf = b""
        c.sock = client_context().wrap_socket(c.sock)
        # the first reply inside TLS answers our NOOP, not the injected HELP (214) or MAIL
        assert c.cmd("NOOP").startswith("250 2.0.0")
        assert c.cmd("MAIL FROM:<alice@example.test>").startswith("503 5.5.1")  # EHLO again first


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_old_tls_versions_are_refused(tls_server: TaubeServer) -> None:
    ctx = client_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with RawSMTP(tls_server.port) as c:
        c.cmd("EHLO x")
        assert c.cmd("STARTTLS").startswith("220")
        tls = ctx.wrap_socket(c.sock, do_handshake_on_connect=False)
        try:
            with pytest.raises((ssl.SSLError, OSError)):
                tls.do_handshake()
        finally:
            tls.close()
    with RawSMTP(tls_server.port) as c:  # that failed handshake closed its connection only
        assert c.cmd("NOOP").startswith("250")


def test_relay_only_after_auth_and_sender_must_be_owned(tls_server: TaubeServer) -> None:
    with RawSMTP(tls_server.port) as c:
        c.cmd("EHLO x")
        c.cmd("MAIL FROM:<alice@example.test>")
        assert c.cmd("RCPT TO:<far@remote.test>").startswith("554 5.7.1")
        c.cmd("RSET")
        starttls_raw(c)
        c.cmd("EHLO x")
        plain = base64.b64encode(b"\0alice@example.test\0" + PASSWORD.encode()).decode()
        assert c.cmd(f"AUTH PLAIN {plain}").startswith("235 2.7.0")
        assert c.cmd("MAIL FROM:<bob@example.test>").startswith("553 5.7.1")
        assert c.cmd("MAIL FROM:<sales@example.test>").startswith("250")  # her alias
        assert c.cmd("RCPT TO:<far@remote.test>").startswith("250")
        assert c.cmd("DATA").startswith("354")
        assert c.cmd("Subject: out\r\n\r\nhi\r\n.").startswith("250 2.0.0")


def test_submission_needs_auth_before_mail(tls_server: TaubeServer) -> None:
    with smtplib.SMTP("127.0.0.1", tls_server.submission_port, timeout=10) as c:
        c.ehlo("x")
        code, text = c.mail("alice@example.test")
        assert (code, text[:5]) == (530, b"5.7.0")
        c.rset()
        c.starttls(context=client_context())
        c.login("alice@example.test", PASSWORD)
        assert c.send_message(_message(), "alice@example.test", ["bob@example.test", "x@remote.test"]) == {}
    [msg] = list(mailbox.Maildir(tls_server.maildir("bob@example.test"), create=False))
    received = msg["Received"]
    assert "with ESMTPSA" in received and "using TLSv1." in received
    assert "alice@example.test" not in received  # the user is noted only if configured


def test_implicit_tls_smtps(tls_server: TaubeServer) -> None:
    with smtplib.SMTP_SSL("127.0.0.1", tls_server.smtps_port, timeout=10, context=client_context()) as c:
        c.ehlo("x")
        assert not c.has_extn("starttls") and c.has_extn("auth")
        c.login("alice@example.test", PASSWORD)
        assert c.send_message(_message(), "alice@example.test", ["bob@example.test"]) == {}


def test_bad_credentials_and_unknown_user_are_535(tls_server: TaubeServer) -> None:
    with smtplib.SMTP("127.0.0.1", tls_server.port, timeout=10) as c:
        c.starttls(context=client_context())
        for user, password in (("alice@example.test", "wrong"), ("nobody@example.test", PASSWORD)):
            with pytest.raises(smtplib.SMTPAuthenticationError) as e:
                c.login(user, password)
            assert e.value.smtp_code == 535
    assert "auth failed client=127.0.0.1" in tls_server.log
    assert PASSWORD not in tls_server.log and "wrong" not in tls_server.log.replace("wrong credentials", "")


def test_too_many_failures_block_the_address(make_server) -> None:
    server = make_server(auth_toml="max_failures = 3")
    server.add_user("alice@example.test", PASSWORD)
    server.start()
    with RawSMTP(server.port) as c:
        c.cmd("EHLO x")
        starttls_raw(c)
        c.cmd("EHLO x")
        bad = base64.b64encode(b"\0alice@example.test\0nope").decode()
        for _ in range(3):
            assert c.cmd(f"AUTH PLAIN {bad}").startswith("535 5.7.8")
        assert c.cmd(f"AUTH PLAIN {bad}").startswith("421 4.7.0")
        assert c.closed()


def test_scram_sha256_login(tls_server: TaubeServer) -> None:
    """RFC 5802/7677 client computed here, against the server's stored keys."""
    with RawSMTP(tls_server.port) as c:
        c.cmd("EHLO x")
        starttls_raw(c)
        c.cmd("EHLO x")
        nonce = "fyko+d2lbbFgONRv9qkxdawL"
        first_bare = f"n=alice@example.test,r={nonce}"
        reply = c.cmd("AUTH SCRAM-SHA-256 " + base64.b64encode(("n,," + first_bare).encode()).decode())
        assert reply.startswith("334 ")
        server_first = base64.b64decode(reply[4:].strip()).decode()
        attrs = dict(a.split("=", 1) for a in server_first.split(","))
        assert attrs["r"].startswith(nonce)
        salted = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        without_proof = f"c=biws,r={attrs['r']}"
        auth_message = f"{first_bare},{server_first},{without_proof}".encode()
        signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
        proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature))).decode()
        reply = c.cmd(base64.b64encode(f"{without_proof},p={proof}".encode()).decode())
        assert reply.startswith("334 ")
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        expected = b"v=" + base64.b64encode(hmac.digest(server_key, auth_message, "sha256"))
        assert base64.b64decode(reply[4:].strip()) == expected  # the server proved it knows the key
        assert c.cmd("").startswith("235 2.7.0")


def test_self_signed_certificate_is_made_with_a_private_key(tls_server: TaubeServer) -> None:
    key = tls_server.data_dir / "tls" / "selfsigned.key"
    assert (tls_server.data_dir / "tls" / "selfsigned.crt").exists()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def _message():
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"] = "alice@example.test"
    msg["Subject"] = "tls"
    msg.set_content("hello\n")
    return msg


def test_cram_md5_with_legacy_secrets(make_server) -> None:
    server = make_server(auth_toml='legacy_secrets = true\nmechanisms = ["CRAM-MD5", "PLAIN"]')
    server.add_user("alice@example.test", PASSWORD)
    server.start()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as c:
        c.starttls(context=client_context())
        c.ehlo("x")
        assert c.esmtp_features["auth"].split()[0] == "CRAM-MD5"
        code, _ = c.login("alice@example.test", PASSWORD)  # smtplib picks CRAM-MD5 first
        assert code == 235
    assert "mechanism=CRAM-MD5" in server.log
    assert PASSWORD.encode() in (server.data_dir / "taube.db").read_bytes()  # the stated trade-off


def test_cram_md5_without_legacy_secrets_is_a_config_error(make_server) -> None:
    server = make_server(auth_toml='mechanisms = ["CRAM-MD5"]')
    proc = server.cli("user", "list", check=False)
    assert proc.returncode == 2 and "legacy_secrets" in proc.stderr


def test_configured_certificate_and_reload_on_sighup(make_server, tmp_path) -> None:
    import signal

    from cryptography import x509

    from taube.net.tls import ensure_self_signed
    from tests.e2e.conftest import wait_for

    certs = tmp_path / "certs"
    cert, key = ensure_self_signed(certs / "one", "one.example.test")
    server = make_server()
    server.config.write_text(server.config.read_text() + f'[tls]\ncert = "{cert}"\nkey = "{key}"\n')
    server.start()

    def served_name() -> str:
        with RawSMTP(server.port) as c:
            c.cmd("EHLO x")
            starttls_raw(c)
            der = c.sock.getpeercert(binary_form=True)
            return x509.load_der_x509_certificate(der).subject.rfc4514_string()

    assert served_name() == "CN=one.example.test"
    new_cert, new_key = ensure_self_signed(certs / "two", "two.example.test")
    cert.write_bytes(new_cert.read_bytes())
    key.write_bytes(new_key.read_bytes())
    server.send_signal(signal.SIGHUP)
    wait_for(lambda: served_name() == "CN=two.example.test", what="the new certificate")
    assert not (server.data_dir / "tls").exists()  # no self-signed one was made


def test_received_notes_the_user_only_when_configured(make_server) -> None:
    server = make_server(submission=True, auth_toml="received_header_user = true")
    server.add_user("alice@example.test", PASSWORD)
    server.start()
    with smtplib.SMTP("127.0.0.1", server.submission_port, timeout=10) as c:
        c.starttls(context=client_context())
        c.login("alice@example.test", PASSWORD)
        c.send_message(_message(), "alice@example.test", ["alice@example.test"])
    [msg] = list(mailbox.Maildir(server.maildir("alice@example.test"), create=False))
    assert "Authenticated sender: alice@example.test" in msg["Received"]
