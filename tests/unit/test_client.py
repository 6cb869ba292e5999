"""The outbound SMTP client (RFC 5321 3.3, RFC 2920, RFC 3207, RFC 4954, RFC 3461, RFC 1870,
RFC 6152, RFC 6531) against the scripted peer."""

from __future__ import annotations

import asyncio
import io
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from taube.delivery.client import (
    OutboundConnection,
    OutRecipient,
    SMTPClientError,
    TransactionResult,
)
from taube.proto.address import xtext_encode as xtext
from taube.proto.replies import Reply
from tests.peer import ScriptedPeer

T = TypeVar("T")
DEADLINE = 10.0
MESSAGE = (b"From: a@sender.test\r\nTo: b@example.org\r\nSubject: hi\r\n\r\n"
           b".leading dot\r\n..two dots\r\n.\r\nmiddle\r\n\xc3\xa4 8bit\r\n.\r\n")


@pytest.fixture
def peer() -> Iterator[ScriptedPeer]:
    with ScriptedPeer() as p:
        yield p
        assert p.errors == []


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(DEADLINE * 2):
            return await coro

    return asyncio.run(bounded())


async def connect(peer: ScriptedPeer, **kw: Any) -> OutboundConnection:
    kw.setdefault("connect_timeout", DEADLINE)
    kw.setdefault("command_timeout", DEADLINE)
    kw.setdefault("data_timeout", DEADLINE)
    return await OutboundConnection.open(address=peer.host, port=peer.port,
                                         server_name="peer.test", helo="client.test", **kw)


def deliver(peer: ScriptedPeer, recipients: list[str | OutRecipient], *, sender: str = "a@sender.test",
            message: bytes = MESSAGE, params: dict[str, str] | None = None,
            **open_kw: Any) -> TransactionResult:
    """Open, one transaction, close."""
    rcpts = [r if isinstance(r, OutRecipient) else OutRecipient(r) for r in recipients]

    async def go() -> TransactionResult:
        conn = await connect(peer, **open_kw)
        try:
            return await conn.send(sender=sender, recipients=rcpts, message=io.BytesIO(message),
                                   params=params or {})
        finally:
            await conn.close()

    return run(go())


def failure(peer: ScriptedPeer, then: Callable[[OutboundConnection], Awaitable[Any]] | None = None,
            **open_kw: Any) -> SMTPClientError:
    """The SMTPClientError from opening (or from ``then`` on the open connection)."""

    async def go() -> None:
        conn = await connect(peer, **open_kw)
        try:
            if then is not None:
                await then(conn)
        finally:
            await conn.close()

    with pytest.raises(SMTPClientError) as info:
        run(go())
    return info.value


def one_send(recipients: list[str]) -> Callable[[OutboundConnection], Awaitable[Any]]:
    return lambda conn: conn.send(sender="a@sender.test",
                                  recipients=[OutRecipient(r) for r in recipients],
                                  message=io.BytesIO(MESSAGE))


# -- replies and xtext -------------------------------------------------------------------------

def test_reply_parses_the_enhanced_code_of_a_multiline_reply() -> None:
    reply = Reply.parse(550, "5.1.1 <x@example.org>: Recipient address rejected:\n5.1.1 User unknown")
    assert reply == Reply(code=550, enhanced="5.1.1", text="<x@example.org>: Recipient address rejected: User unknown")
    assert str(reply) == "550 5.1.1 <x@example.org>: Recipient address rejected: User unknown"
    assert reply.diagnostic() == "smtp; 550 5.1.1 <x@example.org>: Recipient address rejected: User unknown"
    assert (reply.ok, reply.temporary, reply.status()) == (False, False, "5.1.1")


def test_reply_without_enhanced_code_derives_the_status() -> None:
    assert Reply.parse(451, "try later").status() == "4.0.0"
    assert Reply.parse(554, "no").status() == "5.0.0"
    assert Reply.parse(250, "Ok").status() == "2.0.0"
    assert str(Reply.parse(451, "try later")) == "451 try later"
    # RFC 2034: the class of the enhanced code must agree with the reply code
    assert Reply.parse(550, "2.1.5 confused").enhanced is None
    assert Reply.parse(250, "2.0.0").text == ""
    assert Reply.parse(450, "4.2.0Greylisted").enhanced is None


