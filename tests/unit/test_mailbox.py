"""The Maildir as POP3 sees it: sizes in CRLF octets, stable UIDs, reads in chunks, deletion."""

from __future__ import annotations

import mailbox
import os
import threading
import time
from pathlib import Path

import pytest

from taube.store.listing import ListingCache
from taube.store.mailbox import MaildirMailbox, MailboxMessage, MessageFile, to_crlf


def retrieve(box: MaildirMailbox, message: MailboxMessage, chunk: int = 1 << 20) -> bytes:
    """What the POP3 session does for RETR: read to the end in chunks, then mark it seen."""
    content = box.open(message)
    parts = []
    try:
        while not content.at_end:
            parts.append(content.read(chunk))
    finally:
        content.close()
    box.seen(message)
    return b"".join(parts)


def make_maildir(root: Path) -> Path:
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True)
    return root


def test_listing_sizes_uids_and_read(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "alice")
    ours = b"Return-Path: <a@b>\r\nSubject: one\r\n\r\nbody\r\n"
    (md / "new" / "1700000000.M1P2QABC.mx,S=42").write_bytes(ours)
    foreign = b"Subject: two\n\nline\n.dot\n"
    (md / "cur" / "1600000000.foreign:2,S").write_bytes(foreign)
    box = MaildirMailbox(md, ListingCache())
    listing = box.load()
    assert [m.uid for m in listing] == ["1600000000.foreign", "1700000000.M1P2QABC.mx,S=42"]
    assert [m.size for m in listing] == [len(foreign) + foreign.count(b"\n"), len(ours)]
    assert retrieve(box, listing[0]) == foreign.replace(b"\n", b"\r\n")
    assert retrieve(box, listing[1]) == ours
    assert retrieve(box, listing[1]) == ours  # again in the same session, from cur/ now
    # retrieved from new/: now in cur/ and seen, same UID for the next session
    assert list((md / "new").iterdir()) == []
    assert sorted(m.uid for m in MaildirMailbox(md, ListingCache()).load()) == sorted(m.uid for m in listing)
    assert "S" in mailbox.Maildir(md, create=False).get_message("1700000000.M1P2QABC.mx,S=42").get_flags()


def test_delete_removes_files_even_after_move(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "bob")
    (md / "new" / "1.M1P1QA.mx,S=5").write_bytes(b"a\r\n\r\n")
    (md / "new" / "2.M1P1QB.mx,S=5").write_bytes(b"b\r\n\r\n")
    box = MaildirMailbox(md, ListingCache())
    first, second = box.load()
    retrieve(box, first)  # moved to cur/
    box.delete([first])
    assert [m.uid for m in MaildirMailbox(md, ListingCache()).load()] == [second.uid]


def test_long_or_odd_names_get_a_hashed_uid(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "c")
    (md / "new" / ("x" * 80)).write_bytes(b"a\n")
    [m] = MaildirMailbox(md, ListingCache()).load()
    assert len(m.uid) == 40 and m.size == 3


def test_crlf_conversion_across_chunks() -> None:
    assert to_crlf(b"a\nb", b"") == b"a\r\nb"
    assert to_crlf(b"\nc", b"\r") == b"\nc"  # completes a CRLF split over two chunks
    assert to_crlf(b"\nc", b"x") == b"\r\nc"


def test_listing_is_in_delivery_order_with_unpadded_microseconds(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "d")
    for name in ("1700000000.M100000P1QB.mx,S=3", "1700000000.M99999P1QA.mx,S=3", "1699999999.x.mx"):
        (md / "new" / name).write_bytes(b"a\r\n")
    assert [m.uid.split(".")[1][:7] for m in MaildirMailbox(md, ListingCache()).load()] == ["x", "M99999P", "M100000"]


def test_user_without_a_maildir_has_an_empty_mailbox(tmp_path: Path) -> None:
    assert MaildirMailbox(tmp_path / "never-delivered", ListingCache()).load() == []


