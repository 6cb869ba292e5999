"""A Maildir opened for POP3: a snapshot listing, streamed retrieval, deletion at UPDATE.

POP3 numbers messages 1..n for the whole session (RFC 1939 section 5), so the listing is a
snapshot taken at login; mail arriving later waits for the next session. Sizes are the octets
RETR sends: files taube delivered already have CRLF line ends, so their size is the file size;
a file with bare LF line ends (delivered by another program) is measured once, counting each LF
that lacks a CR.

UIDs (RFC 1939 7, UIDL) are the Maildir base name, the part before ``:2,``: it never changes when
a message moves from ``new/`` to ``cur/`` or gets flags, so IMAP and POP3 clients agree. A base
name outside the UIDL alphabet or over 70 octets is replaced by its SHA-1.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from . import durable
from .durable import fsync_directory

log = logging.getLogger("taube.pop3")

__all__ = ["Mailbox", "MailboxFactory", "MaildirMailbox", "MailboxMessage"]

_UID_OK = re.compile(r"[\x21-\x7e]{1,70}")
READ_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class MailboxMessage:
    path: Path  # where it was when listed (new/ or cur/)
    uid: str
    size: int  # octets as sent by RETR (CRLF line ends)


_TIME_NAME = re.compile(r"(\d+)\.(?:M(\d+))?")


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


def _crlf_size(path: Path, size: int) -> int:
    """The size with CRLF line ends: the file size plus one per LF not preceded by CR."""
    extra = 0
    previous = b""
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            extra += chunk.count(b"\n") - chunk.count(b"\r\n")
            if chunk[:1] == b"\n" and previous == b"\r":
                extra -= 1
            previous = chunk[-1:]
    return size + extra


class Mailbox(Protocol):
    """One user's maildrop as one POP3 session sees it (:class:`MaildirMailbox` is the backend)."""

    messages: list[MailboxMessage]  # the snapshot :meth:`load` took

    def load(self) -> list[MailboxMessage]: ...

    def read(self, message: MailboxMessage) -> Generator[bytes, None, None]: ...

    def delete(self, messages: list[MailboxMessage]) -> None: ...


# a user's normalised address -> that user's mailbox, not yet loaded (built by ``app.py``)
MailboxFactory = Callable[[str], Mailbox]


