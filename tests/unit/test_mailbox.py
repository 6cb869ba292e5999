"""The Maildir as POP3 sees it: sizes in CRLF octets, stable UIDs, streamed reads, deletion."""

from __future__ import annotations

import mailbox
from pathlib import Path

from taube.store.mailbox import MaildirMailbox, _to_crlf


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
    box = MaildirMailbox(md)
    listing = box.load()
    assert [m.uid for m in listing] == ["1600000000.foreign", "1700000000.M1P2QABC.mx,S=42"]
    assert [m.size for m in listing] == [len(foreign) + foreign.count(b"\n"), len(ours)]
    assert b"".join(box.read(listing[0])) == foreign.replace(b"\n", b"\r\n")
    assert b"".join(box.read(listing[1])) == ours
    # retrieved from new/: now in cur/ and seen, same UID for the next session
    assert list((md / "new").iterdir()) == []
    assert sorted(m.uid for m in MaildirMailbox(md).load()) == sorted(m.uid for m in listing)
    assert "S" in mailbox.Maildir(md, create=False).get_message("1700000000.M1P2QABC.mx,S=42").get_flags()


def test_delete_removes_files_even_after_move(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "bob")
    (md / "new" / "1.M1P1QA.mx,S=5").write_bytes(b"a\r\n\r\n")
    (md / "new" / "2.M1P1QB.mx,S=5").write_bytes(b"b\r\n\r\n")
    box = MaildirMailbox(md)
    first, second = box.load()
    list(box.read(first))  # moved to cur/
    box.delete([first])
    assert [m.uid for m in MaildirMailbox(md).load()] == [second.uid]


def test_long_or_odd_names_get_a_hashed_uid(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "c")
    (md / "new" / ("x" * 80)).write_bytes(b"a\n")
    [m] = MaildirMailbox(md).load()
    assert len(m.uid) == 40 and m.size == 3


def test_crlf_conversion_across_chunks() -> None:
    assert _to_crlf(b"a\nb", b"") == b"a\r\nb"
    assert _to_crlf(b"\nc", b"\r") == b"\nc"  # completes a CRLF split over two chunks
    assert _to_crlf(b"\nc", b"x") == b"\r\nc"


def test_listing_is_in_delivery_order_with_unpadded_microseconds(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "d")
    for name in ("1700000000.M100000P1QB.mx,S=3", "1700000000.M99999P1QA.mx,S=3", "1699999999.x.mx"):
        (md / "new" / name).write_bytes(b"a\r\n")
    assert [m.uid.split(".")[1][:7] for m in MaildirMailbox(md).load()] == ["x", "M99999P", "M100000"]


def test_user_without_a_maildir_has_an_empty_mailbox(tmp_path: Path) -> None:
    assert MaildirMailbox(tmp_path / "never-delivered").load() == []


def test_quit_without_deletions_touches_nothing(tmp_path: Path) -> None:
    box = MaildirMailbox(tmp_path / "never-delivered")
    box.delete(box.load())
    assert not (tmp_path / "never-delivered").exists()


def test_delete_of_messages_already_gone_is_fine(tmp_path: Path) -> None:
    md = make_maildir(tmp_path / "e")
    (md / "new" / "1.M1P1QA.mx,S=5").write_bytes(b"a\r\n\r\n")
    box = MaildirMailbox(md)
    listing = box.load()
    (md / "new" / "1.M1P1QA.mx,S=5").unlink()  # another client was faster
    box.delete(listing)
    assert list((md / "tmp").iterdir()) == []
