"""The POP3 listing from Maildir names, and its cache: used again only while both directories
are unchanged and settled, read again after any change, bounded in size."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from taube.store.listing import SETTLE, ListingCache, MailboxMessage, scan


class Clock:
    """Wall time for the cache, set by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def maildir(root: Path, name: str = "u") -> Path:
    md = root / name
    for sub in ("tmp", "new", "cur"):
        (md / sub).mkdir(parents=True)
    return md


def put(md: Path, sub: str, name: str, data: bytes = b"a\r\n") -> Path:
    path = md / sub / name
    path.write_bytes(data)
    return path


def age(md: Path, seconds_ago: float, now: float) -> None:
    """Make both directories look last changed ``seconds_ago`` before ``now``."""
    for sub in ("cur", "new"):
        stamp = int((now - seconds_ago) * 1e9)
        os.utime(md / sub, ns=(stamp, stamp))


def settled(root: Path, messages: int = 1, **options: int) -> tuple[Path, ListingCache]:
    """A Maildir with ``messages`` seen messages, last changed 10 s ago, and a fresh cache."""
    md = maildir(root)
    for i in range(messages):
        put(md, "cur", f"{i}.M1P1QA{i}.mx,S=3:2,S")
    clock = Clock(2_000_000_000.0)
    age(md, 10, clock.now)
    return md, ListingCache(clock=clock, **options)


def test_names_give_sizes_and_uids_without_reading_the_files(tmp_path: Path) -> None:
    md = maildir(tmp_path)
    put(md, "new", "1700000000.M5P9QABC.mx,S=99", b"not 99 octets, the name is believed")
    put(md, "cur", "1600000000.M1P2.host,S=10,W=12:2,S", b"a\nb\nc\n\n")
    put(md, "cur", "1500000000.other:2,", b"one\ntwo\r\n")
    listing = scan(str(md))
    assert [(m.uid, m.size, m.crlf) for m in listing] == [
        ("1500000000.other", 10, False),  # measured: one LF without CR
        ("1600000000.M1P2.host,S=10,W=12", 12, False),  # Maildir++ W= is the CRLF size
        ("1700000000.M5P9QABC.mx,S=99", 99, True),  # taube's own: stored with CRLF
    ]
    assert listing[2].path == str(md / "new" / "1700000000.M5P9QABC.mx,S=99")


def test_hidden_entries_and_directories_are_no_messages(tmp_path: Path) -> None:
    md = maildir(tmp_path)
    put(md, "new", ".hidden")
    (md / "cur" / "subdir").mkdir()
    (md / "cur" / "link").symlink_to(put(md, "tmp", "target"))
    assert scan(str(md)) == []


def test_a_settled_listing_is_used_again_until_a_directory_changes(tmp_path: Path) -> None:
    md = maildir(tmp_path)
    put(md, "new", "1.M1P1QA.mx,S=3")
    clock = Clock(2_000_000_000.0)
    age(md, SETTLE + 1, clock.now)
    cache = ListingCache(clock=clock)
    first = cache.listing(str(md))
    assert cache.listing(str(md)) == first and cache.scans == 1
    put(md, "new", "2.M1P1QB.mx,S=3")  # new mail: new/ changed
    age(md, SETTLE + 0.5, clock.now)  # ... and settled, with another mtime than before
    assert [m.uid for m in cache.listing(str(md))] == ["1.M1P1QA.mx,S=3", "2.M1P1QB.mx,S=3"]
    assert cache.scans == 2
    (md / "new" / "1.M1P1QA.mx,S=3").rename(md / "cur" / "1.M1P1QA.mx,S=3:2,S")
    age(md, SETTLE + 0.25, clock.now)
    assert [m.path for m in cache.listing(str(md))] == [
        str(md / "cur" / "1.M1P1QA.mx,S=3:2,S"), str(md / "new" / "2.M1P1QB.mx,S=3")]
    assert cache.scans == 3


def test_a_directory_changed_within_the_settle_time_is_read_every_time(tmp_path: Path) -> None:
    """A change in the same timestamp tick as the scan would not show in the mtime: a listing
    taken that soon after a change is not kept."""
    md = maildir(tmp_path)
    put(md, "new", "1.M1P1QA.mx,S=3")
    clock = Clock(2_000_000_000.0)
    age(md, SETTLE - 0.5, clock.now)
    cache = ListingCache(clock=clock)
    cache.listing(str(md))
    # Same mtime, but a message arrived in the same tick: it must be seen.
    stamp = (md / "new").stat().st_mtime_ns
    put(md, "new", "2.M1P1QB.mx,S=3")
    os.utime(md / "new", ns=(stamp, stamp))
    assert len(cache.listing(str(md))) == 2 and cache.scans == 2
    clock.now += 1  # now settled: kept from here on
    cache.listing(str(md))
    cache.listing(str(md))
    assert cache.scans == 3


def test_a_recreated_directory_is_read_again_even_with_the_same_mtime(tmp_path: Path) -> None:
    md, cache = settled(tmp_path)
    assert len(cache.listing(str(md))) == 1
    (md / "cur").rename(md / "old-cur")
    (md / "cur").mkdir()
    age(md, 10, 2_000_000_000.0)  # the same mtime as before: only the inode tells
    assert cache.listing(str(md)) == [] and cache.scans == 2


def test_a_missing_maildir_is_empty_and_appears_when_created(tmp_path: Path) -> None:
    clock = Clock(2_000_000_000.0)
    cache = ListingCache(clock=clock)
    assert cache.listing(str(tmp_path / "never")) == []
    md = maildir(tmp_path, "never")
    put(md, "new", "1.M1P1QA.mx,S=3")
    assert len(cache.listing(str(md))) == 1


def test_the_cache_keeps_the_maildrops_used_last_within_its_bound(tmp_path: Path) -> None:
    clock = Clock(2_000_000_000.0)
    cache = ListingCache(max_messages=9, clock=clock)
    boxes = []
    for name in ("a", "b", "c"):
        md = maildir(tmp_path, name)
        for i in range(3):
            put(md, "cur", f"{i}.M1P1Q{name}{i}.mx,S=3:2,S")
        age(md, 10, clock.now)
        boxes.append(str(md))
    cache.listing(boxes[0])
    cache.listing(boxes[1])  # 2 x (3 messages + 1) = 8 of 9
    cache.listing(boxes[0])  # a is now the most recent
    cache.listing(boxes[2])  # 12 > 9: b, used longest ago, goes
    assert cache.scans == 3
    cache.listing(boxes[0])
    cache.listing(boxes[2])
    assert cache.scans == 3
    cache.listing(boxes[1])
    assert cache.scans == 4


def test_a_listing_too_large_for_the_cache_is_not_kept(tmp_path: Path) -> None:
    md, cache = settled(tmp_path, 5, max_messages=4)
    cache.listing(str(md))
    cache.listing(str(md))
    assert cache.scans == 2


def test_callers_cannot_change_what_the_cache_holds(tmp_path: Path) -> None:
    md, cache = settled(tmp_path)
    cache.listing(str(md)).clear()
    assert len(cache.listing(str(md))) == 1
    with pytest.raises(AttributeError):
        cache.listing(str(md))[0].size = 5  # type: ignore[misc]
    assert isinstance(cache.listing(str(md))[0], MailboxMessage)
