"""Spool: commit makes a message durable everywhere or nowhere; abort, disk full, crashes, fsyncs."""

from __future__ import annotations

import errno
import mailbox
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taube.queue.envelope import Envelope, Target
from taube.queue.spool import SPILL_THRESHOLD, QueueStore, Spool, StorageError, StorageFullError
from taube.store.maildir import STALE_TMP_SECONDS, MaildirStore, remove_stale_tmp
from tests.faults import FaultyCalls, faults  # noqa: F401 - the fixture
from tests.spool_faults import check_every_write_point

HOST = "mx.example.test"
BODY = b"Received: from client\r\nSubject: test\r\n\r\nline one\r\n..dot stays as written\r\n"


def make_spool(data_dir: Path) -> Spool:
    return Spool(data_dir, HOST, MaildirStore(data_dir / "mail"))


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return make_spool(tmp_path)


def local(address: str, original: str | None = None) -> Target:
    return Target(kind="local", address=address, original=original or address)


def remote(address: str) -> Target:
    return Target(kind="remote", address=address, original=address)


ALICE = (Target(kind="local", address="alice@example.test", original="alice@example.test"),)


def receive(spool: Spool, *targets: Target, body: bytes = BODY, sender: str = "from@sender.test",
            chunk: int = 7) -> str:
    """What the SMTP layer does: open, write small chunks, commit. Returns the queue id."""
    queue_id = spool.new_queue_id()
    spooled = spool.open(queue_id, sender, targets)
    for i in range(0, len(body), chunk):
        spooled.write(body[i:i + chunk])
    spooled.commit(envelope(queue_id, targets, sender=sender, size=spooled.size))
    return queue_id


def envelope(queue_id: str, targets: tuple[Target, ...], sender: str = "from@sender.test",
             size: int = 0) -> Envelope:
    return Envelope(queue_id=queue_id, sender=sender, targets=targets, client_address="192.0.2.1",
                    helo="client.test", received_at=1700000000.0, size=size,
                    params={"BODY": "8BITMIME"})


def inbox(spool: Spool, address: str) -> mailbox.Maildir:
    return mailbox.Maildir(spool.maildirs.maildir_path(address), create=False)


def messages(spool: Spool, address: str) -> list[bytes]:
    path = spool.maildirs.maildir_path(address)
    if not path.exists():
        return []
    box = mailbox.Maildir(path, create=False)
    return [box.get_bytes(key) for key in box.keys()]


def nothing_visible(data_dir: Path) -> bool:
    """No message file in any Maildir (new/, cur/ or tmp/) or in the queue."""
    queue = data_dir / "queue"
    leftovers = [p for p in (data_dir / "mail").glob("*/*/*/*")]
    for sub in ("messages", "envelopes"):
        leftovers += list((queue / sub).iterdir())
    return leftovers == []


def stored(body: bytes = BODY, sender: str = "from@sender.test") -> bytes:
    return b"Return-Path: <" + sender.encode() + b">\r\n" + body


# -- queue ids ------------------------------------------------------------------------------------

