"""Outbound delivery between two real taube servers on loopback: A relays to B.

A is the server for a.test (alice), B for b.test (bob, carol). A reaches B through its transport
table or, in the DNS tests, through MX records served by a DNS server on loopback, with B on
127.0.0.2:25.
"""

from __future__ import annotations

import socket

import pytest

from tests.dnsserver import DNSServer
from tests.e2e.conftest import free_port, wait_for
from tests.e2e.delivery_helpers import (
    queue_section,
    by_recipient,
    envelopes,
    mails,
    message,
    queue_empty,
    recipient_states,
    report_parts,
    send,
    transport,
    wait_for_mails,
)
from tests.e2e.rawsmtp import RawSMTP


def make_b(make_server, **kwargs):
    b = make_server(domains=("b.test",), **kwargs)
    b.add_user("bob@b.test")
    b.add_user("carol@b.test")
    return b


def make_a(make_server, extra: str, queue: str = "", **kwargs):
    """A: queue settings for tests (``queue`` adds keys to its ``[queue]`` section)."""
    a = make_server(domains=("a.test",), extra_toml=extra + queue_section(queue), **kwargs)
    a.add_user("alice@a.test")
    a.cli("alias", "add", "postmaster@a.test", "alice@a.test")
    return a


def test_relay_to_second_server_multi_recipient(make_server):
    b = make_b(make_server).start()
    a = make_a(make_server, transport({"b.test": f"127.0.0.1:{b.port}"})).start()
    refused = send(a, "alice@a.test", ["bob@b.test", "carol@b.test"], message(subject="two"))
    assert refused == {}
    bob = wait_for_mails(b, "bob@b.test")
    carol = wait_for_mails(b, "carol@b.test")
    assert b"Subject: two" in bob[0] and b"Subject: two" in carol[0]
    # One transaction for both recipients: B logged one message with two recipients.
    wait_for(lambda: "nrcpt=2" in b.log, what="one transaction with 2 recipients at B")
    # B's copy: its own Return-Path, then its Received, then A's Received, then the message.
    assert bob[0].startswith(b"Return-Path: <alice@a.test>\r\nReceived: ")
    assert bob[0].count(b"Received: ") == 2
    wait_for(lambda: queue_empty(a), what="A's queue to empty")
    # Postfix-style log line per recipient: relay, delay, dsn, status and the remote reply.
    wait_for(lambda: "to=<carol@b.test>" in a.log and "status=sent" in a.log, what="log line")
    line = next(line for line in a.log.splitlines() if "taube.delivery" in line and "to=<bob@b.test>" in line)
    assert f"relay=127.0.0.1[127.0.0.1]:{b.port}" in line
    assert "dsn=2.0.0" in line and "delay=" in line and "queued as" in line


def test_next_hop_down_deferred_then_delivered(make_server):
    port = free_port()
    b = make_b(make_server, port=port)
    # The next attempt would be an hour away: only the flush can deliver it in this test.
    a = make_a(make_server, transport({"b.test": f"127.0.0.1:{port}"}), queue='backoff = ["1h"]').start()
    send(a, "alice@a.test", ["bob@b.test"])
    state = wait_for(lambda: (r := recipient_states(a).get("bob@b.test")) and r["status"] == "deferred" and r,
                     what="a deferral")
    assert state["attempts"] >= 1 and "refused" in state["last_error"].lower()
    listing = a.cli("queue", "list").stdout
    assert "bob@b.test" in listing
    b.start()
    result = a.cli("queue", "flush", "--timeout", "30")
    assert "1 message(s) tried: 1 left the queue, 0 still queued" in result.stdout
    wait_for_mails(b, "bob@b.test")
    wait_for(lambda: queue_empty(a), what="A's queue to empty")
    assert a.cli("queue", "list").stdout.strip() == "queue is empty"


def test_queue_survives_restart(make_server):
    port = free_port()
    b = make_b(make_server, port=port)
    a = make_a(make_server, transport({"b.test": f"127.0.0.1:{port}"})).start()
    send(a, "alice@a.test", ["bob@b.test"])
    wait_for(lambda: recipient_states(a).get("bob@b.test", {}).get("status") == "deferred",
             what="a deferral")
    assert a.stop() == 0
    b.start()
    a.start()
    wait_for_mails(b, "bob@b.test")
    wait_for(lambda: queue_empty(a), what="A's queue to empty after the restart")


