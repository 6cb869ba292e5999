"""The SMTP spooler keeps the client's header section for the data_end checks and reports, and
no more: however the reads fall, and however big the body is."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

from taube.addressing import Target
from taube.net.smtp_spooler import Spooler
from taube.policy.pipeline import Recipient, Transaction
from taube.queue.spool import Spool
from taube.store.maildir import MaildirStore

RECEIVED = b"Received: from x ([192.0.2.1])\r\n\tby mx (taube) with ESMTP id Q1; now\r\n"


def spooler(tmp_path: Path) -> tuple[Spooler, Transaction]:
    spool = Spool(tmp_path, "mx.example.test", MaildirStore(tmp_path / "mail"))
    services = SimpleNamespace(spool=spool, runner=None, reporter=None)
    s = Spooler(services, "192.0.2.1", header_limit=102400)  # type: ignore[arg-type]
    target = Target(kind="local", address="alice@example.test", original="alice@example.test")
    tx = Transaction(sender="a@example.org", queue_id=spool.new_queue_id(), recipients=[
        Recipient(address="alice@example.test", local="alice", domain="example.test", targets=[target])])
    return s, tx


def fill(s: Spooler, tx: Transaction, chunks: list[bytes]) -> None:
    s.open(tx, RECEIVED, header_wanted=True)

    async def write_all() -> None:
        for chunk in chunks:
            await s.write(chunk)

    asyncio.run(write_all())


@pytest.mark.parametrize("cut", [1, 3, 7, 29, 30, 31, 32, 1000])
def test_the_header_section_whatever_the_reads(tmp_path: Path, cut: int) -> None:
    header = b"Subject: a\r\nX-Long: " + b"h" * 50 + b"\r\n folded\r\n"
    message = header + b"\r\n" + b"body line\r\n" * 30_000  # about 300 KB: spilled on the way
    s, tx = spooler(tmp_path)
    fill(s, tx, [message[i:i + cut] for i in range(0, 4000, cut)] + [message[4000:]])
    assert s.header_section() == header
    assert len(s._head) == len(RECEIVED) + len(header) + 2  # noqa: SLF001 - nothing of the body kept
    s.discard()


def test_no_header_fields_at_all(tmp_path: Path) -> None:
    s, tx = spooler(tmp_path)
    fill(s, tx, [b"\r", b"\nbody\r\n"])
    assert s.header_section() == b""
    s.discard()


def test_a_header_section_without_body_is_kept_whole(tmp_path: Path) -> None:
    s, tx = spooler(tmp_path)
    fill(s, tx, [b"Subject: only a header\r\n", b"To: x@y\r\n"])
    assert s.header_section() == b"Subject: only a header\r\nTo: x@y\r\n"
    s.discard()
