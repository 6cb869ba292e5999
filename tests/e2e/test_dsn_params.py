"""RFC 3461 DSN parameters and RFC 1985 ETRN through the real server."""

from __future__ import annotations

import json
import smtplib
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path

import pytest

from tests.e2e.conftest import TaubeServer, free_port
from tests.e2e.rawsmtp import RawSMTP

# Never resolvable (RFC 6761); routed to a closed local port besides, so that a queue runner
# only ever defers it and the envelope stays in the queue, whatever the DNS says.
REMOTE = "remote.invalid"


@pytest.fixture
def server(make_server) -> TaubeServer:
    s = make_server(extra_toml=f'[delivery]\ntransport = {{ "{REMOTE}" = "127.0.0.1:{free_port()}" }}\n')
    s.add_user("alice@example.test")
    return s.start()


def message() -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "lb@trash.test"
    msg["To"] = f"bob@{REMOTE}"
    msg["Subject"] = "dsn"
    msg.set_content("hello\n")
    return msg


def queued_envelopes(server: TaubeServer) -> list[dict]:
    directory = server.data_dir / "queue" / "envelopes"
    return [json.loads(p.read_bytes()) for p in sorted(Path(directory).glob("*.json"))]


def test_dsn_parameters_reach_the_queue_envelope(server: TaubeServer) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as c:
        c.ehlo("client.test")
        assert c.has_extn("dsn")
        assert c.has_extn("etrn")  # the default: "trusted"
        refused = c.sendmail("lb@trash.test", [f"bob@{REMOTE}"], message().as_bytes(policy=SMTP_POLICY),
                             mail_options=["RET=HDRS", "ENVID=QQ+2Bxyz"],
                             rcpt_options=["NOTIFY=SUCCESS,FAILURE", f"ORCPT=rfc822;bob+2Bx@{REMOTE}"])
        assert refused == {}
    [envelope] = queued_envelopes(server)
    [recipient] = envelope["recipients"]
    assert recipient["address"] == f"bob@{REMOTE}"
    assert recipient["notify"] == ["SUCCESS", "FAILURE"]
    assert recipient["orcpt"] == f"rfc822;bob+x@{REMOTE}"
    assert envelope["params"]["RET"] == "HDRS"
    assert envelope["params"]["ENVID"] == "QQ+xyz"


def test_alias_targets_share_the_rcpt_dsn_parameters(server: TaubeServer) -> None:
    server.cli("alias", "add", "team@example.test", f"alice@example.test,x@{REMOTE},y@{REMOTE}")
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as c:
        assert c.sendmail("lb@trash.test", ["team@example.test"], message().as_bytes(policy=SMTP_POLICY),
                          rcpt_options=["NOTIFY=NEVER"]) == {}
    [envelope] = queued_envelopes(server)
    assert sorted(r["address"] for r in envelope["recipients"]) == [f"x@{REMOTE}", f"y@{REMOTE}"]
    assert all(r["notify"] == ["NEVER"] and r["orcpt"] is None for r in envelope["recipients"])
    assert "RET" not in envelope["params"] and "ENVID" not in envelope["params"]


def test_bad_dsn_parameters_are_refused(server: TaubeServer) -> None:
    with RawSMTP(server.port) as c:
        assert c.cmd("EHLO client.test").startswith("250-")
        assert c.cmd("MAIL FROM:<lb@trash.test> RET=NONE").startswith("501 5.5.4 Syntax: RET=FULL|HDRS")
        assert c.cmd("MAIL FROM:<lb@trash.test> ENVID=a+2").startswith("501 5.5.4 Syntax: ENVID=")
        assert c.cmd("MAIL FROM:<lb@trash.test> NOTIFY=NEVER").startswith("555 5.5.4")
        assert c.cmd("MAIL FROM:<lb@trash.test> RET=FULL").startswith("250 2.1.0")
        assert c.cmd("RCPT TO:<alice@example.test> NOTIFY=NEVER,SUCCESS").startswith("501 5.5.4 Syntax: NOTIFY=")
        assert c.cmd("RCPT TO:<alice@example.test> ORCPT=alice@example.test").startswith("501 5.5.4 Syntax: ORCPT=")
        assert c.cmd("RCPT TO:<alice@example.test> RET=FULL").startswith("555 5.5.4")
        assert c.cmd("RCPT TO:<alice@example.test> NOTIFY=failure,delay").startswith("250 2.1.5")
        assert c.cmd("QUIT").startswith("221")


def test_etrn_off_is_502(make_server) -> None:
    server = make_server(smtp_toml='etrn = "off"').start()
    with RawSMTP(server.port) as c:
        ehlo = c.cmd("EHLO client.test")
        assert "DSN" in ehlo and "ETRN" not in ehlo
        assert c.cmd("ETRN example.test").startswith("502 5.5.1")


def test_etrn_from_untrusted_client_is_459(make_server) -> None:
    server = make_server(trusted=("192.0.2.0/24",)).start()
    with RawSMTP(server.port) as c:
        assert "ETRN" in c.cmd("EHLO client.test")
        reply = c.cmd("ETRN example.test")
        assert reply.startswith("459 4.7.1 Node example.test not allowed")
        assert c.cmd("ETRN @example.test").startswith("459 4.7.1 Node @example.test not allowed")
    assert "etrn client=127.0.0.1 node=example.test result=459" in server.log


def test_etrn_syntax_and_sequence(server: TaubeServer) -> None:
    with RawSMTP(server.port) as c:
        assert c.cmd("ETRN example.test").startswith("503 5.5.1")
        assert c.cmd("EHLO client.test").startswith("250-")
        assert c.cmd("ETRN").startswith("501 5.5.4 Syntax: ETRN [@|#]<domain>")
        assert c.cmd("ETRN bad_domain").startswith("501 5.5.4")
        assert c.cmd("MAIL FROM:<lb@trash.test>").startswith("250")
        assert c.cmd("ETRN example.test").startswith("503 5.5.1")
        assert c.cmd("RSET").startswith("250")
        assert c.cmd("ETRN #somequeue").startswith("458 4.3.0 Unable to queue messages for node #somequeue")
        assert c.cmd("QUIT").startswith("221")
