"""The real server, real clients: smtplib and raw sockets against ``taube serve`` on loopback."""

from __future__ import annotations

import mailbox
import smtplib
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY

import pytest

from tests.e2e.conftest import TaubeServer, wait_for
from tests.e2e.rawsmtp import RawSMTP


def message(subject: str = "Test", body: str = "Dies ist eine Testnachricht\n") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Lukas <lb@trash.test>"
    msg["To"] = "alice@example.test"
    msg["Subject"] = subject
    msg["Message-ID"] = "<5e94c0cccf8c884c074279cd9a8d2e76@trash.test>"
    msg.set_content(body)
    return msg


def inbox(server: TaubeServer, address: str) -> list[mailbox.MaildirMessage]:
    path = server.maildir(address)
    if not path.exists():
        return []
    return list(mailbox.Maildir(path, create=False))


def test_send_with_smtplib_lands_in_maildir(server: TaubeServer) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as c:
        code, banner = c.ehlo("mail.trash.test")
        assert code == 250
        assert c.has_extn("pipelining") and c.has_extn("8bitmime") and c.has_extn("enhancedstatuscodes")
        assert c.has_extn("smtputf8") and c.has_extn("size")
        refused = c.send_message(message(body=".leading dot\nzweite Zeile\n"), "lb@trash.test",
                                 ["alice@example.test"])
        assert refused == {}
    [msg] = inbox(server, "alice@example.test")
    assert msg["Return-Path"] == "<lb@trash.test>"
    received = msg.get_all("Received")
    assert len(received) == 1 and "by mail.example.test (taube) with ESMTP id" in received[0]
    assert "for <alice@example.test>" in received[0]
    assert msg["Subject"] == "Test"
    assert msg.get_payload() == ".leading dot\nzweite Zeile\n"
    assert "queued" in server.log and "from=<lb@trash.test>" in server.log


def test_reply_says_queued_as_id(server: TaubeServer) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as c:
        c.ehlo("x")
        c.mail("lb@trash.test")
        c.rcpt("alice@example.test")
        code, text = c.data(message().as_bytes(policy=SMTP_POLICY))
    assert code == 250
    assert text.decode().startswith("2.0.0 Ok: queued as ")
    queue_id = text.decode().rsplit(" ", 1)[1]
    assert queue_id in server.log


def test_several_recipients_and_transactions(server: TaubeServer) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as c:
        c.send_message(message("one"), "lb@trash.test", ["alice@example.test", "bob@example.test"])
        c.send_message(message("two"), "<>", ["Alice@Example.TEST"])
    assert sorted(m["Subject"] for m in inbox(server, "alice@example.test")) == ["one", "two"]
    assert [m["Subject"] for m in inbox(server, "bob@example.test")] == ["one"]
    null_sender = [m for m in inbox(server, "alice@example.test") if m["Subject"] == "two"][0]
    assert null_sender["Return-Path"] == "<>"


def test_unknown_local_user_is_550(server: TaubeServer) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as c:
        c.ehlo("x")
        c.mail("lb@trash.test")
        code, text = c.rcpt("nobody@example.test")
    assert (code, text[:5]) == (550, b"5.1.1")


def test_alias_expands_to_local_and_remote(server: TaubeServer) -> None:
    server.cli("alias", "add", "team@example.test", "alice@example.test,bob@example.test,ext@remote.test")
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as c:
        assert c.send_message(message("team"), "lb@trash.test", ["team@example.test"]) == {}
    assert [m["Subject"] for m in inbox(server, "alice@example.test")] == ["team"]
    assert [m["Subject"] for m in inbox(server, "bob@example.test")] == ["team"]
    envelopes = list((server.data_dir / "queue" / "envelopes").glob("*.json"))
    assert len(envelopes) == 1 and "ext@remote.test" in envelopes[0].read_text()