class MaildirMailbox:
    """One user's Maildir as seen by one POP3 session."""

    def __init__(self, maildir: Path) -> None:
        self.maildir = maildir
        self.messages: list[MailboxMessage] = []

    def load(self) -> list[MailboxMessage]:
        """Take the snapshot: ``cur/`` then ``new/``, each oldest first (names start with the
        delivery time)."""
        found: list[MailboxMessage] = []
        for sub in ("cur", "new"):
            directory = self.maildir / sub
            files: list[os.DirEntry[str]] = []  # no Maildir yet: nothing was ever delivered
            with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
                files = [e for e in entries if e.name[:1] != "." and e.is_file(follow_symlinks=False)]
            for entry in sorted(files, key=lambda e: _delivery_order(e.name)):
                found.append(MailboxMessage(directory / entry.name, _uid(entry.name), _pop3_size(entry)))
        self.messages = found
        return found

    def read(self, message: MailboxMessage) -> Generator[bytes, None, None]:
        """The message in chunks with CRLF line ends (the POP3 engine dot-stuffs them).

        A message retrieved from ``new/`` is moved to ``cur/`` marked seen (``:2,S``), so an IMAP
        server sharing the Maildir sees it as read."""
        path = self._current_path(message)
        with open(path, "rb") as f:
            previous = b""
            while chunk := f.read(READ_CHUNK):
                yield _to_crlf(chunk, previous)
                previous = chunk[-1:]
        self._mark_seen(path)

    def _current_path(self, message: MailboxMessage) -> Path:
        if message.path.exists():
            return message.path
        base = message.path.name.split(":", 1)[0]
        for candidate in (self.maildir / "cur").glob(f"{_glob_escape(base)}*"):
            return candidate
        raise FileNotFoundError(message.path)

    def _mark_seen(self, path: Path) -> None:
        if path.parent.name != "new":
            return
        target = self.maildir / "cur" / f"{path.name}:2,S"
        with contextlib.suppress(FileNotFoundError):
            os.rename(path, target)

    def delete(self, messages: list[MailboxMessage]) -> None:
        """RFC 1939 6 (UPDATE): remove the messages marked deleted, all of them or none.

        The client is told ``+OK`` only when every deletion is committed, ``-ERR`` with the
        maildrop as it was otherwise. So the files are first moved out of sight, into the
        Maildir's own ``tmp/`` (readers never look there; same filesystem, so a rename), and
        the directories fsync'd: that is the commit point. Any failure before it moves every
        file back and raises OSError. Only then are the files unlinked; an unlink that fails
        leaves an invisible file in ``tmp/``, which the stale-file cleanup removes later
        (see :func:`~taube.store.maildir.remove_stale_tmp`).
        """
        moved = self._hide(messages)
        if not moved:
            return
        for _, hidden in moved:
            try:
                durable.unlink(hidden)
            except OSError as e:
                log.warning("deleted message %s stays in tmp/ until the stale-file cleanup: %s",
                            hidden, e)

    def _hide(self, messages: list[MailboxMessage]) -> list[tuple[Path, Path]]:
        """Move each message into ``tmp/`` and make the moves durable; on failure undo them."""
        if not messages:
            return []
        tmp = self.maildir / "tmp"
        tmp.mkdir(mode=0o700, exist_ok=True)  # a Maildir made by another program may lack it
        moved: list[tuple[Path, Path]] = []
        # A short name of its own (a Maildir name plus a suffix could pass NAME_MAX).
        stamp = f"{os.getpid()}.{time.time_ns()}"
        try:
            for number, message in enumerate(messages):
                try:
                    path = self._current_path(message)
                except FileNotFoundError:
                    continue  # already gone (another client, or the user's mail program)
                hidden = tmp / f"deleted.{stamp}.{number}"
                try:
                    durable.rename(path, hidden)
                except FileNotFoundError:
                    continue  # went away just now
                moved.append((path, hidden))
            if moved:
                for directory in {tmp, *(path.parent for path, _ in moved)}:
                    fsync_directory(directory)
        except BaseException:
            self._restore(moved)
            raise
        return moved

    @staticmethod
    def _restore(moved: list[tuple[Path, Path]]) -> None:
        """Move hidden files back where they were (best effort: a rename frees space, it needs
        none in practice); what cannot go back is logged, and stays in ``tmp/``."""
        for path, hidden in reversed(moved):
            try:
                durable.rename(hidden, path)
            except OSError as e:
                log.error("could not restore %s from %s: %s", path, hidden, e)
        for directory in {path.parent for path, _ in moved}:
            with contextlib.suppress(OSError):
                fsync_directory(directory)


_W_SIZE = re.compile(r",W=(\d+)")
_OUR_NAME = re.compile(r"\d+\.M\d+P\d+Q[0-9A-Za-z]+\..*,S=(\d+)")  # maildir_filename()


def _pop3_size(entry: os.DirEntry[str]) -> int:
    """The octets RETR sends. taube's own files are stored with CRLF and name their size
    (``,S=``), so no stat is needed; others may declare it in the Maildir++ ``W=`` field, or are
    measured."""
    name = entry.name
    if m := _W_SIZE.search(name):
        return int(m.group(1))
    if m := _OUR_NAME.match(name):
        return int(m.group(1))
    return _crlf_size(Path(entry.path), entry.stat(follow_symlinks=False).st_size)


def _to_crlf(chunk: bytes, previous: bytes) -> bytes:
    """Bare LF -> CRLF, also across chunk borders (``previous`` is the last byte before)."""
    out = chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if chunk[:1] == b"\n" and previous == b"\r":
        out = out[1:]  # that LF completed a CRLF split across chunks
    return out


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)
