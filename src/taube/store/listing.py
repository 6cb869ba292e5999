"""A Maildir's POP3 listing (RFC 1939 section 5: the messages numbered 1..n with their sizes,
section 7: their unique-ids), taken from the directory entries alone, and a cache of listings
that holds while the directories are unchanged.

Sizes and unique-ids come from the file names, so listing a maildrop reads two directories and
opens no message: taube names its files ``<sec>.M<usec>P<pid>Q<id>.<host>,S=<size>`` with the
exact size of a file that already has CRLF line ends (:func:`~taube.store.maildir.
maildir_filename`); Dovecot and other Maildir++ writers add ``W=<size with CRLF>``. Only a file
named without either is read once, to count the LFs that lack a CR (RETR sends CRLF).

UIDs are the Maildir base name, the part before ``:2,``: it does not change when a message
moves from ``new/`` to ``cur/`` or gets flags, so IMAP and POP3 clients agree. A base name
outside the UIDL alphabet or over 70 octets is replaced by its SHA-1.

The cache (:class:`ListingCache`) keeps a listing per Maildir and gives it again while both
directories have the inode and modification time they had before the listing was read: adding,
renaming or removing a file changes its directory's mtime. A timestamp only says "changed
within this tick", though, and ticks are coarse on some filesystems (a second or two; ext4's
are a few milliseconds of the kernel's coarse clock): a change in the same tick as the scan
would leave the mtime as it was. So a listing read less than :data:`SETTLE` seconds after the
last change of a directory is used for that session only and read again next time, as Dovecot
does for its maildir sync (``MAILDIR_SYNC_SECS``). Every process keeps its own cache and checks
it against the directories at each use, so worker processes need not share it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LISTINGS", "SETTLE", "ListingCache", "MailboxMessage", "scan"]

SETTLE = 2.0  # seconds: a directory changed more recently may change again unseen
# What the cache holds at most, counted in messages (one per maildrop too): about 250 octets
# each, so some 25 MB for the largest cache; the maildrops used longest ago go first.
MAX_CACHED = 100_000
READ_CHUNK = 256 * 1024

_UID_OK = re.compile(r"[\x21-\x7e]{1,70}")
_TIME_NAME = re.compile(r"(\d+)\.(?:M(\d+))?")
_W_SIZE = re.compile(r",W=(\d+)")
_OUR_NAME = re.compile(r"\d+\.M\d+P\d+Q[0-9A-Za-z]+\..*,S=(\d+)")  # maildir_filename()


@dataclass(frozen=True, slots=True)
class MailboxMessage:
    path: str  # where it was when listed (in new/ or cur/)
    uid: str
    size: int  # octets as sent by RETR (CRLF line ends)
    crlf: bool = False  # stored with CRLF line ends (named by taube, which writes only those)


def scan(maildir: str) -> list[MailboxMessage]:
    """The listing: ``cur/`` then ``new/``, each oldest first (names start with the delivery
    time). No Maildir yet means nothing was ever delivered: an empty listing."""
    found: list[MailboxMessage] = []
    for sub in ("cur", "new"):
        directory = os.path.join(maildir, sub)
        names: list[str] = []
        with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
            # d_type from the directory itself: no stat per file (a symlink is no message)
            names = [e.name for e in entries if e.name[:1] != "." and e.is_file(follow_symlinks=False)]
        names.sort(key=_delivery_order)
        for name in names:
            path = os.path.join(directory, name)
            found.append(_message(name, path))
    return found


def _delivery_order(name: str) -> tuple[int, int, str]:
    """Maildir names start with ``<seconds>.M<microseconds>``, unpadded: compare the numbers,
    not the text (``M99999`` comes before ``M100000``)."""
    m = _TIME_NAME.match(name)
    if not m:
        return (1 << 62, 0, name)
    return (int(m.group(1)), int(m.group(2) or 0), name)


def _uid(name: str) -> str:
    base = name.split(":", 1)[0]
    return base if _UID_OK.fullmatch(base) else hashlib.sha1(base.encode("utf-8", "surrogateescape")).hexdigest()


def _message(name: str, path: str) -> MailboxMessage:
    """The size is the octets RETR sends: the Maildir++ ``W=`` field, else taube's own ``S=``
    (its files are stored with CRLF, so reading them needs no conversion), else the file
    measured."""
    if m := _W_SIZE.search(name):
        return MailboxMessage(path, _uid(name), int(m.group(1)))
    if m := _OUR_NAME.match(name):
        return MailboxMessage(path, _uid(name), int(m.group(1)), crlf=True)
    return MailboxMessage(path, _uid(name), crlf_size(path))


def crlf_size(path: str) -> int:
    """The size with CRLF line ends: the file size plus one per LF not preceded by CR (the rule
    :func:`taube.store.mailbox.to_crlf` applies when the message is read)."""
    size = extra = 0
    previous = b""
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            size += len(chunk)
            extra += chunk.count(b"\n") - chunk.count(b"\r\n")
            if chunk[:1] == b"\n" and previous == b"\r":
                extra -= 1
            previous = chunk[-1:]
    return size + extra


_Stamp = tuple[int, int] | None  # a directory's (inode, mtime in ns); None: it does not exist


@dataclass(frozen=True, slots=True)
class _Cached:
    stamps: tuple[_Stamp, _Stamp]
    messages: tuple[MailboxMessage, ...]


class ListingCache:
    """Listings per Maildir, each given again while its ``cur/`` and ``new/`` are unchanged
    (see the module docstring); safe to use from many threads at once."""

    def __init__(self, max_messages: int = MAX_CACHED, settle: float = SETTLE,
                 clock: Callable[[], float] = time.time) -> None:
        self.max_messages = max_messages
        self.settle = settle
        self._clock = clock  # wall time, as the filesystem's timestamps
        self._entries: OrderedDict[str, _Cached] = OrderedDict()
        self._held = 0  # messages (plus one per maildrop) in _entries
        self._lock = threading.Lock()
        self.scans = 0  # how many listings were read from the directories, for tests and stats

    def listing(self, maildir: str) -> list[MailboxMessage]:
        """The listing of ``maildir`` now: from the cache when both directories are as they were,
        else read (:func:`scan`) and kept if it may be used again."""
        stamps = (_stamp(os.path.join(maildir, "cur")), _stamp(os.path.join(maildir, "new")))
        with self._lock:
            cached = self._entries.get(maildir)
            if cached is not None and cached.stamps == stamps:
                self._entries.move_to_end(maildir)
                return list(cached.messages)
        # Stamps taken before the scan: a change during it leaves them stale, so the next use
        # reads the directories again.
        began = self._clock()
        messages = scan(maildir)
        self.scans += 1
        settled = all(s is None or began - s[1] / 1e9 >= self.settle for s in stamps)
        with self._lock:
            self._forget(maildir)
            if settled and len(messages) < self.max_messages:
                self._entries[maildir] = _Cached(stamps, tuple(messages))
                self._held += 1 + len(messages)
                while self._held > self.max_messages:
                    self._forget(next(iter(self._entries)))
        return messages

    def _forget(self, maildir: str) -> None:
        cached = self._entries.pop(maildir, None)
        if cached is not None:
            self._held -= 1 + len(cached.messages)


def _stamp(directory: str) -> _Stamp:
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns)


# The listings of this process's POP3 sessions. Process memory on purpose: each entry is
# checked against the directories before it is used, so nothing needs to be shared.
LISTINGS = ListingCache()