def test_pipelining_all_replies_in_order_without_stall(server: TaubeServer) -> None:
    with RawSMTP(server.port) as c:
        assert c.cmd("EHLO x").startswith("250-")
        c.send(b"MAIL FROM:<lb@trash.test>\r\nRCPT TO:<alice@example.test>\r\n"
               b"RCPT TO:<nobody@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        replies = c.replies(5)
        assert [r[:3] for r in replies] == ["250", "250", "550", "250", "354"]
        c.send(b"Subject: piped\r\n\r\nhello\r\n.\r\nMAIL FROM:<lb@trash.test>\r\nRCPT TO:<bob@example.test>\r\n"
               b"DATA\r\n")
        assert [r[:3] for r in c.replies(4)] == ["250", "250", "250", "354"]
        c.send(b"Subject: second\r\n\r\n.\r\nQUIT\r\n")
        assert [r[:3] for r in c.replies(2)] == ["250", "221"]
    assert sorted(m["Subject"] for m in inbox(server, "bob@example.test")) == ["piped", "second"]


@pytest.mark.parametrize("false_end", [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n"])
def test_smuggling_is_rejected_and_never_executed(server: TaubeServer, false_end: bytes) -> None:
    with RawSMTP(server.port) as c:
        c.cmd("EHLO x")
        c.send(b"MAIL FROM:<lb@trash.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        assert [r[:3] for r in c.replies(3)] == ["250", "250", "354"]
        c.send(b"Subject: outer\r\n\r\nhi" + false_end +
               b"MAIL FROM:<ceo@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
               b"Subject: smuggled\r\n\r\nx\r\n.\r\nQUIT\r\n")
        assert c.reply().startswith("554 5.5.2")
        assert c.reply().startswith("221")
    assert inbox(server, "alice@example.test") == []
    assert inbox(server, "bob@example.test") == []


def test_relay_denied_for_untrusted_client(make_server) -> None:
    server = make_server(trusted=("192.0.2.0/24",))
    server.add_user("alice@example.test")
    server.start()
    with RawSMTP(server.port) as c:
        c.cmd("EHLO x")
        assert c.cmd("MAIL FROM:<spammer@evil.test>").startswith("250")
        for rcpt in ("victim@remote.test", "@example.test:victim@remote.test", "<victim@[192.0.2.7]>"):
            target = rcpt if rcpt.startswith("<") else f"<{rcpt}>"
            assert c.cmd(f"RCPT TO:{target}").startswith("554 5.7.1"), rcpt
        # address tricks that try to route through a local domain end at a local lookup: unknown user
        for rcpt in ("<victim%remote.test@example.test>", "<remote.test!victim@example.test>",
                     '<"victim@remote.test"@example.test>'):
            assert c.cmd(f"RCPT TO:{rcpt}").startswith("550 5.1.1"), rcpt
        assert c.cmd("RCPT TO:<alice@example.test>").startswith("250 2.1.5")
    assert not (server.data_dir / "queue" / "envelopes").exists() or \
        not list((server.data_dir / "queue" / "envelopes").iterdir())


def test_trusted_client_relays_into_durable_queue(server: TaubeServer) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as c:
        assert c.send_message(message("out"), "alice@example.test", ["friend@remote.test"]) == {}
    [env] = (server.data_dir / "queue" / "envelopes").glob("*.json")
    assert "friend@remote.test" in env.read_text()


def test_size_limits(make_server) -> None:
    server = make_server(smtp_toml="max_message_size = 2048")
    server.add_user("alice@example.test")
    server.start()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as c:
        c.ehlo("x")
        assert c.esmtp_features["size"] == "2048"
        code, text = c.mail("lb@trash.test", ["SIZE=5000"])
        assert (code, text[:5]) == (552, b"5.3.4")
        c.rset()
        c.mail("lb@trash.test")
        c.rcpt("alice@example.test")
        code, text = c.data(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 100)
        assert (code, text[:5]) == (552, b"5.3.4")
    assert inbox(server, "alice@example.test") == []


def test_vrfy_is_ambiguous_and_expn_disabled_by_default(server: TaubeServer) -> None:
    with RawSMTP(server.port) as c:
        assert c.cmd("VRFY alice@example.test").startswith("252 2.0.0")
        assert c.cmd("VRFY nobody@example.test").startswith("252 2.0.0")
        assert c.cmd("EXPN staff").startswith("502 5.5.1")
        assert c.cmd("HELP").startswith("214")
        assert c.cmd("QUIT").startswith("221")


def test_vrfy_local_and_expn_aliases_when_configured(make_server) -> None:
    server = make_server(smtp_toml='vrfy = "local"\nexpn = "aliases"')
    server.add_user("alice@example.test")
    server.cli("alias", "add", "staff@example.test", "alice@example.test")
    server.start()
    with RawSMTP(server.port) as c:
        assert c.cmd("VRFY <alice@example.test>").startswith("250 2.0.0")
        assert c.cmd("VRFY <nobody@example.test>").startswith("550 5.1.1")
        assert "<alice@example.test>" in c.cmd("EXPN <staff@example.test>")


def test_too_many_errors_421(make_server) -> None:
    server = make_server(smtp_toml="max_errors = 3").start()
    with RawSMTP(server.port) as c:
        for _ in range(2):
            assert c.cmd("BOGUS").startswith("500 5.5.2")
        assert c.cmd("BOGUS").startswith("500 5.5.2")
        assert c.reply().startswith("421 4.7.0")
        assert c.closed()


def test_idle_timeout_421(make_server) -> None:
    server = make_server(smtp_toml='timeout_command = "1s"').start()
    with RawSMTP(server.port) as c:
        assert c.reply().startswith("421 4.4.2")
        assert c.closed()


def _accepted_connection(port: int) -> RawSMTP | None:
    c = RawSMTP(port)
    if c.greeting.startswith("220"):
        return c
    c.close()
    return None


@pytest.mark.parametrize("limit", ["max_connections_per_client = 2", "max_connections = 2"])
def test_connection_limits(make_server, limit: str) -> None:
    # loopback untrusted: trusted networks are exempt from the per-client limit
    server = make_server(smtp_toml=limit, trusted=("192.0.2.0/24",)).start()
    # the readiness probe's connection may still be counted for a moment: retry until two fit
    first = wait_for(lambda: _accepted_connection(server.port), what="first slot")
    second = wait_for(lambda: _accepted_connection(server.port), what="second slot")
    try:
        with RawSMTP(server.port) as third:
            assert third.greeting.startswith("421 4.7.0")
            assert third.closed()
    finally:
        first.close()
        second.close()
    wait_for(lambda: _accepted_connection(server.port), what="a free slot").close()


def test_long_command_line_and_binary_junk(server: TaubeServer) -> None:
    with RawSMTP(server.port) as c:
        assert c.cmd(b"NOOP " + b"A" * 5000).startswith("500 5.5.2")
        assert c.cmd(b"\xff\xfe\x00junk").startswith("500 5.5.2")
        assert c.cmd("NOOP").startswith("250")


def test_postmaster_is_always_accepted(make_server) -> None:
    """RFC 5321 4.5.1: <postmaster> and postmaster@ every local domain reach the postmaster."""
    server = make_server(extra_toml='postmaster = "alice@example.test"', domains=("example.test", "other.test"))
    server.add_user("alice@example.test")
    server.start()
    with RawSMTP(server.port) as c:
        c.cmd("EHLO x")
        c.cmd("MAIL FROM:<>")
        for rcpt in ("<Postmaster>", "<postmaster@example.test>", "<POSTMASTER@other.test>"):
            assert c.cmd(f"RCPT TO:{rcpt}").startswith("250 2.1.5"), rcpt
        assert c.cmd("DATA").startswith("354")
        assert c.cmd("Subject: pm\r\n\r\nhi\r\n.").startswith("250")
    assert [m["Subject"] for m in inbox(server, "alice@example.test")] == ["pm"]


def test_missing_postmaster_is_warned_about(server: TaubeServer) -> None:
    # logged once the queue runner has started, which may be after the listener greets
    wait_for(lambda: "postmaster postmaster@example.test is neither a user nor an alias"
             in server.log, what="the postmaster warning")
