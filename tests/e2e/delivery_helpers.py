"""Helpers of the outbound delivery tests: queue state, Maildir contents, reports."""

from __future__ import annotations

import email
import email.policy
import json
import smtplib
from email.message import EmailMessage, Message
from pathlib import Path

from tests.e2e.conftest import TaubeServer, wait_for

# Retry at once and look at the queue every second: the tests wait for seconds, not minutes.
FAST_QUEUE = '[queue]\nscan_interval = "1s"\nbackoff = ["1s"]\n'


def queue_section(extra: str = "") -> str:
    """A ``[queue]`` section: FAST_QUEUE's keys, overridden or extended by ``extra`` lines."""
    keys = {"scan_interval": '"1s"', "backoff": '["1s"]'}
    for line in extra.splitlines():
        if "=" in line:
            key, _, value = line.partition("=")
            keys[key.strip()] = value.strip()
    return "[queue]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())


def transport(routes: dict[str, str], delivery: str = "") -> str:
    """A ``[delivery]`` section (with ``delivery`` keys) and its transport table."""
    lines = ["[delivery]", delivery, "[delivery.transport]"]
    lines += [f'"{domain}" = "{hop}"' for domain, hop in routes.items()]
    return "\n".join(lines) + "\n"


def message(subject: str = "test", body: str = "hello\r\n", sender: str = "alice@a.test",
            to: str = "bob@b.test") -> bytes:
    return (f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@a.test>\r\n\r\n{body}").encode()


def send(server: TaubeServer, sender: str, recipients: list[str], data: bytes | None = None, *,
         mail_options: tuple[str, ...] = (), rcpt_options: tuple[str, ...] = ()) -> dict:
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.ehlo("client.test")
        return client.sendmail(sender, recipients, data or message(to=recipients[0]),
                               mail_options=list(mail_options), rcpt_options=list(rcpt_options))


def envelopes(server: TaubeServer) -> list[dict]:
    """The queue's envelopes as JSON documents (skipping one being replaced)."""
    out = []
    for path in sorted((server.data_dir / "queue" / "envelopes").glob("*.json")):
        try:
            out.append(json.loads(path.read_bytes()))
        except (FileNotFoundError, ValueError):
            continue
    return out


def recipient_states(server: TaubeServer) -> dict[str, dict]:
    return {r["address"]: r for entry in envelopes(server) for r in entry["recipients"]}


def queue_empty(server: TaubeServer) -> bool:
    return not list((server.data_dir / "queue" / "envelopes").glob("*.json"))


def mails(server: TaubeServer, address: str) -> list[bytes]:
    maildir = server.maildir(address)
    files = [p for sub in ("new", "cur") for p in (maildir / sub).glob("*") if p.is_file()]
    return [p.read_bytes() for p in sorted(files)]


def wait_for_mails(server: TaubeServer, address: str, count: int = 1, timeout: float = 20) -> list[bytes]:
    return wait_for(lambda: (m := mails(server, address)) and len(m) >= count and m,
                    timeout=timeout, what=f"{count} message(s) for {address}")


def parse(raw: bytes) -> Message:
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def report_parts(raw: bytes) -> tuple[Message, list[Message], list[dict[str, str]], Message | None]:
    """A DSN as (message, its parts, the per-recipient field blocks, the returned message or
    headers part)."""
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/report", msg.get_content_type()
    assert msg.get_param("report-type") == "delivery-status"
    parts = msg.get_payload()
    assert isinstance(parts, list)
    status = parts[1]
    assert status.get_content_type() == "message/delivery-status"
    blocks = status.get_payload()
    recipients = [dict(block.items()) for block in blocks[1:]]
    returned = parts[2] if len(parts) > 2 else None
    return msg, parts, recipients, returned


def by_recipient(blocks: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {b["Final-Recipient"].split(";", 1)[1].strip(): b for b in blocks}


__all__ = ["EmailMessage", "FAST_QUEUE", "queue_section", "Path", "by_recipient", "envelopes", "mails", "message",
           "parse", "queue_empty", "recipient_states", "report_parts", "send", "transport",
           "wait_for_mails"]