def test_xtext() -> None:
    assert xtext("user+tag=x@example.org") == "user+2Btag+3Dx@example.org"
    assert xtext("a b\u00e4") == "a+20b+C3+A4"
    assert xtext("!~") == "!~"


# -- delivery ----------------------------------------------------------------------------------

def test_message_arrives_byte_exact_with_dot_stuffing(peer: ScriptedPeer) -> None:
    result = deliver(peer, ["b@example.org"])
    assert result.replies == {"b@example.org": Reply(code=250, enhanced="2.0.0", text="Ok: queued")}
    [tx] = peer.wait_for_transactions(1, DEADLINE)
    assert tx.data == MESSAGE
    assert tx.sender == "a@sender.test"
    assert tx.helo == "client.test"
    assert peer.commands[-1] == "QUIT"


def test_null_sender_and_several_recipients_in_one_transaction(peer: ScriptedPeer) -> None:
    rcpts = ["one@example.org", "two@example.org", "three@example.org"]
    result = deliver(peer, rcpts, sender="")
    assert all(reply.ok for reply in result.replies.values()) and list(result.replies) == rcpts
    [tx] = peer.wait_for_transactions(1, DEADLINE)
    assert tx.sender == "" and [r for r, _ in tx.recipients] == rcpts
    assert "MAIL FROM:<> SIZE=%d" % len(MESSAGE) in peer.commands
    assert peer.commands.count("DATA") == 1


def test_per_recipient_results(peer: ScriptedPeer) -> None:
    peer.rcpt_reply = lambda rcpt: {"bad@example.org": "550 5.1.1 No such user",
                                    "later@example.org": "450 4.2.0 Greylisted"}.get(
        rcpt, "250 2.1.5 Ok")
    peer.final_reply = "250 2.0.0 Ok: queued as 4711"
    result = deliver(peer, ["bad@example.org", "later@example.org", "good@example.org"])
    assert result.replies["bad@example.org"] == Reply(code=550, enhanced="5.1.1", text="No such user")
    assert result.replies["later@example.org"].temporary
    assert result.replies["later@example.org"].status() == "4.2.0"
    assert result.replies["good@example.org"] == Reply(code=250, enhanced="2.0.0", text="Ok: queued as 4711")
    [tx] = peer.wait_for_transactions(1, DEADLINE)
    assert tx.recipients == [("good@example.org", {})]


def test_many_pipelined_recipients_keep_their_replies_in_order(peer: ScriptedPeer) -> None:
    rcpts = [f"r{i}@example.org" for i in range(60)]
    peer.rcpt_reply = lambda rcpt: (f"550 5.1.1 {rcpt} unknown" if int(rcpt[1:rcpt.index("@")]) % 3
                                    else "250 2.1.5 Ok")
    result = deliver(peer, rcpts)
    for i, rcpt in enumerate(rcpts):
        reply = result.replies[rcpt]
        if i % 3:
            assert reply == Reply(code=550, enhanced="5.1.1", text=f"{rcpt} unknown")
        else:
            assert reply.ok and reply.text == "Ok: queued"
    [tx] = peer.wait_for_transactions(1, DEADLINE)
    assert [r for r, _ in tx.recipients] == rcpts[::3]


def test_no_recipient_accepted_resets_and_the_connection_stays_usable(peer: ScriptedPeer) -> None:
    async def go() -> tuple[TransactionResult, TransactionResult]:
        conn = await connect(peer)
        try:
            peer.rcpt_reply = "550 5.7.1 Relay access denied"
            first = await conn.send(sender="a@sender.test", recipients=[OutRecipient("x@example.org")],
                                    message=io.BytesIO(MESSAGE))
            peer.rcpt_reply = "250 2.1.5 Ok"
            second = await conn.send(sender="a@sender.test", recipients=[OutRecipient("y@example.org")],
                                     message=io.BytesIO(MESSAGE))
            return first, second
        finally:
            await conn.close()

    first, second = run(go())
    assert first.replies["x@example.org"] == Reply(code=550, enhanced="5.7.1", text="Relay access denied")
    assert second.replies["y@example.org"].ok
    assert "DATA" in peer.commands and peer.commands.index("RSET") < peer.commands.index("DATA")
    assert peer.connections == 1