def test_queue_ids_are_short_unique_alphanumeric_and_sorted(spool: Spool) -> None:
    ids = [spool.new_queue_id() for _ in range(2000)]
    assert all(re.fullmatch(r"[0-9A-Za-z]{13}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


def test_queue_ids_differ_between_processes(spool: Spool) -> None:
    code = "from taube.queue.store import QueueIds; print(QueueIds().next())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    mine = spool.new_queue_id()
    assert other.stdout.strip()[-4:] != mine[-4:]  # the pid part
    assert other.stdout.strip() < mine  # and the time part orders them


# -- successful commits ---------------------------------------------------------------------------

def test_one_local_recipient(spool: Spool) -> None:
    queue_id = receive(spool, local("alice@example.test"))
    box = inbox(spool, "alice@example.test")
    [key] = box.keys()
    assert box.get_bytes(key) == stored()
    assert box[key]["Return-Path"] == "<from@sender.test>"
    assert box[key]["Subject"] == "test"
    name = next((spool.maildirs.maildir_path("alice@example.test") / "new").iterdir()).name
    assert f"Q{queue_id}." in name and name.endswith(f",S={len(stored())}")
    assert QueueStore(spool.maildirs.root.parent).list() == []
    assert list(spool.maildirs.root.glob("*/*/tmp/*")) == []


def test_null_sender_gets_empty_return_path(spool: Spool) -> None:
    receive(spool, local("alice@example.test"), sender="")
    assert messages(spool, "alice@example.test") == [stored(sender="")]


def test_several_local_recipients_in_different_maildirs_share_one_inode(spool: Spool) -> None:
    users = ["alice@example.test", "bob@example.test", "carol@other.test"]
    receive(spool, *(local(u) for u in users))
    for user in users:
        assert messages(spool, user) == [stored()]
    inodes = {f.stat().st_ino for u in users for f in (spool.maildirs.maildir_path(u) / "new").iterdir()}
    assert len(inodes) == 1


def test_two_targets_in_the_same_maildir_get_one_copy(spool: Spool) -> None:
    receive(spool, local("alice@example.test", "alias1@example.test"),
            local("alice@example.test", "alias2@example.test"))
    assert messages(spool, "alice@example.test") == [stored()]


def test_remote_only_goes_to_the_queue(spool: Spool, tmp_path: Path) -> None:
    queue_id = receive(spool, remote("far@remote.test"), remote("other@remote.test"))
    assert not (tmp_path / "mail").exists()
    queue = QueueStore(tmp_path)
    entry = queue.load(queue_id)
    assert entry.sender == "from@sender.test"
    assert [(r.address, r.status, r.attempts) for r in entry.recipients] == [
        ("far@remote.test", "queued", 0), ("other@remote.test", "queued", 0)]
    assert entry.size == len(BODY) and entry.params == {"BODY": "8BITMIME"}
    with queue.open_message(queue_id) as message:
        assert message.read() == BODY
    assert list(spool.maildirs.root.glob("*/*/tmp/*")) == []


def test_mixed_local_and_remote(spool: Spool, tmp_path: Path) -> None:
    queue_id = receive(spool, local("alice@example.test"), remote("far@remote.test"))
    assert messages(spool, "alice@example.test") == [stored()]
    queue = QueueStore(tmp_path)
    assert [e.queue_id for e in queue.list()] == [queue_id]
    assert (tmp_path / "queue" / "messages" / queue_id).read_bytes() == stored()


def test_large_message_streams_intact(spool: Spool) -> None:
    body = b"Subject: big\r\n\r\n" + b"".join(b"%08d" % i + b"x" * 70 + b"\r\n" for i in range(20000))
    receive(spool, local("alice@example.test"), body=body, chunk=8192)
    assert messages(spool, "alice@example.test") == [stored(body)]


def test_many_messages_to_one_maildir(spool: Spool) -> None:
    for i in range(20):
        receive(spool, local("alice@example.test"), body=b"Subject: %d\r\n\r\n" % i)
    assert len(messages(spool, "alice@example.test")) == 20


def test_size_counts_octets_after_return_path(spool: Spool) -> None:
    spooled = spool.open(spool.new_queue_id(), "from@sender.test", ALICE)
    spooled.write(b"abc\r\n")
    spooled.write(b"de")
    assert spooled.size == 7
    spooled.abort()


# -- abort and failures ---------------------------------------------------------------------------

def test_abort_leaves_nothing_and_is_idempotent(spool: Spool, tmp_path: Path) -> None:
    spooled = spool.open(spool.new_queue_id(), "from@sender.test", ALICE)
    spooled.write(BODY)
    spooled.abort()
    spooled.abort()
    assert nothing_visible(tmp_path)
    with pytest.raises(StorageError):
        spooled.write(b"more")
    with pytest.raises(StorageError):
        spooled.commit(envelope(spooled.queue_id, (local("alice@example.test"),)))


def test_commit_twice_is_refused(spool: Spool) -> None:
    spooled = spool.open(spool.new_queue_id(), "", ALICE)
    spooled.commit(envelope(spooled.queue_id, (local("alice@example.test"),)))
    with pytest.raises(StorageError):
        spooled.commit(envelope(spooled.queue_id, (local("alice@example.test"),)))
    spooled.abort()  # harmless after commit
    assert len(messages(spool, "alice@example.test")) == 1


def test_open_refuses_bad_ids_and_senders(spool: Spool) -> None:
    with pytest.raises(ValueError):
        spool.open("../escape", "a@b.test", ALICE)
    with pytest.raises(ValueError):
        spool.open(spool.new_queue_id(), "a@b.test>\r\nX-Injected: yes", ALICE)


MIXED = (local("alice@example.test"), local("bob@other.test"), remote("far@remote.test"))
MIXED_FSYNCS = 1 + 3 + len(MIXED) - 1  # data, queue (3), one new/ per Maildir


@pytest.mark.parametrize("failing", range(MIXED_FSYNCS))
def test_any_failing_fsync_leaves_nothing_visible(
    spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: int
) -> None:
    receive(spool, local("alice@example.test"), local("bob@other.test"))  # maildirs exist
    receive(spool, local("alice@example.test"), local("bob@other.test"))
    box_before = {a: messages(spool, a) for a in ("alice@example.test", "bob@other.test")}
    calls = []

    def flaky(fd: int) -> None:
        calls.append(fd)
        if len(calls) - 1 == failing:
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", flaky)
    with pytest.raises(StorageError) as info:
        receive(spool, *MIXED)
    assert not isinstance(info.value, StorageFullError)
    assert {a: messages(spool, a) for a in box_before} == box_before
    assert QueueStore(tmp_path).list() == []
    assert list((tmp_path / "queue" / "messages").iterdir()) == []
    assert list((tmp_path / "queue" / "envelopes").iterdir()) == []
    assert list((tmp_path / "mail").glob("*/*/tmp/*")) == []


@pytest.mark.parametrize("step", ["link", "rename"])
def test_failure_after_a_copy_is_visible_takes_it_back(
    spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """Bob's link, or the queue envelope's rename, fails; with "rename", alice's copy was
    already visible and is taken back."""
    real = getattr(os, step)
    calls = []

    def second_fails(src: object, dst: object) -> None:
        calls.append(dst)
        if "bob" in str(dst) or str(dst).endswith(".json"):  # bob's link, or the queue's marker
            raise OSError(errno.ENOSPC, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, step, second_fails)
    with pytest.raises(StorageFullError):
        receive(spool, *MIXED)
    assert nothing_visible(tmp_path)


def test_unexpected_exception_is_not_disguised(
    spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(spool.maildirs, "deliver", broken)
    with pytest.raises(RuntimeError):
        receive(spool, local("alice@example.test"), remote("far@remote.test"), local("bob@other.test"))
    assert nothing_visible(tmp_path)


def test_unusable_local_address_fails_cleanly(spool: Spool, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        receive(spool, remote("far@remote.test"), local("..@."))
    assert nothing_visible(tmp_path)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_write_error_is_reported_by_commit_as_storage_full(
    spool: Spool, tmp_path: Path, code: int
) -> None:
    spooled = spool.open(spool.new_queue_id(), "a@b.test", ALICE)
    spooled.write(b"x" * SPILL_THRESHOLD)
    assert spooled.needs_spill

    def full(*args: object) -> int:
        raise OSError(code, os.strerror(code))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "open", full)
        spooled.spill()  # the error is kept, not raised in the middle of DATA
    spooled.write(b"y" * 5)
    assert not spooled.needs_spill
    assert spooled.size == SPILL_THRESHOLD + 5
    assert list(spool.maildirs.root.glob("*/*/tmp/*")) == []  # space given back at once
    with pytest.raises(StorageFullError):
        spooled.commit(envelope(spooled.queue_id, (local("alice@example.test"),)))
    assert nothing_visible(tmp_path)


# -- a real full disk ----------------------------------------------------------------------------

@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 256 KiB tmpfs (needs root and mount permission, else the test is skipped)."""
    with tempfile.TemporaryDirectory(prefix="taube-full-") as d:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", d],
                                capture_output=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs: {result.stderr.decode().strip()}")
        try:
            yield Path(d)
        finally:
            subprocess.run(["umount", d], check=True)


def test_disk_full_raises_storage_full_and_leaves_nothing(small_disk: Path) -> None:
    spool = make_spool(small_disk)
    receive(spool, local("alice@example.test"), remote("far@remote.test"))  # dirs exist
    before = messages(spool, "alice@example.test")
    with pytest.raises(StorageFullError):
        receive(spool, local("alice@example.test"), remote("far@remote.test"),
                body=b"Subject: big\r\n\r\n" + b"x" * 400_000, chunk=4096)
    assert messages(spool, "alice@example.test") == before
    assert len(QueueStore(small_disk).list()) == 1
    assert list(spool.maildirs.root.glob("*/*/tmp/*")) == []
    # the space came back: the next message fits
    receive(spool, local("alice@example.test"), remote("far@remote.test"))
    assert len(messages(spool, "alice@example.test")) == 2


# -- crashes at the process level -----------------------------------------------------------------

CHILD = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from taube.queue.envelope import Envelope, Target
    from taube.queue.spool import Spool
    from taube.store.maildir import MaildirStore

    data, mode = Path(sys.argv[1]), sys.argv[2]
    spool = Spool(data, "mx.example.test", MaildirStore(data / "mail"))
    queue_id = spool.new_queue_id()
    targets = (Target(kind="local", address="alice@example.test", original="alice@example.test"),
               Target(kind="remote", address="far@remote.test", original="far@remote.test"))
    spooled = spool.open(queue_id, "from@sender.test", targets)
    for _ in range(200):
        spooled.write(b"x" * 998 + b"\\r\\n")  # 200 KB: most of it already in the file
        if spooled.needs_spill:
            spooled.spill()
    if mode == "mid-data":
        os.kill(os.getpid(), 9)
    if mode == "mid-commit":
        os.rename = lambda src, dst: os.kill(os.getpid(), 9)  # before the queue's marker
    spooled.commit(Envelope(queue_id=queue_id, sender="from@sender.test", targets=targets,
                            client_address="192.0.2.1", helo="c", received_at=0.0,
                            size=spooled.size))
    print(queue_id, flush=True)
    os.kill(os.getpid(), 9)
""")


def run_child(data_dir: Path, mode: str) -> str:
    child = subprocess.run([sys.executable, "-c", CHILD, str(data_dir), mode],
                           capture_output=True, text=True, timeout=30)
    assert child.returncode == -signal.SIGKILL, child.stderr
    return child.stdout.strip()


def test_sigkill_right_after_commit_loses_nothing(tmp_path: Path) -> None:
    queue_id = run_child(tmp_path, "after-commit")
    spool = make_spool(tmp_path)
    spool.recover()
    [message] = messages(spool, "alice@example.test")
    assert message.startswith(b"Return-Path: <from@sender.test>\r\nxxx") and len(message) == 200_033
    queue = QueueStore(tmp_path)
    assert [r.address for r in queue.load(queue_id).recipients] == ["far@remote.test"]
    with queue.open_message(queue_id) as data:
        assert data.read() == (b"x" * 998 + b"\r\n") * 200


def test_sigkill_mid_data_leaves_nothing_visible(tmp_path: Path) -> None:
    run_child(tmp_path, "mid-data")
    make_spool(tmp_path).recover()
    assert messages(make_spool(tmp_path), "alice@example.test") == []
    [half] = (tmp_path / "mail").glob("*/*/tmp/*")  # invisible to readers, and cleaned later
    maildir = half.parent.parent
    assert remove_stale_tmp(maildir) == 0  # might be a delivery in progress
    assert remove_stale_tmp(maildir, now=time.time() + STALE_TMP_SECONDS + 1) == 1
    assert nothing_visible(tmp_path)


def test_sigkill_mid_commit_leaves_no_queue_entry(tmp_path: Path) -> None:
    """Killed after the queue's data link, before its envelope: recover drops the orphan. The
    local copy, complete, may already be there (no 250 was sent: the client retries)."""
    run_child(tmp_path, "mid-commit")
    make_spool(tmp_path).recover()
    assert QueueStore(tmp_path).list() == []
    for sub in ("messages", "envelopes"):
        assert list((tmp_path / "queue" / sub).iterdir()) == []
    for message in messages(make_spool(tmp_path), "alice@example.test"):
        assert len(message) == 200_033  # never a half message


def test_spilled_file_waits_in_tmp_until_commit(spool: Spool, tmp_path: Path) -> None:
    spooled = spool.open(spool.new_queue_id(), "a@b.test", ALICE)
    spooled.write(b"x" * SPILL_THRESHOLD)
    spooled.spill()
    assert len(list((tmp_path / "mail").glob("*/alice/tmp/*"))) == 1
    assert messages(spool, "alice@example.test") == []
    spooled.abort()
    assert nothing_visible(tmp_path)


def test_remote_only_is_written_in_place_and_orphan_dropped_by_recover(spool: Spool, tmp_path: Path) -> None:
    spooled = spool.open(spool.new_queue_id(), "a@b.test", (remote("far@remote.test"),))
    spooled.write(b"x" * SPILL_THRESHOLD)
    spooled.spill()
    assert len(list((tmp_path / "queue" / "messages").iterdir())) == 1
    spool.recover()  # as after a crash: data without envelope was never acknowledged
    assert nothing_visible(tmp_path)
    spooled.abort()


# -- fsync discipline -----------------------------------------------------------------------------

def test_fsyncs_local_one_maildir_is_two(spool: Spool, fsyncs: list[int]) -> None:
    """Steady state: the data file + alice's new/. (Nothing else: tmp/ is never synced.)"""
    receive(spool, local("alice@example.test"))  # first delivery: Maildir created and synced
    fsyncs.clear()
    receive(spool, local("alice@example.test"))
    assert len(fsyncs) == 2


def test_fsyncs_local_k_maildirs_is_one_plus_k(spool: Spool, fsyncs: list[int]) -> None:
    users = [local(f"user{i}@example.test") for i in range(5)]
    receive(spool, *users)
    fsyncs.clear()
    receive(spool, *users)
    assert len(fsyncs) == 1 + 5


def test_fsyncs_remote_only_is_four(spool: Spool, fsyncs: list[int]) -> None:
    """Data, messages/, the envelope file, envelopes/."""
    receive(spool, remote("far@remote.test"))
    assert len(fsyncs) == 4


def test_fsyncs_mixed_is_four_plus_k(spool: Spool, fsyncs: list[int]) -> None:
    receive(spool, *MIXED)
    fsyncs.clear()
    receive(spool, *MIXED)
    assert len(fsyncs) == MIXED_FSYNCS == 4 + 2


# -- every write point failing in turn (the durable seam, see tests/faults.py) -------------------

SCENARIOS = {
    "local": (local("alice@example.test"),),
    "mixed": MIXED,
    "remote": (remote("far@remote.test"),),
}


def receive_spilling(spool: Spool, targets: tuple[Target, ...], body: bytes) -> str:
    """As the SMTP session does it: chunks of 8 KiB, spilled whenever the buffer is full."""
    queue_id = spool.new_queue_id()
    spooled = spool.open(queue_id, "from@sender.test", targets)
    try:
        for i in range(0, len(body), 8192):
            spooled.write(body[i:i + 8192])
            if spooled.needs_spill:
                spooled.spill()
        spooled.commit(envelope(queue_id, targets, size=spooled.size))
    except BaseException:
        spooled.abort()
        raise
    return queue_id


@pytest.mark.parametrize("size", [1000, 2 * SPILL_THRESHOLD + 7])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_each_write_point_failing_leaves_nothing_and_short_writes_lose_nothing(
        spool: Spool, tmp_path: Path, faults: FaultyCalls, scenario: str, size: int) -> None:
    targets = SCENARIOS[scenario]
    receive_spilling(spool, targets, BODY)  # Maildirs and queue directories exist
    body = b"Subject: big\r\n\r\n" + (b"0123456789" * 7 + b"abcdef\r\n") * (size // 78 + 1)
    points = check_every_write_point(faults, tmp_path, lambda: receive_spilling(spool, targets, body),
                                     stored(body))
    assert len(points) >= 5
