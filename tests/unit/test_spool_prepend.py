"""Header lines prepended at commit (Authentication-Results, DKIM-Signature) land between
Return-Path and Received, byte-exact, counted in the size, in the Maildir and the queue; a
failure anywhere in the copy of a spilled file leaves nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from taube.queue.envelope import Envelope, Target
from taube.queue.spool import SPILL_THRESHOLD, Spool, SpoolFile
from taube.store import durable
from taube.store.maildir import MaildirStore
from tests.faults import FaultyCalls, faults  # noqa: F401 - the fixture
from tests.spool_faults import check_every_write_point, finish

HOST = "mx.example.test"
RECEIVED = b"Received: from client (client.test [192.0.2.1])\r\n\tby mx.example.test; today\r\n"
BODY = RECEIVED + b"Subject: test\r\n\r\nline one\r\n"
AR = b"Authentication-Results: mx.example.test;\r\n\tspf=pass smtp.mailfrom=sender.test\r\n"
ALICE = Target(kind="local", address="alice@example.test", original="alice@example.test")
BOB = Target(kind="remote", address="bob@example.org", original="bob@example.org")


def commit(spool: Spool, targets: tuple[Target, ...], body: bytes, prepend: bytes | None,
           spill: bool = False) -> str:
    queue_id = spool.new_queue_id()
    spooled = spool.open(queue_id, "from@sender.test", targets)
    spooled.write(body)
    if spill:
        spooled.spill()  # what the session does once needs_spill is true
    if prepend is not None:
        spooled.prepend(prepend)
    spooled.commit(Envelope(queue_id=queue_id, sender="from@sender.test", targets=targets,
                            client_address="192.0.2.1", helo="client.test",
                            received_at=1700000000.0, size=spooled.size, params={}))
    return queue_id


def maildir_file(tmp_path: Path) -> Path:
    (path,) = (tmp_path / "mail").glob("*/*/new/*")
    return path


@pytest.mark.parametrize("spill", [False, True])
@pytest.mark.parametrize("size", [0, SPILL_THRESHOLD + 17])
def test_prepended_header_lands_above_received(tmp_path: Path, spill: bool, size: int) -> None:
    spool = Spool(tmp_path, HOST, MaildirStore(tmp_path / "mail"))
    body = BODY + b"x" * size + b"\r\n"
    queue_id = commit(spool, (ALICE, BOB), body, AR, spill=spill)
    expected = b"Return-Path: <from@sender.test>\r\n" + AR + body
    path = maildir_file(tmp_path)
    assert path.read_bytes() == expected
    assert f",S={len(expected)}" in path.name  # the Maildir size stays exact
    entry = spool.queue.load(queue_id)
    assert entry.size == len(AR + body)
    with spool.queue.open_message(queue_id) as f:  # relayed without the Return-Path line
        assert f.read() == AR + body
    assert os.stat(path).st_ino == os.stat(spool.queue.message_path(queue_id)).st_ino  # one file
    assert [p.name for p in path.parent.parent.joinpath("tmp").iterdir()] == []  # nothing left


def test_without_prepend_the_layout_is_unchanged(tmp_path: Path) -> None:
    spool = Spool(tmp_path, HOST, MaildirStore(tmp_path / "mail"))
    commit(spool, (ALICE,), BODY, None)
    assert maildir_file(tmp_path).read_bytes() == b"Return-Path: <from@sender.test>\r\n" + BODY


def test_a_small_message_with_prepend_is_still_one_write_and_one_data_fsync(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path, HOST, MaildirStore(tmp_path / "mail"))
    spool.maildirs.ensure(spool.maildirs.maildir_path(ALICE.address))
    writes: list[int] = []
    fsyncs: list[int] = []
    real_write, real_fsync = durable.write_all, durable.calls.fsync
    monkeypatch.setattr(durable, "write_all", lambda fd, data: (writes.append(len(data)), real_write(fd, data)))
    monkeypatch.setattr(durable.calls, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd)))
    commit(spool, (ALICE,), BODY, None)
    baseline = len(fsyncs)
    writes.clear()
    fsyncs.clear()
    commit(spool, (ALICE,), BODY, AR)
    assert writes == [len(b"Return-Path: <from@sender.test>\r\n" + AR + BODY)]
    assert len(fsyncs) == baseline  # nothing more to sync than without


@pytest.mark.parametrize("bad", [b"X-No-End: 1", b"X-Bare: 1\n", b"X-A: 1\r\n\r\n", b"\r\n",
                                 b"X-Bare: 1\rX: 2\r\n"])
def test_prepend_takes_complete_header_lines_only(tmp_path: Path, bad: bytes) -> None:
    spool = Spool(tmp_path, HOST, MaildirStore(tmp_path / "mail"))
    spooled = spool.open(spool.new_queue_id(), "", (ALICE,))
    with pytest.raises(ValueError):
        spooled.prepend(bad)
    spooled.abort()


@pytest.mark.parametrize("targets", [(ALICE,), (ALICE, BOB), (BOB,)], ids=["local", "mixed", "remote"])
def test_each_write_point_of_the_rewrite_failing_leaves_nothing(
        tmp_path: Path, faults: FaultyCalls, targets: tuple[Target, ...]) -> None:
    spool = Spool(tmp_path, HOST, MaildirStore(tmp_path / "mail"))
    body = BODY + b"x" * (SPILL_THRESHOLD + 17) + b"\r\n"

    def steps(spooled: SpoolFile) -> None:
        spooled.prepend(AR)
        spooled.commit(Envelope(queue_id=spooled.queue_id, sender="from@sender.test",
                                targets=targets, client_address="192.0.2.1", helo="client.test",
                                received_at=1700000000.0, size=spooled.size, params={}))

    def receive() -> str:
        spooled = spool.open(spool.new_queue_id(), "from@sender.test", targets)
        spooled.write(body)
        spooled.spill()
        return finish(spooled, steps)

    receive()  # Maildirs and queue directories exist
    points = check_every_write_point(faults, tmp_path, receive,
                                     b"Return-Path: <from@sender.test>\r\n" + AR + body)
    assert any(operation == "create" and path.endswith(".new") for operation, path in points)