def test_mail_refused_gives_every_recipient_that_reply(peer: ScriptedPeer) -> None:
    async def go() -> tuple[TransactionResult, TransactionResult]:
        conn = await connect(peer)
        try:
            peer.mail_reply = "553 5.1.8 Sender address rejected: Domain not found"
            first = await conn.send(sender="a@nowhere.test",
                                    recipients=[OutRecipient("x@example.org"), OutRecipient("y@example.org")],
                                    message=io.BytesIO(MESSAGE))
            peer.mail_reply = "250 2.1.0 Ok"
            second = await conn.send(sender="a@sender.test", recipients=[OutRecipient("z@example.org")],
                                     message=io.BytesIO(MESSAGE))
            return first, second
        finally:
            await conn.close()

    first, second = run(go())
    refusal = Reply(code=553, enhanced="5.1.8", text="Sender address rejected: Domain not found")
    assert first.replies == {"x@example.org": refusal, "y@example.org": refusal}
    assert second.replies["z@example.org"].ok
    assert "RSET" in peer.commands
    assert len(peer.wait_for_transactions(1, DEADLINE)) == 1 and peer.connections == 1


@pytest.mark.parametrize("final", ["451 4.3.0 Try again later", "554 5.7.1 Spam rejected"])
def test_final_reply_after_data_applies_to_the_accepted_recipients(peer: ScriptedPeer, final: str) -> None:
    peer.rcpt_reply = lambda rcpt: "550 5.1.1 Unknown" if rcpt.startswith("bad") else "250 2.1.5 Ok"
    peer.final_reply = final
    result = deliver(peer, ["ok1@example.org", "bad@example.org", "ok2@example.org"])
    code = int(final[:3])
    assert result.replies["ok1@example.org"].code == code == result.replies["ok2@example.org"].code
    assert result.replies["ok1@example.org"].temporary == (code < 500)
    assert result.replies["bad@example.org"].code == 550
    assert peer.transactions == [] and len(peer.rejected) == 1
    assert peer.rejected[0].data == MESSAGE


def test_refusal_of_the_data_command(peer: ScriptedPeer) -> None:
    peer.data_reply = "554 5.5.1 Error: no valid recipients"
    result = deliver(peer, ["b@example.org"])
    assert result.replies["b@example.org"] == Reply(code=554, enhanced="5.5.1", text="Error: no valid recipients")


def test_two_transactions_on_one_connection(peer: ScriptedPeer) -> None:
    async def go() -> list[TransactionResult]:
        conn = await connect(peer)
        try:
            return [await conn.send(sender="a@sender.test", recipients=[OutRecipient(f"{n}@example.org")],
                                    message=io.BytesIO(MESSAGE + n.encode() + b"\r\n"))
                    for n in ("one", "two")]
        finally:
            await conn.close()

    results = run(go())
    assert all(r.replies[f"{n}@example.org"].ok for r, n in zip(results, ("one", "two")))
    txs = peer.wait_for_transactions(2, DEADLINE)
    assert [tx.data for tx in txs] == [MESSAGE + b"one\r\n", MESSAGE + b"two\r\n"]
    assert peer.connections == 1 and "RSET" not in peer.commands


def test_multiline_replies_are_joined(peer: ScriptedPeer) -> None:
    peer.rcpt_reply = "550 5.1.1 <b@example.org>: mailbox unavailable\n550 5.1.1 see the FAQ"
    result = deliver(peer, ["b@example.org"])
    assert result.replies["b@example.org"] == Reply(
        code=550, enhanced="5.1.1", text="<b@example.org>: mailbox unavailable see the FAQ")


# -- failures of the whole attempt --------------------------------------------------------------

def test_drop_mid_data_is_a_temporary_failure_at_data(peer: ScriptedPeer) -> None:
    peer.drop_mid_data = True
    error = failure(peer, one_send(["b@example.org"]))
    assert (error.temporary, error.stage, error.reply) == (True, "data", None)
    assert "lost connection" in str(error) and "after DATA" in str(error)


def test_no_answer_to_the_end_of_data_times_out(peer: ScriptedPeer) -> None:
    peer.final_reply = None
    error = failure(peer, one_send(["b@example.org"]), data_timeout=0.3)
    assert (error.temporary, error.stage) == (True, "data")
    assert "timed out" in str(error)


@pytest.mark.parametrize(("greeting", "temporary"), [("421 4.3.2 Too busy", True),
                                                     ("554 5.7.1 Go away", False)])