def test_expired_message_bounces_with_failed_report(make_server):
    port = free_port()  # nobody listens here
    a = make_a(make_server, transport({"b.test": f"127.0.0.1:{port}"}), queue='lifetime = "3s"').start()
    send(a, "alice@a.test", ["bob@b.test"], message(subject="expiring"))
    bounce = wait_for_mails(a, "alice@a.test", timeout=30)[0]
    msg, parts, blocks, returned = report_parts(bounce)
    assert msg["From"].startswith("Mail Delivery System <MAILER-DAEMON@")
    assert bounce.startswith(b"Return-Path: <>\r\n")
    block = by_recipient(blocks)["bob@b.test"]
    assert block["Action"] == "failed"
    assert block["Status"].startswith("4.")
    assert returned is not None and "Subject: expiring" in returned.as_string()
    wait_for(lambda: queue_empty(a), what="the bounced message to leave the queue")
    assert "status=expired" in a.log


def test_delay_warning(make_server):
    port = free_port()
    a = make_a(make_server, transport({"b.test": f"127.0.0.1:{port}"}),
               queue='delay_warning = "1s"').start()
    send(a, "alice@a.test", ["bob@b.test"], message(subject="slow"))
    warning = wait_for_mails(a, "alice@a.test", timeout=30)[0]
    msg, _, blocks, _ = report_parts(warning)
    assert "Delayed Mail" in msg["Subject"]
    assert by_recipient(blocks)["bob@b.test"]["Action"] == "delayed"
    # The envelope records the warning (right after the report is committed) ...
    state = wait_for(lambda: (r := recipient_states(a)["bob@b.test"])["delay_warned"] and r,
                     what="delay_warned in the envelope")
    # ... and later attempts send no second one; the message is still queued.
    wait_for(lambda: recipient_states(a)["bob@b.test"]["attempts"] >= state["attempts"] + 2,
             what="two more attempts")
    assert len(mails(a, "alice@a.test")) == 1


def test_etrn_starts_delivery_of_deferred_mail(make_server):
    port = free_port()
    b = make_b(make_server, port=port)
    a = make_a(make_server, transport({"b.test": f"127.0.0.1:{port}"}), queue='backoff = ["1h"]').start()
    send(a, "alice@a.test", ["bob@b.test"])
    wait_for(lambda: recipient_states(a).get("bob@b.test", {}).get("status") == "deferred",
             what="a deferral")
    b.start()
    client = RawSMTP(a.port)
    client.send(b"EHLO b.test\r\n")
    assert "ETRN" in client.reply()
    client.send(b"ETRN other.test\r\n")
    assert client.reply().startswith("251 ")
    client.send(b"ETRN b.test\r\n")
    assert client.reply().startswith("253 ")
    client.send(b"QUIT\r\n")
    client.reply()
    client.sock.close()
    # The backoff says an hour: only ETRN can have started this delivery.
    wait_for_mails(b, "bob@b.test")


def _port_25_free(host: str) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            s.bind((host, 25))
        except OSError:
            return False
    return True


@pytest.fixture
def dns_server():
    with DNSServer() as server:
        yield server


@pytest.fixture
def mx_b(make_server):
    """B listening on 127.0.0.2:25, as a real MX would."""
    if not _port_25_free("127.0.0.2"):
        pytest.skip("127.0.0.2:25 is not available (needs root)")
    return make_b(make_server, host="127.0.0.2", port=25).start()


def dns_a(make_server, dns_server, extra: str = ""):
    return make_a(make_server, f'[dns]\nnameservers = ["{dns_server.address}"]\ntimeout = "2s"\n' + extra).start()


def test_mx_lookup_preference_order(make_server, dns_server, mx_b):
    # The preferred MX has no server (127.0.0.3:25 refuses): the next one gets the mail.
    dns_server.add("b.test", "MX", "20 mx2.b.test.", "10 mx1.b.test.")
    dns_server.add("mx1.b.test", "A", "127.0.0.3")
    dns_server.add("mx2.b.test", "A", "127.0.0.2")
    a = dns_a(make_server, dns_server)
    send(a, "alice@a.test", ["bob@b.test"])
    wait_for_mails(mx_b, "bob@b.test")
    log = wait_for(lambda: "relay=mx2.b.test" in a.log and a.log, what="the delivery log line")
    assert "mx1.b.test[127.0.0.3]:25" in log and "relay=mx2.b.test[127.0.0.2]:25" in log, log
    assert log.index("mx1.b.test[127.0.0.3]:25") < log.index("relay=mx2.b.test[127.0.0.2]:25")
    assert ("b.test", "MX") in dns_server.queries


