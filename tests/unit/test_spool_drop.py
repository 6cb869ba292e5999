"""Header fields dropped at commit (forged Authentication-Results, RFC 8601 section 5): gone from
the Maildir file and the queue's data file, byte-exact, and from the size, in memory or
spilled, with or without prepended lines; bad ranges refused; every write point of the rewrite
failing in turn."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from taube.queue.envelope import Envelope, Target
from taube.queue.spool import SPILL_THRESHOLD, Spool, SpoolFile, StorageError
from taube.store import durable
from taube.store.maildir import MaildirStore
from tests.faults import FaultyCalls, faults  # noqa: F401 - the fixture
from tests.spool_faults import check_every_write_point, finish

HOST = "mx.example.test"
RETURN_PATH = b"Return-Path: <from@sender.test>\r\n"
RECEIVED = b"Received: from client (client.test [192.0.2.1])\r\n\tby mx.example.test; today\r\n"
FORGED = b"Authentication-Results: mx.example.test;\r\n\tdkim=pass header.d=bank.test\r\n"
FORGED_2 = b"Authentication-Results: MX.example.test; spf=pass\r\n"
SUBJECT = b"Subject: test\r\n"
FROM = b"From: <a@sender.test>\r\n"
AR = b"Authentication-Results: mx.example.test;\r\n\tspf=pass smtp.mailfrom=sender.test\r\n"
ALICE = Target(kind="local", address="alice@example.test", original="alice@example.test")
BOB = Target(kind="remote", address="bob@example.org", original="bob@example.org")


def spans(*parts: bytes, dropped: tuple[int, ...]) -> tuple[bytes, list[tuple[int, int]]]:
    """The message made of ``parts`` and the ``(start, end)`` ranges of the parts whose
    indexes are in ``dropped``, relative to the message start."""
    ranges, pos = [], 0
    for index, part in enumerate(parts):
        if index in dropped:
            ranges.append((pos, pos + len(part)))
        pos += len(part)
    return b"".join(parts), ranges


def open_file(spool: Spool, targets: tuple[Target, ...], message: bytes, *,
              spill: bool) -> SpoolFile:
    """What the session does: its Received first, then the message, spilled when asked."""
    spooled = spool.open(spool.new_queue_id(), "from@sender.test", targets)
    spooled.write(RECEIVED)
    for i in range(0, len(message), 8192):
        spooled.write(message[i:i + 8192])
        if spill and spooled.needs_spill:
            spooled.spill()
    if spill:
        spooled.spill()
    return spooled


def commit(spooled: SpoolFile, targets: tuple[Target, ...]) -> None:
    spooled.commit(Envelope(queue_id=spooled.queue_id, sender="from@sender.test", targets=targets,
                            client_address="192.0.2.1", helo="client.test",
                            received_at=1700000000.0, size=spooled.size, params={}))


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path, HOST, MaildirStore(tmp_path / "mail"))


def maildir_file(tmp_path: Path) -> Path:
    (path,) = (tmp_path / "mail").glob("*/*/new/*")
    return path


def assert_stored(spool: Spool, tmp_path: Path, queue_id: str, content: bytes) -> None:
    """``content`` (after Return-Path) byte-exact in the Maildir and the queue, sizes exact."""
    path = maildir_file(tmp_path)
    assert path.read_bytes() == RETURN_PATH + content
    assert f",S={len(RETURN_PATH + content)}" in path.name
    assert spool.queue.load(queue_id).size == len(content)
    with spool.queue.open_message(queue_id) as f:
        assert f.read() == content
    assert os.stat(path).st_ino == os.stat(spool.queue.message_path(queue_id)).st_ino
    assert list(path.parent.parent.joinpath("tmp").iterdir()) == []


CASES = {
    "first field": ((FORGED, SUBJECT, FROM, b"\r\n"), (0,)),
    "middle field": ((SUBJECT, FORGED, FROM, b"\r\n"), (1,)),
    "several": ((FORGED, SUBJECT, FORGED_2, FROM, FORGED, b"\r\n"), (0, 2, 4)),
    "adjacent": ((SUBJECT, FORGED, FORGED_2, FROM, b"\r\n"), (1, 2)),
    "last field": ((SUBJECT, FROM, FORGED_2, b"\r\n"), (2,)),
}


@pytest.mark.parametrize("prepend", [False, True])
@pytest.mark.parametrize("spill", [False, True])
@pytest.mark.parametrize("body_size", [10, SPILL_THRESHOLD + 17])
@pytest.mark.parametrize("case", sorted(CASES))
def test_dropped_fields_are_gone_byte_exact_and_from_the_size(
        spool: Spool, tmp_path: Path, case: str, body_size: int, spill: bool, prepend: bool) -> None:
    parts, dropped = CASES[case]
    body = b"y" * body_size + b"\r\n"
    message, ranges = spans(*parts, body, dropped=dropped)
    spooled = open_file(spool, (ALICE, BOB), message, spill=spill)
    if prepend:
        spooled.prepend(AR)
    spooled.drop(ranges, base=len(RECEIVED))
    kept = b"".join(p for i, p in enumerate(parts) if i not in dropped) + body
    expected = (AR if prepend else b"") + RECEIVED + kept
    assert spooled.size == len(expected)
    commit(spooled, (ALICE, BOB))
    assert_stored(spool, tmp_path, spooled.queue_id, expected)


def test_drop_can_be_called_again_for_other_ranges(spool: Spool, tmp_path: Path) -> None:
    message, ranges = spans(FORGED, SUBJECT, FORGED_2, b"\r\nbody\r\n", dropped=(0, 2))
    spooled = open_file(spool, (ALICE, BOB), message, spill=True)
    spooled.drop(ranges[1:], base=len(RECEIVED))
    spooled.drop(ranges[:1], base=len(RECEIVED))
    commit(spooled, (ALICE, BOB))
    assert_stored(spool, tmp_path, spooled.queue_id, RECEIVED + SUBJECT + b"\r\nbody\r\n")


def test_nothing_to_drop_changes_nothing(spool: Spool, tmp_path: Path) -> None:
    message = SUBJECT + b"\r\nbody\r\n"
    spooled = open_file(spool, (ALICE, BOB), message, spill=False)
    spooled.drop([], base=len(RECEIVED))
    commit(spooled, (ALICE, BOB))
    assert_stored(spool, tmp_path, spooled.queue_id, RECEIVED + message)


def test_a_small_message_with_drop_and_prepend_is_one_write(
        spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    message, ranges = spans(FORGED, SUBJECT, b"\r\nbody\r\n", dropped=(0,))
    spooled = open_file(spool, (ALICE,), message, spill=False)
    spooled.prepend(AR)
    spooled.drop(ranges, base=len(RECEIVED))
    writes: list[bytes] = []
    real_write = durable.write_all
    monkeypatch.setattr(durable, "write_all", lambda fd, data: (writes.append(bytes(data)), real_write(fd, data)))
    commit(spooled, (ALICE,))
    assert writes == [RETURN_PATH + AR + RECEIVED + SUBJECT + b"\r\nbody\r\n"]


def test_a_spilled_message_with_drop_and_prepend_is_copied_once(
        spool: Spool, tmp_path: Path, faults: FaultyCalls) -> None:
    body = b"z" * (2 * SPILL_THRESHOLD) + b"\r\n"
    message, ranges = spans(FORGED, SUBJECT, FORGED_2, b"\r\n", body, dropped=(0, 2))
    faults.arm()  # counts, fails nothing
    spooled = open_file(spool, (ALICE,), message, spill=True)
    spooled.prepend(AR)
    spooled.drop(ranges, base=len(RECEIVED))
    commit(spooled, (ALICE,))
    created = [path for operation, path in faults.points if operation == "create"]
    assert [Path(p).name for p in created] == [f"{spooled.queue_id}.spool", f"{spooled.queue_id}.spool.new"]
    assert maildir_file(tmp_path).read_bytes() == RETURN_PATH + AR + RECEIVED + SUBJECT + b"\r\n" + body


BAD = {
    "unsorted": [(40, 50), (0, 10)],
    "overlapping": [(0, 20), (10, 30)],
    "empty": [(5, 5)],
    "reversed": [(10, 5)],
    "before the message": [(-1, 10)],
    "past the end": [(0, 3), (5, 10_000)],  # the first alone would do: nothing is dropped
}


@pytest.mark.parametrize("spill", [False, True])
@pytest.mark.parametrize("bad", sorted(BAD))
def test_bad_ranges_are_refused_and_nothing_is_dropped(
        spool: Spool, tmp_path: Path, bad: str, spill: bool) -> None:
    message = SUBJECT + b"X-Long: " + b"v" * 60 + b"\r\n\r\nbody\r\n"
    spooled = open_file(spool, (ALICE, BOB), message, spill=spill)
    with pytest.raises(ValueError):
        spooled.drop(BAD[bad], base=len(RECEIVED))
    assert spooled.size == len(RECEIVED + message)
    commit(spooled, (ALICE, BOB))
    assert_stored(spool, tmp_path, spooled.queue_id, RECEIVED + message)


@pytest.mark.parametrize("base", [-1, len(RECEIVED + SUBJECT) + 1])
def test_a_message_start_outside_the_content_is_refused(spool: Spool, base: int) -> None:
    spooled = open_file(spool, (ALICE,), SUBJECT, spill=False)
    with pytest.raises(ValueError):
        spooled.drop([], base=base)
    spooled.abort()


def test_the_received_line_cannot_be_dropped_through_a_smaller_base(spool: Spool) -> None:
    spooled = open_file(spool, (ALICE,), SUBJECT + b"\r\n", spill=False)
    with pytest.raises(ValueError):  # starts before the message
        spooled.drop([(-len(RECEIVED), 0)], base=len(RECEIVED))
    spooled.drop([(0, len(SUBJECT))], base=len(RECEIVED))
    with pytest.raises(ValueError):  # overlaps what was dropped before
        spooled.drop([(len(SUBJECT) - 1, len(SUBJECT) + 1)], base=len(RECEIVED))
    assert spooled.size == len(RECEIVED) + 2
    spooled.abort()


def test_drop_after_commit_or_abort_is_refused(spool: Spool) -> None:
    spooled = open_file(spool, (ALICE,), SUBJECT, spill=False)
    spooled.abort()
    with pytest.raises(StorageError):
        spooled.drop([(0, 1)], base=len(RECEIVED))


EDITS = {  # prepend alone: test_spool_prepend.py
    "drop": (False, (0, 2)),
    "both": (True, (0, 2)),
}


@pytest.mark.parametrize("edits", sorted(EDITS))
@pytest.mark.parametrize("targets", [(ALICE,), (ALICE, BOB), (BOB,)], ids=["local", "mixed", "remote"])
def test_each_write_point_of_the_rewrite_failing_leaves_nothing(
        spool: Spool, tmp_path: Path, faults: FaultyCalls, targets: tuple[Target, ...], edits: str) -> None:
    prepend, dropped = EDITS[edits]
    body = (b"0123456789" * 7 + b"abcdef\r\n") * (SPILL_THRESHOLD // 39)
    parts = (FORGED, SUBJECT, FORGED_2, b"\r\n", body)
    message, ranges = spans(*parts, dropped=dropped)
    kept = b"".join(part for i, part in enumerate(parts) if i not in dropped)

    def steps(spooled: SpoolFile) -> None:
        if prepend:
            spooled.prepend(AR)
        spooled.drop(ranges, base=len(RECEIVED))
        commit(spooled, targets)

    def receive() -> str:
        return finish(open_file(spool, targets, message, spill=True), steps)

    receive()  # Maildirs and queue directories exist
    points = check_every_write_point(faults, tmp_path, receive,
                                     RETURN_PATH + (AR if prepend else b"") + RECEIVED + kept)
    assert any(operation == "create" and path.endswith(".new") for operation, path in points)  # the rewrite


def test_a_spool_file_cut_short_fails_the_rewrite_instead_of_looping(spool: Spool, tmp_path: Path) -> None:
    body = b"w" * (2 * SPILL_THRESHOLD) + b"\r\n"
    message, ranges = spans(FORGED, SUBJECT, b"\r\n", body, dropped=(0,))
    spooled = open_file(spool, (ALICE,), message, spill=True)
    spooled.drop(ranges, base=len(RECEIVED))
    (path,) = (tmp_path / "mail").glob("*/*/tmp/*.spool")
    os.truncate(path, SPILL_THRESHOLD)  # the file lost its end under us
    with pytest.raises(StorageError, match="shorter than written"):
        commit(spooled, (ALICE,))
    assert list((tmp_path / "mail").glob("*/*/*/*")) == []