def test_greeting_refused(peer: ScriptedPeer, greeting: str, temporary: bool) -> None:
    peer.greeting = greeting
    error = failure(peer)
    assert (error.stage, error.temporary) == ("greeting", temporary)
    assert error.reply is not None and str(error.reply) == greeting
    assert greeting in str(error)


def test_connection_refused() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def go() -> None:
        await OutboundConnection.open(address="127.0.0.1", port=port, server_name="127.0.0.1",
                                      helo="client.test", connect_timeout=DEADLINE)

    with pytest.raises(SMTPClientError) as info:
        run(go())
    assert (info.value.stage, info.value.temporary, info.value.reply) == ("connect", True, None)
    assert str(info.value) == f"connect to 127.0.0.1:{port}: Connection refused"


def test_421_to_rcpt_ends_the_attempt(peer: ScriptedPeer) -> None:
    peer.rcpt_reply = "421 4.3.2 Shutting down"
    error = failure(peer, one_send(["b@example.org"]))
    assert (error.stage, error.temporary) == ("rcpt", True)
    assert error.reply == Reply(code=421, enhanced="4.3.2", text="Shutting down")


def test_ehlo_refused_falls_back_to_helo(peer: ScriptedPeer) -> None:
    peer.ehlo_reply = "502 5.5.2 Error: command not recognized"
    result = deliver(peer, ["b@example.org"], params={"BODY": "8BITMIME"})
    assert result.replies["b@example.org"].ok and result.dsn is False
    assert "HELO client.test" in peer.commands
    assert f"MAIL FROM:<a@sender.test>" in peer.commands  # no extension, no parameter
    assert peer.pipelined == []


def test_ehlo_temporarily_refused(peer: ScriptedPeer) -> None:
    peer.ehlo_reply = "454 4.7.0 Not now"
    error = failure(peer)
    assert (error.stage, error.temporary) == ("helo", True)
    assert "HELO client.test" not in peer.commands


def test_bad_helo_name_is_a_client_error(peer: ScriptedPeer) -> None:
    async def go() -> None:
        await OutboundConnection.open(address=peer.host, port=peer.port, server_name="peer.test",
                                      helo="bad name")

    with pytest.raises(SMTPClientError) as info:
        run(go())
    assert info.value.stage == "helo"


def test_close_never_raises_and_send_after_close_is_an_error(peer: ScriptedPeer) -> None:
    async def go() -> None:
        conn = await connect(peer)
        await conn.close()
        await conn.close()
        assert not conn.usable
        with pytest.raises(SMTPClientError):
            await one_send(["b@example.org"])(conn)

    run(go())
    assert peer.commands.count("QUIT") == 1


def test_peer_gone_between_transactions() -> None:
    with ScriptedPeer() as peer:
        async def go() -> SMTPClientError:
            conn = await connect(peer)
            try:
                await one_send(["b@example.org"])(conn)
                await asyncio.to_thread(peer.stop)
                with pytest.raises(SMTPClientError) as info:
                    await one_send(["c@example.org"])(conn)
                assert not conn.usable
                return info.value
            finally:
                await conn.close()

        error = run(go())
    assert error.temporary and error.stage == "mail" and error.reply is None
    assert len(peer.transactions) == 1


# -- TLS and AUTH ------------------------------------------------------------------------------

def test_starttls_is_used_when_offered(peer: ScriptedPeer) -> None:
    peer.starttls = True

    async def go() -> tuple[bool, TransactionResult]:
        conn = await connect(peer)
        try:
            return conn.tls_active, await one_send(["b@example.org"])(conn)
        finally:
            await conn.close()

    tls, result = run(go())
    assert tls and result.replies["b@example.org"].ok
    [tx] = peer.wait_for_transactions(1, DEADLINE)
    assert tx.tls and tx.data == MESSAGE
    assert peer.commands[:3] == ["EHLO client.test", "STARTTLS", "EHLO client.test"]


def test_tls_none_does_not_use_starttls(peer: ScriptedPeer) -> None:
    peer.starttls = True
    deliver(peer, ["b@example.org"], tls="none")
    [tx] = peer.wait_for_transactions(1, DEADLINE)
    assert not tx.tls and "STARTTLS" not in peer.commands


