"""Maildir store: path mapping and escaping, durable creation, file names, delivery by link."""

from __future__ import annotations

import errno
import mailbox
import os
import re
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taube.store.maildir import (
    MaildirStore,
    create_directories,
    escape_local_part,
    maildir_filename,
)

MESSAGE = b"Return-Path: <a@b.test>\r\nSubject: hi\r\n\r\nbody\r\n"


def unescape(component: str) -> str:
    """The inverse of escape_local_part: shows the mapping loses nothing."""
    return re.sub(r"%([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), component)


@pytest.fixture
def store(tmp_path: Path) -> MaildirStore:
    return MaildirStore(tmp_path / "mail")


def test_plain_address_maps_to_the_obvious_path(store: MaildirStore) -> None:
    assert store.maildir_path("alice@example.test") == store.root / "example.test" / "alice"
    assert store.maildir_path("jörg@bücher.test") == store.root / "bücher.test" / "jörg"


@pytest.mark.parametrize(
    ("local", "component"),
    [
        ("a/b", "a%2Fb"),
        ("..", "%2E."),
        (".", "%2E"),
        (".hidden", "%2Ehidden"),
        ("a.b", "a.b"),
        ("100%", "100%25"),
        ("nul\x00byte", "nul%00byte"),
        ("tab\there", "tab%09here"),
        ('"quoted@local"', '"quoted@local"'),
    ],
)
def test_local_part_escaping(local: str, component: str) -> None:
    assert escape_local_part(local) == component


@given(st.text(min_size=1, max_size=64))
def test_escaped_local_part_is_one_safe_reversible_component(local: str) -> None:
    component = escape_local_part(local)
    assert "/" not in component and "\x00" not in component
    assert not component.startswith(".")
    assert unescape(component) == local


@pytest.mark.parametrize(
    "address",
    ["@example.test", "alice", "alice@", "alice@.", "alice@..", "alice@../etc", "a@b/c",
     "a@b\x00c", "x" * 300 + "@example.test", "a@" + "d" * 256],
)
def test_unusable_addresses_are_refused(store: MaildirStore, address: str) -> None:
    with pytest.raises(ValueError):
        store.maildir_path(address)


def test_ensure_creates_private_maildir_and_fsyncs_parents(store: MaildirStore, fsyncs: list[int]) -> None:
    maildir = store.maildir_path("alice@example.test")
    store.ensure(maildir)
    for sub in ("tmp", "new", "cur"):
        assert stat.S_IMODE((maildir / sub).stat().st_mode) == 0o700
    # alice/ (holds tmp, new, cur), example.test/, mail/, and the data dir that gained mail/
    assert len(fsyncs) == 4
    mailbox.Maildir(maildir, create=False)  # a valid, empty Maildir
    assert list(mailbox.Maildir(maildir, create=False)) == []


def test_ensure_is_cached_after_the_first_call(store: MaildirStore, fsyncs: list[int]) -> None:
    maildir = store.maildir_path("alice@example.test")
    store.ensure(maildir)
    fsyncs.clear()
    store.ensure(maildir)
    assert fsyncs == []


def test_ensure_fsyncs_an_existing_maildir_once_per_process(tmp_path: Path, fsyncs: list[int]) -> None:
    """A previous process may have died between mkdir and fsync: trust nothing found on disk."""
    MaildirStore(tmp_path / "mail").ensure(tmp_path / "mail" / "example.test" / "alice")
    fsyncs.clear()
    restarted = MaildirStore(tmp_path / "mail")
    restarted.ensure(restarted.maildir_path("alice@example.test"))
    assert len(fsyncs) == 3  # alice/, example.test/, mail/


def test_ensure_from_many_threads(store: MaildirStore) -> None:
    maildir = store.maildir_path("alice@example.test")
    threads = [threading.Thread(target=store.ensure, args=(maildir,)) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.name for p in maildir.iterdir()) == ["cur", "new", "tmp"]


def test_create_directories_reports_what_it_made(tmp_path: Path) -> None:
    assert create_directories(tmp_path / "a" / "b") == [tmp_path / "a", tmp_path / "a" / "b"]
    assert create_directories(tmp_path / "a" / "b") == []


def test_file_name_follows_the_maildir_spec() -> None:
    name = maildir_filename("Q1b2C3", "mx/1:a,b.example.test", 1234, when=1700000000.25)
    assert name == rf"1700000000.M250000P{os.getpid()}QQ1b2C3.mx\0571\072a\054b.example.test,S=1234"


def test_file_names_differ_per_queue_id() -> None:
    assert maildir_filename("A", "h", 1, when=1.0) != maildir_filename("B", "h", 1, when=1.0)


def test_deliver_links_the_same_inode_and_is_readable(store: MaildirStore, tmp_path: Path) -> None:
    source = tmp_path / "spooled"
    source.write_bytes(MESSAGE)
    maildir = store.maildir_path("alice@example.test")
    store.ensure(maildir)
    name = maildir_filename("ID1", "mx.test", len(MESSAGE))
    target = store.deliver(source, maildir, name)
    assert target == maildir / "new" / name
    assert target.stat().st_ino == source.stat().st_ino
    box = mailbox.Maildir(maildir, create=False)
    [key] = box.keys()
    assert box.get_bytes(key) == MESSAGE
    assert box[key]["Return-Path"] == "<a@b.test>"


def test_deliver_never_overwrites(store: MaildirStore, tmp_path: Path) -> None:
    source = tmp_path / "spooled"
    source.write_bytes(MESSAGE)
    maildir = store.maildir_path("alice@example.test")
    store.ensure(maildir)
    store.deliver(source, maildir, "same")
    with pytest.raises(FileExistsError):
        store.deliver(source, maildir, "same")


def test_deliver_copies_via_tmp_across_filesystems(
    store: MaildirStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsyncs: list[int]
) -> None:
    def no_cross_device_links(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    source = tmp_path / "spooled"
    source.write_bytes(MESSAGE)
    maildir = store.maildir_path("alice@example.test")
    store.ensure(maildir)
    fsyncs.clear()
    monkeypatch.setattr(os, "link", no_cross_device_links)
    target = store.deliver(source, maildir, "copied")
    assert target.read_bytes() == MESSAGE
    assert target.stat().st_ino != source.stat().st_ino
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert list((maildir / "tmp").iterdir()) == []
    assert len(fsyncs) == 1  # the copy's data; new/ is the caller's, as for a link


def test_deliver_propagates_other_link_errors(
    store: MaildirStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    maildir = store.maildir_path("alice@example.test")
    store.ensure(maildir)
    monkeypatch.setattr(os, "link", full)
    with pytest.raises(OSError) as info:
        store.deliver(tmp_path / "spooled", maildir, "x")
    assert info.value.errno == errno.ENOSPC
    assert list((maildir / "tmp").iterdir()) == [] and list((maildir / "new").iterdir()) == []


def test_directory_syncs_group_concurrent_callers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """20 threads at once: far fewer than 20 fsyncs, and each caller returns only after an fsync
    that started after it called (that is what makes its link durable)."""
    import threading
    import time as _time

    from taube.store import durable as md  # DirectorySyncs and fsync_directory live there

    started: list[float] = []
    finished: list[float] = []
    lock = threading.Lock()

    def slow_fsync(path: Path) -> None:
        with lock:
            started.append(_time.monotonic())
        _time.sleep(0.02)
        with lock:
            finished.append(_time.monotonic())

    monkeypatch.setattr(md, "fsync_directory", slow_fsync)
    syncs = md.DirectorySyncs()
    calls: list[tuple[float, float]] = []

    def caller() -> None:
        t0 = _time.monotonic()
        syncs.sync(tmp_path)
        calls.append((t0, _time.monotonic()))

    threads = [threading.Thread(target=caller) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(calls) == 20
    assert len(started) <= 4
    for t0, t1 in calls:
        assert any(t0 <= s and f <= t1 for s, f in zip(started, finished))


def test_directory_syncs_error_reaches_caller_and_next_caller_retries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from taube.store import durable as md  # DirectorySyncs and fsync_directory live there

    outcomes = iter([OSError(5, "Input/output error"), None])

    def flaky(path: Path) -> None:
        err = next(outcomes)
        if err:
            raise err

    monkeypatch.setattr(md, "fsync_directory", flaky)
    syncs = md.DirectorySyncs()
    with pytest.raises(OSError):
        syncs.sync(tmp_path)
    syncs.sync(tmp_path)  # a fresh fsync, which succeeds