def test_no_mx_uses_the_domain_address(make_server, dns_server, mx_b):
    dns_server.add("b.test", "A", "127.0.0.2")
    a = dns_a(make_server, dns_server)
    send(a, "alice@a.test", ["carol@b.test"])
    wait_for_mails(mx_b, "carol@b.test")
    wait_for(lambda: "relay=b.test[127.0.0.2]:25" in a.log, what="the delivery log line")


def test_null_mx_bounces_at_once(make_server, dns_server):
    dns_server.add("b.test", "MX", "0 .")
    a = dns_a(make_server, dns_server)
    send(a, "alice@a.test", ["bob@b.test"], message(subject="nullmx"))
    bounce = wait_for_mails(a, "alice@a.test")[0]
    _, _, blocks, _ = report_parts(bounce)
    block = by_recipient(blocks)["bob@b.test"]
    assert block["Action"] == "failed" and block["Status"] == "5.1.10"
    wait_for(lambda: queue_empty(a), what="the bounced message to leave the queue")


def test_nxdomain_bounces(make_server, dns_server):
    a = dns_a(make_server, dns_server)
    send(a, "alice@a.test", ["bob@nowhere.test"])
    bounce = wait_for_mails(a, "alice@a.test")[0]
    _, _, blocks, _ = report_parts(bounce)
    assert by_recipient(blocks)["bob@nowhere.test"]["Status"].startswith("5.")


def test_servfail_defers(make_server, dns_server):
    dns_server.add("b.test", "MX", "10 mx.b.test.")
    dns_server.servfail("b.test")
    a = dns_a(make_server, dns_server)
    send(a, "alice@a.test", ["bob@b.test"])
    state = wait_for(lambda: (r := recipient_states(a).get("bob@b.test")) and r["status"] == "deferred" and r,
                     what="a deferral")
    assert state["last_error"]
    assert mails(a, "alice@a.test") == []  # no bounce for a temporary failure
    assert len(envelopes(a)) == 1


def test_mx_pointing_at_myself_is_a_loop(make_server, dns_server):
    dns_server.add("b.test", "MX", "10 mail.example.test.")  # the hostname of A
    dns_server.add("mail.example.test", "A", "127.0.0.1")
    a = dns_a(make_server, dns_server)
    send(a, "alice@a.test", ["bob@b.test"])
    bounce = wait_for_mails(a, "alice@a.test")[0]
    _, _, blocks, _ = report_parts(bounce)
    assert by_recipient(blocks)["bob@b.test"]["Status"] == "5.4.6"
    assert "loops back to myself" in bounce.decode()


def _runner_pids(server) -> list[int]:
    """The queue runner processes serving this server's configuration."""
    import subprocess

    out = subprocess.run(["pgrep", "-f", f"taube.delivery.process --fd [0-9]+ --config {server.config}"],
                         capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


def test_runner_inside_the_server_process(make_server):
    b = make_b(make_server).start()
    a = make_a(make_server, transport({"b.test": f"127.0.0.1:{b.port}"}, "runner_process = false")).start()
    assert _runner_pids(a) == []
    send(a, "alice@a.test", ["bob@b.test"])
    wait_for_mails(b, "bob@b.test")
    wait_for(lambda: queue_empty(a), what="A's queue to empty")


def test_runner_process_is_restarted_and_never_outlives_the_server(make_server):
    import os
    import signal

    b = make_b(make_server).start()
    a = make_a(make_server, transport({"b.test": f"127.0.0.1:{b.port}"})).start()
    [first] = wait_for(lambda: _runner_pids(a), what="the runner process")
    os.kill(first, signal.SIGKILL)
    [second] = wait_for(lambda: (p := _runner_pids(a)) and p != [first] and p, what="a new runner")
    assert "exited with status -9; starting it again" in a.log
    send(a, "alice@a.test", ["bob@b.test"])
    wait_for_mails(b, "bob@b.test")
    a.kill()  # SIGKILL: the server cannot stop its runner, which must notice and stop
    wait_for(lambda: _runner_pids(a) == [], what="the orphaned runner to stop")