def test_tls_encrypt_without_starttls_fails(peer: ScriptedPeer) -> None:
    error = failure(peer, tls="encrypt")
    assert (error.stage, error.temporary, error.status) == ("starttls", True, "4.7.4")
    assert "TLS is required" in str(error)
    assert "MAIL" not in " ".join(peer.commands)


@pytest.mark.parametrize("tls", ["may", "encrypt"])
def test_starttls_refused(peer: ScriptedPeer, tls: str) -> None:
    peer.extensions = (*peer.extensions, "STARTTLS")  # announced, but answered with 502
    if tls == "may":  # RFC 3207 4: the session goes on in the clear
        assert deliver(peer, ["b@example.org"], tls=tls).replies["b@example.org"].ok
        assert not peer.wait_for_transactions(1, DEADLINE)[0].tls
    else:
        error = failure(peer, tls=tls)
        assert (error.stage, error.temporary) == ("starttls", True)
        assert error.reply is not None and error.reply.code == 502


def test_verified_tls_with_the_peer_certificate(peer: ScriptedPeer) -> None:
    peer.starttls = True
    deliver(peer, ["b@example.org"], tls="encrypt", verify=True, ca_file=str(peer.cert_path))
    [tx] = peer.wait_for_transactions(1, DEADLINE)
    assert tx.tls


def test_failed_certificate_verification_is_temporary(peer: ScriptedPeer) -> None:
    peer.starttls = True
    error = failure(peer, tls="may", verify=True)
    assert (error.stage, error.temporary) == ("starttls", True)
    assert "TLS handshake" in str(error)


def test_auth_over_tls(peer: ScriptedPeer) -> None:
    peer.starttls = True
    peer.auth = ("relayuser", "s3cret")
    deliver(peer, ["b@example.org"], auth=("relayuser", "s3cret"))
    [tx] = peer.wait_for_transactions(1, DEADLINE)
    assert tx.auth_user == "relayuser" and tx.tls
    assert any(c.startswith("AUTH PLAIN ") for c in peer.commands)


def test_auth_refused_is_permanent_for_5xx(peer: ScriptedPeer) -> None:
    peer.starttls = True
    peer.auth = ("relayuser", "s3cret")
    error = failure(peer, auth=("relayuser", "wrong"))
    assert (error.stage, error.temporary) == ("auth", False)
    assert error.reply is not None and error.reply.status() == "5.7.8"


def test_credentials_are_not_sent_without_tls(peer: ScriptedPeer) -> None:
    peer.auth = ("relayuser", "s3cret")
    error = failure(peer, auth=("relayuser", "s3cret"))
    assert (error.stage, error.temporary) == ("auth", True)
    assert not any(c.startswith("AUTH") for c in peer.commands)


# -- parameters --------------------------------------------------------------------------------

def test_size_body_smtputf8_passed_when_offered(peer: ScriptedPeer) -> None:
    deliver(peer, ["b@example.org"], params={"BODY": "8BITMIME", "SMTPUTF8": ""})
    [tx] = peer.wait_for_transactions(1, DEADLINE)
    assert tx.mail_params == {"SIZE": str(len(MESSAGE)), "BODY": "8BITMIME", "SMTPUTF8": ""}


def test_parameters_not_passed_when_not_offered(peer: ScriptedPeer) -> None:
    peer.extensions = ("ENHANCEDSTATUSCODES",)
    result = deliver(peer, [OutRecipient("b@example.org", ("SUCCESS", "FAILURE"), "rfc822;b@example.org")],
                     params={"BODY": "8BITMIME", "SMTPUTF8": "", "RET": "HDRS", "ENVID": "x"})
    assert result.replies["b@example.org"].ok and result.dsn is False
    [tx] = peer.wait_for_transactions(1, DEADLINE)
    assert tx.mail_params == {} and tx.recipients == [("b@example.org", {})]
    assert tx.data == MESSAGE  # 8-bit content goes on anyway, as Postfix does


def test_utf8_address_without_smtputf8_is_refused_without_sending(peer: ScriptedPeer) -> None:
    peer.extensions = ("PIPELINING", "8BITMIME")
    result = deliver(peer, ["j\u00f6rg@example.org", "b@example.org"], params={"SMTPUTF8": ""})
    assert {r.status() for r in result.replies.values()} == {"5.6.7"}
    assert all(r.code == 550 for r in result.replies.values())
    assert not any(c.startswith("MAIL") for c in peer.commands)


