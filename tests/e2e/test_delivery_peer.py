"""Outbound delivery against a scripted peer on loopback: 4xx, 5xx, a connection dropped in
the middle of DATA, DSN parameters and reports, the relayhost with AUTH, mail from <>.

The peer stands in for a remote MX whose answers the test chooses. Server A is the one under
test (a.test, user alice, postmaster -> alice); every remote domain is routed to the peer.
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import wait_for
from tests.e2e.delivery_helpers import (
    FAST_QUEUE,
    queue_section,
    by_recipient,
    mails,
    message,
    queue_empty,
    recipient_states,
    report_parts,
    send,
    transport,
    wait_for_mails,
)
from tests.peer import ScriptedPeer


@pytest.fixture
def peer():
    with ScriptedPeer() as p:
        yield p


def server_a(make_server, peer: ScriptedPeer, delivery: str = "", queue: str = ""):
    a = make_server(domains=("a.test",),
                    extra_toml=transport({"peer.test": f"{peer.host}:{peer.port}"}, delivery)
                    + queue_section(queue))
    a.add_user("alice@a.test")
    a.cli("alias", "add", "postmaster@a.test", "alice@a.test")
    return a.start()


def rcpt_by_local_part(address: str) -> str:
    local = address.split("@")[0]
    return {"gone": "550 5.1.1 <gone@peer.test>: Recipient address rejected: User unknown",
            "busy": "450 4.2.1 <busy@peer.test>: mailbox busy, try later"}.get(local, "250 2.1.5 Ok")


def test_per_recipient_results_bounce_defer_deliver(make_server, peer):
    peer.rcpt_reply = rcpt_by_local_part
    a = server_a(make_server, peer)
    send(a, "alice@a.test", ["ok@peer.test", "gone@peer.test", "busy@peer.test"],
         message(subject="three", to="ok@peer.test"))
    [tx] = peer.wait_for_transactions(1, timeout=20)
    assert [r for r, _ in tx.recipients] == ["ok@peer.test"]
    assert b"Subject: three" in tx.data
    # The 550 is bounced at once, in one report; the 450 waits in the queue.
    bounce = wait_for_mails(a, "alice@a.test")[0]
    msg, parts, blocks, returned = report_parts(bounce)
    assert msg["To"] == "<alice@a.test>" and msg["Auto-Submitted"] == "auto-replied"
    assert parts[0].get_content_type() == "text/plain"
    assert list(by_recipient(blocks)) == ["gone@peer.test"]
    block = by_recipient(blocks)["gone@peer.test"]
    assert block["Action"] == "failed"
    assert block["Status"] == "5.1.1"
    assert block["Diagnostic-Code"].startswith("smtp; 550 5.1.1")
    assert block["Remote-MTA"] == "dns; 127.0.0.1"
    assert block["Original-Recipient"] == "rfc822; gone@peer.test"
    assert returned is not None and returned.get_content_type() == "message/rfc822"
    states = wait_for(lambda: (s := recipient_states(a)) and s["busy@peer.test"]["status"] == "deferred" and s,
                      what="the deferral recorded")
    assert states["ok@peer.test"]["status"] == "delivered"
    assert states["gone@peer.test"]["status"] == "bounced"
    assert "450 4.2.1" in states["busy@peer.test"]["last_error"]
    # The next attempt (1 s later) delivers it once the peer accepts.
    peer.rcpt_reply = "250 2.1.5 Ok"
    txs = peer.wait_for_transactions(2, timeout=20)
    assert [r for r, _ in txs[1].recipients] == ["busy@peer.test"]
    wait_for(lambda: queue_empty(a), what="the queue to empty")
    assert len(mails(a, "alice@a.test")) == 1  # no report for the delivered ones


def test_connection_dropped_mid_data_defers(make_server, peer):
    peer.drop_mid_data = True
    a = server_a(make_server, peer, queue='backoff = ["1h"]')
    send(a, "alice@a.test", ["bob@peer.test"], message(body=("x" * 78 + "\r\n") * 3000))
    state = wait_for(lambda: (r := recipient_states(a).get("bob@peer.test")) and r["status"] == "deferred" and r,
                     what="a deferral")
    assert state["attempts"] == 1
    assert peer.transactions == []
    assert mails(a, "alice@a.test") == []  # a temporary failure is not reported
    peer.drop_mid_data = False
    result = a.cli("queue", "retry", _queue_id(a), "--timeout", "30")
    assert "tried" in result.stdout
    peer.wait_for_transactions(1, timeout=20)
    wait_for(lambda: queue_empty(a), what="the queue to empty")


def _queue_id(server) -> str:
    return next((server.data_dir / "queue" / "envelopes").glob("*.json")).stem


def test_data_refused_bounces_every_recipient(make_server, peer):
    peer.final_reply = "554 5.7.1 Message refused: looks like spam"
    a = server_a(make_server, peer)
    send(a, "alice@a.test", ["x@peer.test", "y@peer.test"], mail_options=("RET=HDRS", "ENVID=env+2B1"))
    bounce = wait_for_mails(a, "alice@a.test")[0]
    msg, _, blocks, returned = report_parts(bounce)
    reports = by_recipient(blocks)
    assert set(reports) == {"x@peer.test", "y@peer.test"}
    assert {b["Status"] for b in reports.values()} == {"5.7.1"}
    # RET=HDRS: only the header section comes back; ENVID is returned as sent (decoded).
    assert returned is not None and returned.get_content_type() == "text/rfc822-headers"
    status_part = report_parts(bounce)[1][1]
    assert "Original-Envelope-Id: env+1" in status_part.as_string()


def test_notify_never_gets_no_bounce(make_server, peer):
    peer.rcpt_reply = "550 5.1.1 User unknown"
    a = server_a(make_server, peer)
    send(a, "alice@a.test", ["gone@peer.test"], rcpt_options=("NOTIFY=NEVER",))
    wait_for(lambda: "status=bounced" in a.log, what="the bounce in the log")
    wait_for(lambda: queue_empty(a), what="the queue to empty")
    assert mails(a, "alice@a.test") == []


def test_notify_success_to_a_hop_without_dsn_gets_relayed_report(make_server, peer):
    peer.extensions = ("PIPELINING", "SIZE 10485760", "8BITMIME", "ENHANCEDSTATUSCODES")
    a = server_a(make_server, peer)
    send(a, "alice@a.test", ["bob@peer.test"], rcpt_options=("NOTIFY=SUCCESS", "ORCPT=rfc822;Bob@peer.test"))
    [tx] = peer.wait_for_transactions(1, timeout=20)
    assert tx.recipients == [("bob@peer.test", {})]  # no DSN parameters to a hop without DSN
    report = wait_for_mails(a, "alice@a.test")[0]
    msg, _, blocks, _ = report_parts(report)
    block = by_recipient(blocks)["bob@peer.test"]
    assert block["Action"] == "relayed" and block["Status"].startswith("2.")
    assert block["Original-Recipient"] == "rfc822; Bob@peer.test"
    assert "Successful Mail Delivery Report" in msg["Subject"]


def test_notify_success_passed_on_to_a_hop_with_dsn(make_server, peer):
    a = server_a(make_server, peer)
    send(a, "alice@a.test", ["bob@peer.test"], mail_options=("RET=HDRS", "ENVID=QQ+2B1"),
         rcpt_options=("NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;bob@peer.test"))
    [tx] = peer.wait_for_transactions(1, timeout=20)
    assert tx.mail_params.get("RET") == "HDRS" and tx.mail_params.get("ENVID") == "QQ+2B1"
    params = tx.recipients[0][1]
    assert params["NOTIFY"] == "SUCCESS,FAILURE" and params["ORCPT"] == "rfc822;bob@peer.test"
    wait_for(lambda: queue_empty(a), what="the queue to empty")
    assert mails(a, "alice@a.test") == []  # the next hop reports, not us


def test_null_sender_failure_goes_to_postmaster(make_server, peer):
    peer.rcpt_reply = "550 5.1.1 User unknown"
    a = server_a(make_server, peer)
    send(a, "", ["gone@peer.test"])
    notice = wait_for_mails(a, "alice@a.test")[0]  # postmaster@a.test is alice
    msg, _, blocks, _ = report_parts(notice)
    assert msg["To"] == "<postmaster@a.test>"
    assert by_recipient(blocks)["gone@peer.test"]["Action"] == "failed"
    wait_for(lambda: queue_empty(a), what="the queue to empty")


def test_null_sender_failure_only_logged_when_configured(make_server, peer):
    peer.rcpt_reply = "550 5.1.1 User unknown"
    a = server_a(make_server, peer, delivery='null_sender_failures = "log"')
    send(a, "", ["gone@peer.test"])
    wait_for(lambda: "undeliverable mail from <> discarded" in a.log, what="the log line")
    wait_for(lambda: queue_empty(a), what="the queue to empty")
    assert mails(a, "alice@a.test") == []


def test_relayhost_with_starttls_and_auth(make_server, tmp_path):
    with ScriptedPeer(starttls=True, auth=("relayuser", "relay-pw")) as smarthost:
        (tmp_path / "relay.pw").write_text("relay-pw\n")
        a = make_server(domains=("a.test",), extra_toml=(
            f'[delivery]\nrelayhost = "[{smarthost.host}]:{smarthost.port}"\n'
            f'relayhost_user = "relayuser"\nrelayhost_password_file = "{tmp_path / "relay.pw"}"\n'
            f'relayhost_tls = "encrypt"\n' + FAST_QUEUE))
        a.add_user("alice@a.test")
        a.start()
        send(a, "alice@a.test", ["someone@elsewhere.example"])
        [tx] = smarthost.wait_for_transactions(1, timeout=20)
        assert tx.tls and tx.auth_user == "relayuser"
        assert "relay-pw" not in a.log


def test_several_messages_share_one_connection(make_server, peer):
    a = server_a(make_server, peer, delivery="max_connections_per_destination = 1",
                 queue='backoff = ["1h"]')
    peer.greeting = "421 4.3.2 not now"
    for n in range(3):
        send(a, "alice@a.test", [f"r{n}@peer.test"], message(subject=f"m{n}"))
    try:
        wait_for(lambda: len([r for r in recipient_states(a).values() if r["status"] == "deferred"]) == 3,
                 what="three deferrals")
    except AssertionError:
        raise AssertionError(a.log + repr(recipient_states(a))) from None
    peer.greeting = "220 peer.test ESMTP"
    connections = peer.connections
    a.cli("queue", "flush", "peer.test", "--timeout", "30")
    peer.wait_for_transactions(3, timeout=20)
    assert peer.connections - connections == 1


def test_notify_success_for_local_delivery_gets_delivered_report(make_server, peer):
    a = server_a(make_server, peer)
    a.add_user("dora@a.test")
    send(a, "alice@a.test", ["dora@a.test"], message(subject="local", to="dora@a.test"),
         mail_options=("ENVID=local-1",), rcpt_options=("NOTIFY=SUCCESS",))
    assert len(wait_for_mails(a, "dora@a.test")) == 1
    report = wait_for_mails(a, "alice@a.test")[0]
    msg, parts, blocks, returned = report_parts(report)
    block = by_recipient(blocks)["dora@a.test"]
    assert block["Action"] == "delivered" and block["Status"] == "2.0.0"
    assert "Original-Envelope-Id: local-1" in parts[1].as_string()
    assert returned is not None and returned.get_content_type() == "text/rfc822-headers"
    assert "Subject: local" in returned.get_payload()


def test_local_delivery_without_notify_success_gets_no_report(make_server, peer):
    a = server_a(make_server, peer)
    a.add_user("dora@a.test")
    send(a, "alice@a.test", ["dora@a.test"], rcpt_options=("NOTIFY=FAILURE",))
    wait_for_mails(a, "dora@a.test")
    send(a, "alice@a.test", ["dora@a.test"], message(subject="second", to="dora@a.test"))
    wait_for_mails(a, "dora@a.test", 2)
    assert mails(a, "alice@a.test") == []


@pytest.mark.parametrize(("case", "status"), [
    ("TLS required, not offered", "4.7.4"),
    ("TLS handshake fails", "4.7.5"),
    ("AUTH without TLS", "4.7.10"),
])
def test_tls_and_auth_failures_at_the_next_hop_report_their_own_status(make_server, tmp_path, case, status):
    """A failure before MAIL that the client names (RFC 3207, RFC 4954) keeps its status in the
    queue and in the report: not the 4.4.1 of a host that does not answer."""
    (tmp_path / "relay.pw").write_text("relay-pw\n")
    relay_auth = (f'relayhost_user = "relayuser"\n'
                  f'relayhost_password_file = "{tmp_path / "relay.pw"}"\n')
    with ScriptedPeer(starttls=case == "TLS handshake fails") as hop:
        delivery = {
            "TLS required, not offered": 'tls = "encrypt"\n',
            "TLS handshake fails": 'tls = "encrypt"\ntls_verify = true\n',
            "AUTH without TLS": f'relayhost = "[{hop.host}]:{hop.port}"\n' + relay_auth,
        }[case]
        routes = {} if case == "AUTH without TLS" else {"peer.test": f"{hop.host}:{hop.port}"}
        a = make_server(domains=("a.test",), extra_toml=transport(routes, delivery)
                        + queue_section('lifetime = "3s"'))
        a.add_user("alice@a.test")
        a.start()
        send(a, "alice@a.test", ["bob@peer.test"], message(subject="no tls"))
        bounce = wait_for_mails(a, "alice@a.test", timeout=30)[0]
        _, _, blocks, _ = report_parts(bounce)
        block = by_recipient(blocks)["bob@peer.test"]
        assert (block["Action"], block["Status"]) == ("failed", status), a.log
        assert hop.transactions == []
