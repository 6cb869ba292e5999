"""Reading back what was written to a spool file (SpoolFile.open_content): for DKIM verification
and signing, from the message start after taube's Received, in memory or from the spilled file."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from taube.queue.envelope import Envelope, Target
from taube.queue.spool import SPILL_THRESHOLD, Spool, SpoolFile, StorageError, StorageFullError
from taube.signing.dkim import Signer
from taube.signing.keys import KeyStore
from taube.store.maildir import MaildirStore
from tests.faults import FaultyCalls, faults  # noqa: F401 - the fixture
from tests.unit.test_dkim_sign import verify_each

HOST = "mx.example.test"
RETURN_PATH = b"Return-Path: <alice@example.org>\r\n"
RECEIVED = b"Received: from client (client.test [192.0.2.1])\r\n\tby mx.example.test; today\r\n"
FORGED = b"Authentication-Results: mx.example.test; dkim=pass header.d=bank.test\r\n"
HEADER = (b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: greetings\r\n"
          b"Date: Mon, 13 Nov 2023 22:13:20 +0000\r\nMessage-ID: <1@example.org>\r\n\r\n")
AR = b"Authentication-Results: mx.example.test; spf=pass smtp.mailfrom=example.org\r\n"
ALICE = Target(kind="local", address="alice@example.test", original="alice@example.test")
BOB = Target(kind="remote", address="bob@example.net", original="bob@example.net")
SIZES = {"in memory": 100, "spilled": 3 * SPILL_THRESHOLD + 5}


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path, HOST, MaildirStore(tmp_path / "mail"))


def message(size: int) -> bytes:
    return HEADER + (b"line of the body " * 4 + b"\r\n") * (size // 70 + 1)


def receive(spool: Spool, data: bytes, *, targets: tuple[Target, ...] = (ALICE, BOB)) -> SpoolFile:
    """As the session writes: its Received, then the message in 8 KiB chunks, spilled whenever
    the buffer is full (what is left after the last spill stays in memory)."""
    spooled = spool.open(spool.new_queue_id(), "alice@example.org", targets)
    spooled.write(RECEIVED)
    for i in range(0, len(data), 8192):
        spooled.write(data[i:i + 8192])
        if spooled.needs_spill:
            spooled.spill()
    return spooled


def commit(spooled: SpoolFile, targets: tuple[Target, ...] = (ALICE, BOB)) -> None:
    spooled.commit(Envelope(queue_id=spooled.queue_id, sender="alice@example.org", targets=targets,
                            client_address="192.0.2.1", helo="client.test",
                            received_at=1700000000.0, size=spooled.size, params={}))


def maildir_file(tmp_path: Path) -> Path:
    (path,) = (tmp_path / "mail").glob("*/*/new/*")
    return path


@pytest.mark.parametrize("where", sorted(SIZES))
def test_the_message_is_read_back_from_its_start(spool: Spool, tmp_path: Path, where: str) -> None:
    data = message(SIZES[where])
    spooled = receive(spool, data)
    with spooled.open_content(len(RECEIVED)) as content:
        assert isinstance(content, io.BytesIO) == (where == "in memory")
        first = content.readline()  # as the signer reads the header section
        assert first == b"From: Alice <alice@example.org>\r\n"
        assert first + content.read() == data
    with spooled.open_content() as content:
        assert content.read() == RECEIVED + data
    with spooled.open_content(spooled.size) as content:
        assert content.read() == b""
    commit(spooled)
    assert maildir_file(tmp_path).read_bytes() == RETURN_PATH + RECEIVED + data


def test_the_spilled_file_is_opened_read_only(spool: Spool) -> None:
    spooled = receive(spool, message(SIZES["spilled"]))
    with spooled.open_content() as content, pytest.raises(io.UnsupportedOperation):
        content.write(b"x")
    spooled.abort()


@pytest.mark.parametrize("where", sorted(SIZES))
def test_writes_go_on_after_a_read_and_are_not_in_it(spool: Spool, tmp_path: Path, where: str) -> None:
    data = message(SIZES[where])
    spooled = receive(spool, data)
    content = spooled.open_content(len(RECEIVED))
    spooled.write(b"more\r\n")  # the memory buffer stays resizable; the file grows
    if where == "in memory":
        assert content.read() == data
    else:  # the file itself: what is spilled later is visible, what is buffered is not
        assert content.read().startswith(data)
    content.close()
    with spooled.open_content(len(RECEIVED)) as again:
        assert again.read() == data + b"more\r\n"
    commit(spooled)
    assert maildir_file(tmp_path).read_bytes() == RETURN_PATH + RECEIVED + data + b"more\r\n"


@pytest.mark.parametrize("where", sorted(SIZES))
def test_prepended_and_dropped_octets_apply_at_commit_not_to_the_content(
        spool: Spool, tmp_path: Path, where: str) -> None:
    data = FORGED + message(SIZES[where])
    spooled = receive(spool, data)
    spooled.prepend(AR)
    spooled.drop([(0, len(FORGED))], base=len(RECEIVED))
    with spooled.open_content() as content:
        assert content.read() == RECEIVED + data
    commit(spooled)
    assert maildir_file(tmp_path).read_bytes() == RETURN_PATH + AR + RECEIVED + data[len(FORGED):]


@pytest.mark.parametrize("start", [-1, len(RECEIVED + HEADER) + 1])
def test_an_offset_outside_the_content_is_refused(spool: Spool, start: int) -> None:
    spooled = spool.open(spool.new_queue_id(), "alice@example.org", (ALICE,))
    spooled.write(RECEIVED + HEADER)
    with pytest.raises(ValueError):
        spooled.open_content(start)
    spooled.abort()


def test_no_content_after_commit_or_abort(spool: Spool) -> None:
    committed, aborted = receive(spool, HEADER), receive(spool, HEADER)
    commit(committed)
    aborted.abort()
    for spooled in (committed, aborted):
        with pytest.raises(StorageError):
            spooled.open_content()


def test_a_failed_spill_is_reported_by_the_read_and_by_commit(
        spool: Spool, tmp_path: Path, faults: FaultyCalls) -> None:
    spool.maildirs.ensure(spool.maildirs.maildir_path(ALICE.address))
    faults.arm(0, "enospc")  # the spool file cannot be created: the disk is full
    spooled = receive(spool, message(SIZES["spilled"]), targets=(ALICE,))
    faults.disarm()
    with pytest.raises(StorageFullError):
        spooled.open_content(len(RECEIVED))
    with pytest.raises(StorageFullError):
        commit(spooled, (ALICE,))
    assert list((tmp_path / "mail").glob("*/*/*/*")) == []


@pytest.mark.parametrize("where", sorted(SIZES))
def test_the_signer_reads_the_message_and_its_signature_holds_in_the_stored_copy(
        spool: Spool, tmp_path: Path, where: str) -> None:
    """What the session does for mail it sends: sign the message as read back from the spool,
    prepend the signature, drop a forged Authentication-Results (not a signed field)."""
    keys = KeyStore(tmp_path / "keys")
    keys.generate("example.org", "s1", kind="ed25519")
    data = FORGED + message(SIZES[where])
    spooled = receive(spool, data)
    with spooled.open_content(len(RECEIVED)) as content:
        result = Signer(keys, clock=lambda: 1_700_000_000).sign(content, sender="alice@example.org")
    assert result.errors == () and len(result.signatures) == 1
    spooled.prepend(result.header)
    spooled.drop([(0, len(FORGED))], base=len(RECEIVED))
    commit(spooled)
    stored = maildir_file(tmp_path).read_bytes()
    assert stored == RETURN_PATH + result.header + RECEIVED + data[len(FORGED):]
    assert verify_each(stored[len(RETURN_PATH):], keys) == [True]