def test_utf8_address_with_smtputf8(peer: ScriptedPeer) -> None:
    result = deliver(peer, ["j\u00f6rg@example.org"], params={"SMTPUTF8": ""})
    assert result.replies["j\u00f6rg@example.org"].ok
    [tx] = peer.wait_for_transactions(1, DEADLINE)
    assert tx.recipients == [("j\u00f6rg@example.org", {})] and "SMTPUTF8" in tx.mail_params


def test_message_over_the_size_limit_is_not_sent(peer: ScriptedPeer) -> None:
    peer.extensions = ("SIZE 100", "ENHANCEDSTATUSCODES")
    result = deliver(peer, ["b@example.org"], message=b"x" * 200 + b"\r\n")
    assert result.replies["b@example.org"].code == 552
    assert result.replies["b@example.org"].status() == "5.3.4"
    assert not any(c.startswith("MAIL") for c in peer.commands)


def test_dsn_parameters_passed_when_offered(peer: ScriptedPeer) -> None:
    rcpts = [OutRecipient("b@example.org", ("SUCCESS", "FAILURE"), "rfc822;B+tag=1@Example.org"),
             OutRecipient("c@example.org", ("NEVER",)),
             OutRecipient("d@example.org")]
    result = deliver(peer, rcpts, params={"RET": "HDRS", "ENVID": "QQ 314159=x"})
    assert result.dsn
    [tx] = peer.wait_for_transactions(1, DEADLINE)
    assert tx.mail_params["RET"] == "HDRS" and tx.mail_params["ENVID"] == "QQ+20314159+3Dx"
    assert tx.recipients == [
        ("b@example.org", {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;B+2Btag+3D1@Example.org"}),
        ("c@example.org", {"NOTIFY": "NEVER"}),
        ("d@example.org", {}),
    ]


def test_dsn_parameters_not_passed_without_dsn(peer: ScriptedPeer) -> None:
    peer.extensions = ("PIPELINING", "SIZE 10485760", "8BITMIME", "ENHANCEDSTATUSCODES")
    result = deliver(peer, [OutRecipient("b@example.org", ("NEVER",), "rfc822;b@example.org")],
                     params={"RET": "FULL", "ENVID": "abc"})
    assert result.dsn is False
    [tx] = peer.wait_for_transactions(1, DEADLINE)
    assert tx.mail_params == {"SIZE": str(len(MESSAGE))} and tx.recipients == [("b@example.org", {})]


# -- pipelining --------------------------------------------------------------------------------

def test_mail_and_rcpts_are_pipelined_when_offered(peer: ScriptedPeer) -> None:
    deliver(peer, ["one@example.org", "two@example.org"])
    assert peer.pipelined == ["RCPT TO:<one@example.org>", "RCPT TO:<two@example.org>"]


def test_commands_are_sequential_without_pipelining(peer: ScriptedPeer) -> None:
    peer.extensions = ("SIZE 10485760", "ENHANCEDSTATUSCODES")
    result = deliver(peer, ["one@example.org", "two@example.org"])
    assert all(r.ok for r in result.replies.values())
    assert peer.pipelined == []


# -- against taube's own inbound server --------------------------------------------------------

def test_against_taube_inbound(tmp_path: Any) -> None:
    from tests.e2e.conftest import TaubeServer

    server = TaubeServer(tmp_path)
    server.add_user("alice@example.test")
    server.start()
    try:
        result = deliver(
            server,  # type: ignore[arg-type]  (host and port are all deliver() needs)
            [OutRecipient("alice@example.test", ("FAILURE",), "rfc822;alice@example.test"),
             OutRecipient("nobody@example.test")],
            message=b"Subject: outbound\r\n\r\n.dot line\r\nend\r\n", params={"ENVID": "e 1"})
    finally:
        server.stop()
    assert result.replies["alice@example.test"].ok
    assert result.replies["nobody@example.test"].status() == "5.1.1"
    [path] = (server.maildir("alice@example.test") / "new").iterdir()
    stored = path.read_bytes()
    assert stored.endswith(b"\r\nSubject: outbound\r\n\r\n.dot line\r\nend\r\n")
    assert b"using TLS" in stored  # STARTTLS was used