def test_quit_without_deletions_touches_nothing(tmp_path: Path) -> None:
    box = MaildirMailbox(tmp_path / "never-delivered", ListingCache())
    box.delete(box.load())
    assert not (tmp_path / "never-delivered").exists()


def test_delete_of_messages_already_gone_is_fine(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "e")
    (md / "new" / "1.M1P1QA.mx,S=5").write_bytes(b"a\r\n\r\n")
    box = MaildirMailbox(md, ListingCache())
    listing = box.load()
    (md / "new" / "1.M1P1QA.mx,S=5").unlink()  # another client was faster
    box.delete(listing)
    assert list((md / "tmp").iterdir()) == []


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 4096])
@pytest.mark.parametrize("stored", [
    b"",
    b"a\r\nb\r\n",
    b"bare\nLF\n\nand CRLF\r\nmixed\r\r\n",
    b"ends in CR\r",
    b"\n\n\r\n\r",
    b"no line end at all",
])
def test_reads_give_crlf_whatever_the_chunk_size(tmp_path: Path, chunk: int, stored: bytes) -> None:
    """A bare LF gets its CR also when the CR before it ended the previous read, and the sizes
    of the listing are what the reads give."""
    md = make_maildir(tmp_path / "f")
    (md / "cur" / "1.other:2,S").write_bytes(stored)
    box = MaildirMailbox(md, ListingCache())
    [message] = box.load()
    got = retrieve(box, message, chunk)
    expected = stored.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert got == expected and message.size == len(expected)


def test_a_read_stops_at_the_end_and_says_so(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "g")
    (md / "new" / "1.M1P1QA.mx,S=6").write_bytes(b"abc\r\n\r\n"[:6])
    box = MaildirMailbox(md, ListingCache())
    [message] = box.load()
    content = box.open(message)
    assert content.read(message.size + 1) == b"abc\r\n\r"
    assert content.at_end
    assert content.read(10) == b""
    content.close()
    content.close()  # twice is harmless


def test_only_seen_moves_a_message_and_open_finds_it_after_another_client_moved_it(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "h")
    (md / "new" / "1.M1P1QA.mx,S=3").write_bytes(b"a\r\n")
    box = MaildirMailbox(md, ListingCache())
    [message] = box.load()
    box.open(message).close()  # TOP reads without seen(): it stays new
    assert [p.name for p in (md / "new").iterdir()] == ["1.M1P1QA.mx,S=3"]
    # another client (an IMAP server) moved it to cur/ with its flags
    (md / "new" / "1.M1P1QA.mx,S=3").rename(md / "cur" / "1.M1P1QA.mx,S=3:2,RS")
    assert retrieve(box, message) == b"a\r\n"
    assert [p.name for p in (md / "cur").iterdir()] == ["1.M1P1QA.mx,S=3:2,RS"]
    (md / "cur" / "1.M1P1QA.mx,S=3:2,RS").unlink()
    with pytest.raises(FileNotFoundError):
        box.open(message)


def test_close_during_a_read_waits_for_that_read(tmp_path: Path) -> None:
    """The session may close a message while a worker thread reads it: the descriptor is closed
    by the read when it returns, not under it (its number could be reused meanwhile). A FIFO
    stands in for a slow file: its read blocks until the test writes."""
    fifo = tmp_path / "slow"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)  # a writer exists, so opening for reading does not block
    content = MessageFile(str(fifo))
    fd = content._fd
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(content.read(10)))
    reader.start()
    deadline = time.monotonic() + 10
    while not content._reading:
        assert time.monotonic() < deadline, "the read did not start"
        time.sleep(0.001)
    content.close()
    os.fstat(fd)  # still open: the read is using it
    os.write(writer, b"abc")
    os.close(writer)  # the end of the "file"
    reader.join(10)
    assert got == [b"abc"] and content.at_end
    with pytest.raises(OSError):
        os.fstat(fd)  # closed by the read as it returned
    with pytest.raises(ValueError):
        content.read(1)
