"""The inbound policy pipeline: order, the first refusal ends a stage, tempfail vs reject,
results collected per connection and per transaction; and the site's own rules as a check."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress

import pytest

from taube.policy.local import LocalPolicy, LocalRules
from taube.policy.pipeline import Check, Context, Pipeline, Recipient, Transaction, Verdict
from taube.policy.relay import RelayPolicy
from taube.proto.replies import Reply

REJECT = Reply(code=550, enhanced="5.7.1", text="go away")
TEMPFAIL = Reply(code=451, enhanced="4.7.1", text="later")


def run(coro):
    return asyncio.run(coro)


class Recorder(Check):
    def __init__(self, name: str, calls: list[str], verdict: Verdict | None = None) -> None:
        self.name = name
        self.calls = calls
        self.verdict = verdict or Verdict.cont(results={name: "pass"})

    async def rcpt(self, ctx: Context) -> Verdict:
        self.calls.append(self.name)
        await asyncio.sleep(0)  # a check may wait (DNS): the pipeline awaits it
        return self.verdict

    async def helo(self, ctx: Context) -> Verdict:
        self.calls.append(self.name)
        return self.verdict


def test_checks_run_in_order_and_all_continue():
    calls: list[str] = []
    pipeline = Pipeline([Recorder("a", calls), Recorder("b", calls), Recorder("c", calls)])
    ctx = Context(client_ip="192.0.2.1")
    verdict = run(pipeline.rcpt(ctx))
    assert verdict.action == "continue" and verdict.reply is None
    assert calls == ["a", "b", "c"]
    assert ctx.tx.results == {"a": "pass", "b": "pass", "c": "pass"}
    assert ctx.results == {}  # rcpt results belong to the transaction


def test_first_refusal_wins_and_ends_the_stage():
    calls: list[str] = []
    pipeline = Pipeline([
        Recorder("a", calls),
        Recorder("b", calls, Verdict.tempfail(TEMPFAIL, "greylisted", results={"b": "temperror"})),
        Recorder("c", calls, Verdict.reject(REJECT, "listed")),
    ])
    ctx = Context(client_ip="192.0.2.1")
    verdict = run(pipeline.rcpt(ctx))
    assert calls == ["a", "b"]
    assert verdict.action == "tempfail" and verdict.reply == TEMPFAIL and verdict.reason == "greylisted"
    assert ctx.tx.results == {"a": "pass", "b": "temperror"}  # the refusing check's too


def test_reject_vs_tempfail_and_the_error_the_session_raises():
    reject = Verdict.reject(REJECT, "listed")
    assert reject.refused and reject.action == "reject"
    error = reject.error()
    assert error.reply == REJECT and error.reason == "listed" and str(error).endswith("(listed)")
    assert Verdict.tempfail(TEMPFAIL).refused
    assert not Verdict.cont().refused
    with pytest.raises(ValueError):
        Verdict.reject(TEMPFAIL)  # a reject is 5xx
    with pytest.raises(ValueError):
        Verdict.tempfail(REJECT)  # a tempfail is 4xx
    with pytest.raises(ValueError):
        Verdict.cont(REJECT)  # a continue reply is positive


def test_verdicts_are_frozen():
    verdict = Verdict.cont(results={"spf": "pass"})
    with pytest.raises(AttributeError):
        verdict.action = "reject"  # type: ignore[misc]
    with pytest.raises(TypeError):
        verdict.results["spf"] = "fail"  # type: ignore[index]


def test_connection_results_and_transaction_results():
    calls: list[str] = []
    pipeline = Pipeline([Recorder("iprev", calls)])
    ctx = Context(client_ip="192.0.2.1")
    run(pipeline.helo(ctx))
    assert ctx.results == {"iprev": "pass"}
    run(pipeline.rcpt(ctx))
    assert ctx.all_results() == {"iprev": "pass"}
    ctx.new_transaction()
    assert ctx.tx.results == {} and ctx.results == {"iprev": "pass"}  # the connection's stay


def test_only_checks_that_implement_a_stage_are_called():
    calls: list[str] = []

    class MailOnly(Check):
        async def mail(self, ctx: Context) -> Verdict:
            calls.append("mail")
            return Verdict.cont()

    pipeline = Pipeline([MailOnly()])
    assert pipeline.implements("mail") and not pipeline.implements("data_end")
    assert run(pipeline.data_end(Context(client_ip="192.0.2.1"))).action == "continue"
    assert calls == []


def test_last_positive_reply_of_a_continuing_stage_is_kept():
    class Answer(Check):
        async def vrfy(self, ctx: Context) -> Verdict:
            return Verdict.cont(Reply(code=250, enhanced="2.0.0", text="<a@example.test>"))

    verdict = run(Pipeline([Answer(), Check()]).vrfy(Context(client_ip="192.0.2.1")))
    assert verdict.reply is not None and verdict.reply.code == 250


# --- the site's own rules ------------------------------------------------------------------
class FakeDirectory:
    def __init__(self) -> None:
        self.users = {"alice@example.test"}
        self.aliases = {"info@example.test": ["alice@example.test"]}

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower() == "example.test"

    def list_domains(self) -> list[str]:
        return ["example.test"]

    def user_exists(self, address: str) -> bool:
        return address.lower() in self.users

    def get_alias(self, address: str) -> list[str] | None:
        return self.aliases.get(address.lower())


def local(**rules) -> LocalPolicy:
    return LocalPolicy(LocalRules(hostname="mx.example.test", domains=("example.test",), **rules),
                       FakeDirectory(), RelayPolicy([ipaddress.ip_network("127.0.0.0/8")]))  # type: ignore[arg-type]


def rcpt(policy: LocalPolicy, address: str, client_ip: str = "192.0.2.1", user: str | None = None):
    ctx = Context(client_ip=client_ip, user=user)
    local_part, _, domain = address.rpartition("@") if "@" in address else (address, "", "")
    ctx.tx.rcpt = Recipient(address=address, local=local_part, domain=domain)
    return run(Pipeline([policy]).rcpt(ctx)), ctx.tx.rcpt


def test_local_rcpt_rules_keep_their_replies():
    policy = local()
    verdict, recipient = rcpt(policy, "alice@example.test")
    assert verdict.action == "continue" and [t.address for t in recipient.targets] == ["alice@example.test"]
    verdict, _ = rcpt(policy, "bob@example.test")
    assert str(verdict.reply) == ("550 5.1.1 <bob@example.test>: Recipient address rejected: "
                                  "User unknown in local recipient table")
    assert verdict.reason == "unknown user"
    verdict, _ = rcpt(policy, "someone@example.org")
    assert str(verdict.reply) == "554 5.7.1 <someone@example.org>: Relay access denied"
    assert verdict.reason == "relay to example.org from untrusted client"
    assert rcpt(policy, "someone@example.org", client_ip="127.0.0.1")[0].action == "continue"
    assert rcpt(policy, "someone@example.org", user="alice@example.test")[0].action == "continue"


def test_postmaster_without_domain_is_completed():
    policy = local(postmaster="alice")
    verdict, recipient = rcpt(policy, "postmaster")
    assert verdict.action == "continue" and recipient.address == "alice@example.test"


def test_sender_ownership_at_mail():
    policy = local()
    ctx = Context(client_ip="192.0.2.1", user="alice@example.test")
    ctx.tx.sender = "info@example.test"
    assert run(Pipeline([policy]).mail(ctx)).action == "continue"
    ctx.tx.sender = "bob@example.test"
    verdict = run(Pipeline([policy]).mail(ctx))
    assert str(verdict.reply) == ("553 5.7.1 <bob@example.test>: Sender address rejected: "
                                  "not owned by user alice@example.test")
    assert run(Pipeline([local(sender_login_match=False)]).mail(ctx)).action == "continue"


def test_etrn_right_is_a_tempfail_for_untrusted_clients():
    verdict = run(Pipeline([local()]).etrn(Context(client_ip="192.0.2.1", argument="example.org")))
    assert verdict.action == "tempfail" and verdict.reply is not None and verdict.reply.code == 459
    assert run(Pipeline([local()]).etrn(Context(client_ip="127.0.0.1"))).action == "continue"


# --- the session runs the pipeline ---------------------------------------------------------
class FakeIO:
    """The session's side of a connection: one client line per read."""

    def __init__(self, lines: list[bytes]) -> None:
        self.lines = list(lines)
        self.out = bytearray()

    async def read(self) -> bytes:
        return self.lines.pop(0) if self.lines else b""

    async def send(self, data: bytes) -> None:
        self.out += data

    def write(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def extra(self, name: str) -> None:
        return None


class Stamp(Check):
    """What a future SPF/DKIM check does: refuse one recipient, stamp the message at data end."""

    name = "stamp"

    def __init__(self) -> None:
        self.header: bytes | None = None
        self.seen: Transaction | None = None

    async def rcpt(self, ctx: Context) -> Verdict:
        assert ctx.tx.rcpt is not None
        if ctx.tx.rcpt.address.startswith("grey@"):
            return Verdict.tempfail(Reply(code=451, enhanced="4.7.1", text="Greylisted, try later"), "greylisted")
        return Verdict.cont(results={"stamp": "pass"})

    async def data_end(self, ctx: Context) -> Verdict:
        self.header = ctx.tx.header
        self.seen = dataclasses.replace(ctx.tx)
        assert ctx.tx.results == {"stamp": "pass"}
        ctx.tx.prepend.append(b"Authentication-Results: mx.example.test; stamp=pass\r\n")
        return Verdict.cont()


class Listed(Check):
    """A DNSBL-like connect check."""

    def __init__(self, listed: bool) -> None:
        self.listed = listed

    async def connect(self, ctx: Context) -> Verdict:
        await asyncio.sleep(0)  # a DNS lookup
        if self.listed:
            return Verdict.reject(Reply(code=554, enhanced="5.7.1",
                                        text=f"Service unavailable; client [{ctx.client_ip}] blocked"),
                                  "listed in bl.example")
        return Verdict.cont(results={"dnsbl": "pass"})


def session_with(tmp_path, checks: list[Check], lines: list[bytes], users: tuple[str, ...] = ()) -> bytes:
    """Run one SMTP session over ``lines`` with ``checks`` before the site's own rules."""
    from taube.config import Settings
    from taube.directory.sqlite import SQLiteDirectory
    from taube.net.services import Services
    from taube.net.smtp_session import SMTPSession
    from taube.queue.spool import Spool
    from taube.sharedstate import LocalState
    from taube.store.maildir import MaildirStore

    settings = Settings(hostname="mx.example.test", data_dir=tmp_path, domains=["example.test"])
    directory = SQLiteDirectory(tmp_path / "taube.db", settings.domains)
    for user in users:
        directory.add_user(user, "secret")
    relay = RelayPolicy(settings.networks())
    state = LocalState()
    pipeline = Pipeline([*checks, LocalPolicy(LocalRules.from_settings(settings), directory, relay, state)])
    services = Services(settings=settings, directory=directory, relay=relay,
                        spool=Spool(tmp_path, settings.hostname, MaildirStore(tmp_path / "mail")),
                        state=state, tls=None, mailboxes=lambda user: None,  # POP3's, unused here
                        pipeline=pipeline)
    io = FakeIO(lines)
    session = SMTPSession(services, io, "127.0.0.1",  # type: ignore[arg-type]
                          smtp=settings.smtp, auth=settings.auth, hostname=settings.hostname)
    asyncio.run(session.run())
    return bytes(io.out)


def test_session_runs_the_pipeline_and_prepends_above_received(tmp_path) -> None:
    stamp = Stamp()
    out = session_with(tmp_path, [stamp], [
        b"EHLO client.test\r\n", b"MAIL FROM:<s@sender.test>\r\n",
        b"RCPT TO:<grey@example.test>\r\n", b"RCPT TO:<nobody@example.test>\r\n",
        b"RCPT TO:<alice@example.test>\r\n", b"DATA\r\n",
        b"Subject: hi\r\n\r\nbody\r\n.\r\n", b"QUIT\r\n"], users=("alice@example.test",))
    replies = out.decode()
    assert "451 4.7.1 Greylisted, try later\r\n" in replies  # the first refusal wins
    assert "550 5.1.1 <nobody@example.test>: Recipient address rejected" in replies
    assert "250 2.0.0 Ok: queued as" in replies
    assert stamp.header == b"Subject: hi\r\n"
    assert stamp.seen is not None and [r.address for r in stamp.seen.recipients] == ["alice@example.test"]
    (path,) = (tmp_path / "mail").glob("*/*/new/*")
    stored = path.read_bytes()
    assert stored.startswith(b"Return-Path: <s@sender.test>\r\n"
                             b"Authentication-Results: mx.example.test; stamp=pass\r\nReceived: ")
    assert stored.endswith(b"\r\nSubject: hi\r\n\r\nbody\r\n")
    assert b"\tfor <alice@example.test>; " in stored  # the one accepted recipient
    assert f",S={len(stored)}" in path.name


def test_the_checks_see_the_transaction_the_session_commits(tmp_path) -> None:
    """One record of the transaction: what data_end sees (sender, accepted recipients with
    their targets and RFC 3461 parameters, queue id) is what goes into the spool."""
    stamp = Stamp()
    out = session_with(tmp_path, [stamp], [
        b"EHLO client.test\r\n", b"MAIL FROM:<s@sender.test> RET=hdrs ENVID=QQ+2Bx\r\n",
        b"RCPT TO:<alice@example.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;a@x.test\r\n",
        b"RCPT TO:<nobody@example.test>\r\n", b"RCPT TO:<ALICE@example.test>\r\n", b"DATA\r\n",
        b"Subject: hi\r\n\r\nbody\r\n.\r\n", b"QUIT\r\n"], users=("alice@example.test",))
    tx = stamp.seen
    assert tx is not None and tx.sender == "s@sender.test"
    assert tx.mail_params == {"RET": "HDRS", "ENVID": "QQ+x"}  # as the envelope keeps them
    assert [r.address for r in tx.recipients] == ["alice@example.test", "ALICE@example.test"]
    first = tx.recipients[0].targets
    assert [(t.kind, t.address, t.notify, t.orcpt) for t in first] == [
        ("local", "alice@example.test", ("SUCCESS", "DELAY"), "rfc822;a@x.test")]
    assert tx.targets == tuple(first)  # two RCPTs, one final destination: one copy
    assert tx.queue_id and f"queued as {tx.queue_id}" in out.decode()
    (path,) = (tmp_path / "mail").glob("*/*/new/*")
    assert b" for <" not in path.read_bytes().split(b"\r\n\r\n")[0]  # Received names no single recipient


def test_a_connect_refusal_replaces_the_greeting(tmp_path, caplog) -> None:
    caplog.set_level("INFO", logger="taube.smtp")
    out = session_with(tmp_path, [Listed(True)], [b"EHLO client.test\r\n"])
    assert out == b"554 5.7.1 Service unavailable; client [127.0.0.1] blocked\r\n"
    assert "reject client=127.0.0.1 554 5.7.1" in caplog.text and "(listed in bl.example)" in caplog.text


def test_a_connect_check_that_continues_gets_the_usual_greeting(tmp_path) -> None:
    out = session_with(tmp_path, [Listed(False)], [b"EHLO client.test\r\n", b"QUIT\r\n"])
    assert out.startswith(b"220 mx.example.test ") and b"\r\n250" in out and out.endswith(b"221 2.0.0 mx.example.test Bye\r\n")
