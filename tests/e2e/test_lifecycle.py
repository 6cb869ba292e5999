"""Process lifecycle: crash after 250, graceful shutdown, reload, bad configuration (a full disk:
test_storage.py)."""

from __future__ import annotations

import mailbox
import signal
import subprocess
from pathlib import Path

from tests.e2e.conftest import TAUBE, TaubeServer, wait_for
from tests.e2e.rawsmtp import RawSMTP


def send(port: int, rcpts: list[str], subject: str = "hi") -> str:
    with RawSMTP(port) as c:
        c.cmd("EHLO x")
        assert c.cmd("MAIL FROM:<lb@trash.test>").startswith("250")
        for r in rcpts:
            assert c.cmd(f"RCPT TO:<{r}>").startswith("250")
        assert c.cmd("DATA").startswith("354")
        reply = c.cmd(f"Subject: {subject}\r\n\r\nbody\r\n.")
        assert reply.startswith("250 2.0.0 Ok: queued as ")
        return reply.split()[-1]


def test_sigkill_right_after_250_loses_nothing(server: TaubeServer) -> None:
    queue_id = send(server.port, ["alice@example.test", "far@remote.test"], subject="durable")
    server.kill()  # SIGKILL: no chance to flush anything after the 250
    server.start()
    [msg] = list(mailbox.Maildir(server.maildir("alice@example.test"), create=False))
    assert msg["Subject"] == "durable"
    envelope = server.data_dir / "queue" / "envelopes" / f"{queue_id}.json"
    assert "far@remote.test" in envelope.read_text()
    assert (server.data_dir / "queue" / "messages" / queue_id).exists()
    # the restarted server still accepts mail
    send(server.port, ["alice@example.test"], subject="after restart")


def test_sigkill_mid_data_leaves_nothing_visible(server: TaubeServer) -> None:
    with RawSMTP(server.port) as c:
        c.cmd("EHLO x")
        c.cmd("MAIL FROM:<lb@trash.test>")
        c.cmd("RCPT TO:<alice@example.test>")
        c.cmd("DATA")
        c.send(b"Subject: half\r\n\r\n" + b"x" * 70_000)
        server.kill()
    server.start()
    maildir = server.maildir("alice@example.test")
    assert not maildir.exists() or list(mailbox.Maildir(maildir, create=False)) == []
    assert list((server.data_dir / "queue" / "messages").iterdir()) == []


def test_graceful_shutdown_finishes_transaction_then_421(server: TaubeServer) -> None:
    with RawSMTP(server.port) as busy, RawSMTP(server.port) as idle:
        busy.cmd("EHLO x")
        assert busy.cmd("MAIL FROM:<lb@trash.test>").startswith("250")
        idle.cmd("EHLO y")
        server.send_signal(signal.SIGTERM)
        assert idle.reply().startswith("421 4.3.2")  # idle clients are told at once
        assert busy.cmd("RCPT TO:<alice@example.test>").startswith("250")
        assert busy.cmd("DATA").startswith("354")
        assert busy.cmd("Subject: in flight\r\n\r\nx\r\n.").startswith("250 2.0.0")
        assert busy.reply().startswith("421 4.3.2")  # after its transaction, the busy one too
    assert server.stop() == 0
    [msg] = list(mailbox.Maildir(server.maildir("alice@example.test"), create=False))
    assert msg["Subject"] == "in flight"


def test_shutdown_grace_expires_with_421(make_server) -> None:
    server = make_server(smtp_toml='shutdown_grace = "1s"')
    server.add_user("alice@example.test")
    server.start()
    with RawSMTP(server.port) as c:
        c.cmd("EHLO x")
        c.cmd("MAIL FROM:<lb@trash.test>")
        server.send_signal(signal.SIGTERM)
        assert c.reply().startswith("421 4.3.2")
    assert server.stop() == 0


def test_sighup_reloads_domains_and_users(server: TaubeServer) -> None:
    with RawSMTP(server.port) as c:
        c.cmd("EHLO x")
        c.cmd("MAIL FROM:<lb@trash.test>")
        # not local and the client is trusted: a relay, not a local delivery
        text = server.config.read_text().replace('trusted_networks = ["127.0.0.0/8", "::1/128"]',
                                                 'trusted_networks = ["192.0.2.0/24"]')
        server.config.write_text(text.replace('domains = ["example.test"]',
                                              'domains = ["example.test", "new.test"]'))
        server.add_user("carol@new.test")
        server.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in server.log, what="reload")
        # the open connection survives the reload
        assert c.cmd("NOOP").startswith("250")
    with RawSMTP(server.port) as c:
        c.cmd("EHLO x")
        c.cmd("MAIL FROM:<lb@trash.test>")
        assert c.cmd("RCPT TO:<carol@new.test>").startswith("250")
        assert c.cmd("RCPT TO:<x@remote.test>").startswith("554 5.7.1")  # no longer trusted


def test_bad_reload_keeps_running_config(server: TaubeServer) -> None:
    server.config.write_text(server.config.read_text() + "\nbogus_key = 1\n")
    server.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload failed" in server.log, what="reload failure in the log")
    assert "bogus_key" in server.log
    send(server.port, ["alice@example.test"])


def test_bad_config_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "taube.toml"
    cfg.write_text('[smtp]\nmax_message_size = "big"\nlisten = ["nonsense"]\n')
    proc = subprocess.run([TAUBE, "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "smtp.max_message_size" in proc.stderr and "smtp.listen" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_one_log_line_per_message(server: TaubeServer) -> None:
    queue_id = send(server.port, ["alice@example.test", "bob@example.test"])
    lines = [line for line in server.log.splitlines() if queue_id in line and "result=" in line]
    assert len(lines) == 1
    line = lines[0]
    for part in ("client=127.0.0.1", "from=<lb@trash.test>", "<alice@example.test>", "<bob@example.test>",
                 "size=", "result=queued"):
        assert part in line
