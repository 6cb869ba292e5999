"""A Maildir opened for POP3: a snapshot listing, retrieval in chunks, deletion at UPDATE.

POP3 numbers messages 1..n for the whole session (RFC 1939 section 5), so the listing is a
snapshot taken at login (:mod:`taube.store.listing`: from the file names, cached while the
directories are unchanged); mail arriving later waits for the next session. Sizes are the octets
RETR sends: CRLF line ends. Files taube delivered already have them, so reading them changes
nothing; a file with bare LF line ends (delivered by another program) gets a CR before each.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from . import durable
from .durable import fsync_directory
from .listing import LISTINGS, ListingCache, MailboxMessage

log = logging.getLogger("taube.pop3")

__all__ = ["Mailbox", "MailboxFactory", "MaildirMailbox", "MailboxMessage", "MessageContent",
           "MessageFile", "to_crlf"]


class MessageContent(Protocol):
    """One message opened for RETR or TOP."""

    at_end: bool  # the last read reached the end of the message

    def read(self, size: int) -> bytes:
        """The next ``size`` octets as stored (fewer only at the end, b"" after it), in CRLF
        form: a stored bare LF comes back as CRLF, so a chunk may be a little longer."""
        ...

    def close(self) -> None: ...


class Mailbox(Protocol):
    """One user's maildrop as one POP3 session sees it (:class:`MaildirMailbox` is the backend)."""

    messages: list[MailboxMessage]  # the snapshot :meth:`load` took

    def load(self) -> list[MailboxMessage]: ...

    def open(self, message: MailboxMessage) -> MessageContent:
        """The message for reading; OSError if it cannot be opened."""
        ...

    def seen(self, message: MailboxMessage) -> None:
        """RETR sent the whole message: record that the user has seen it."""
        ...

    def delete(self, messages: list[MailboxMessage]) -> None: ...


# a user's normalised address -> that user's mailbox, not yet loaded (built by ``app.py``)
MailboxFactory = Callable[[str], Mailbox]


class MessageFile:
    """A message file open for reading: plain ``os.read`` on a descriptor (no buffered file
    object: each RETR reads its message once, in as few calls as possible).

    :meth:`read` may run in a worker thread while the event loop calls :meth:`close` (the
    client went away in the middle of a large message). The descriptor is then closed by the
    read once it returns, never under it: a number closed early could be reused by the next
    open file or socket and read from by mistake."""

    __slots__ = ("_closing", "_crlf", "_fd", "_lock", "_previous", "_reading", "at_end")

    def __init__(self, path: str, *, crlf: bool = False) -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._crlf = crlf  # known to have CRLF line ends: no need to look for bare LFs
        self._lock = threading.Lock()
        self._reading = False
        self._closing = False
        self._previous = b""  # the last octet read: a CR there may pair with an LF next
        self.at_end = False

    def read(self, size: int) -> bytes:
        with self._lock:
            if self._closing:
                raise ValueError("read of a closed message file")
            self._reading = True
        try:
            data = self._read(size)
        finally:
            with self._lock:
                self._reading = False
                if self._closing:
                    self._close()
        if not self._crlf and data.count(b"\n") != data.count(b"\r\n"):
            data = to_crlf(data, self._previous)
        if data:
            self._previous = data[-1:]
        return data

    def _read(self, size: int) -> bytes:
        parts: list[bytes] = []
        left = size
        while left > 0 and not self.at_end:
            # A regular file reads short only at its end, but not every filesystem promises it
            # (NFS may): read on until the size is reached or a read comes back empty.
            data = os.read(self._fd, left)
            if data:
                parts.append(data)
                left -= len(data)
            else:
                self.at_end = True
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        with self._lock:
            self._closing = True
            if not self._reading:
                self._close()

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class MaildirMailbox:
    """One user's Maildir as seen by one POP3 session."""

    def __init__(self, maildir: Path, listings: ListingCache | None = None) -> None:
        self.maildir = maildir
        self.messages: list[MailboxMessage] = []
        self._listings = LISTINGS if listings is None else listings
        self._moved: dict[str, str] = {}  # uid -> where this session moved it (new/ -> cur/)
        self._new = os.path.join(maildir, "new", "")  # the listing's paths in new/ start so

    def load(self) -> list[MailboxMessage]:
        """Take the snapshot: ``cur/`` then ``new/``, each oldest first (names start with the
        delivery time)."""
        self.messages = self._listings.listing(str(self.maildir))
        self._moved.clear()
        return self.messages

    def open(self, message: MailboxMessage) -> MessageFile:
        """The message, wherever it is now: where it was listed, where this session moved it,
        or in ``cur/`` under new flags (another client)."""
        path = self._moved.get(message.uid, message.path)
        try:
            return MessageFile(path, crlf=message.crlf)
        except FileNotFoundError:
            return MessageFile(self._current_path(message), crlf=message.crlf)

    def seen(self, message: MailboxMessage) -> None:
        """A message retrieved from ``new/`` is moved to ``cur/`` marked seen (``:2,S``), so an
        IMAP server sharing the Maildir sees it as read."""
        path = self._moved.get(message.uid, message.path)
        if not path.startswith(self._new):
            return
        target = os.path.join(self.maildir, "cur", f"{path[len(self._new):]}:2,S")
        with contextlib.suppress(FileNotFoundError):  # gone or moved by another client
            os.rename(path, target)
            self._moved[message.uid] = target

    def _current_path(self, message: MailboxMessage) -> str:
        path = self._moved.get(message.uid, message.path)
        if os.path.exists(path):
            return path
        base = os.path.basename(message.path).split(":", 1)[0]
        cur = os.path.join(self.maildir, "cur")
        with contextlib.suppress(FileNotFoundError), os.scandir(cur) as entries:
            for entry in entries:
                if entry.name.split(":", 1)[0] == base:
                    return entry.path
        raise FileNotFoundError(message.path)

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
                    path = Path(self._current_path(message))
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


def to_crlf(chunk: bytes, previous: bytes) -> bytes:
    """Bare LF -> CRLF, also across chunk borders (``previous`` is the last byte before)."""
    out = chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if chunk[:1] == b"\n" and previous == b"\r":
        out = out[1:]  # that LF completed a CRLF split across chunks
    return out
