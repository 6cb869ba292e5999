"""Maildir mailboxes of local users: layout, creation, unique file names and delivery by link.

Layout: ``<root>/<domain>/<local part>/{tmp,new,cur}`` (root is ``<data_dir>/mail``), one Maildir
per user as described in https://cr.yp.to/proto/maildir.html and read the same way by Python's
:mod:`mailbox`, mutt and Dovecot.

Delivery does not go through ``tmp/``: the spool has already written and fsync'd the message once
under ``<data_dir>/queue/incoming``, so a hard link puts the very same inode into ``new/``
(Dovecot's LMTP does the same for multi-recipient mail, ``maildir_copy_with_hardlinks``). The
spec's rule "a reader never sees a partial file in ``new/``" holds because the link is made only
after the file is complete and on disk. Readers never modify a message in place (they rename it
into ``cur/`` or unlink it), so sharing the inode between mailboxes and the outbound queue is safe.
Only if ``mail/`` lives on another filesystem (``EXDEV``) is the file copied, the spec's way:
into ``tmp/``, fsync, then renamed into ``new/``.

Messages are stored exactly as received, CRLF line ends included, so ``S=`` in the file name is
both the file size and the RFC 1939 octet count a POP3 server announces.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import threading
import time
from pathlib import Path

from . import durable
from .durable import DirectorySyncs, fsync_directory  # their home now; old import path kept

__all__ = [
    "MaildirStore",
    "create_directories",
    "escape_local_part",
    "DirectorySyncs",
    "fsync_directory",
    "maildir_filename",
]

_SUBDIRS = ("tmp", "new", "cur")
_DIR_MODE = 0o700
_FILE_MODE = 0o600
_MAX_COMPONENT = 255  # NAME_MAX of Linux filesystems, in bytes

# Everything that could make a local part something other than one plain path component, plus
# "%" itself so that the escaping stays reversible (two addresses never share a Maildir).
_UNSAFE_LOCAL = re.compile(r"[%/\x00-\x1f\x7f]")
# Maildir paths remembered by address: every message computes its recipients' paths at least
# twice (spool file, then delivery), and path arithmetic is not free. A full table starts over.
_PATHS_MAX = 4096
# Maildir spec: "/" and ":" in the host name become \057 and \072; "," too, because Dovecot reads
# ",S=" and ",W=" fields after the host name.
_HOST_ESCAPES = str.maketrans({"/": r"\057", ":": r"\072", ",": r"\054"})


def escape_local_part(local: str) -> str:
    """The local part as one safe path component (raises ValueError if it cannot be one).

    ``%``, ``/``, NUL and other control characters become ``%XX`` (two upper-case hex digits of
    the code point), and a leading ``.`` becomes ``%2E`` (so ``.``, ``..`` and hidden names are
    impossible). Everything else, UTF-8 local parts included, is kept as it is, so the Maildir of
    an ordinary address has the obvious name.
    """
    if not local:
        raise ValueError("empty local part")
    escaped = _UNSAFE_LOCAL.sub(lambda m: f"%{ord(m.group()):02X}", local)
    if escaped.startswith("."):
        escaped = "%2E" + escaped[1:]
    if len(os.fsencode(escaped)) > _MAX_COMPONENT:
        raise ValueError(f"local part too long for a directory name: {local[:40]!r}...")
    return escaped


def _check_domain(domain: str) -> str:
    """The domain as a path component; refuses what cannot be a domain name anyway."""
    if not domain or domain.startswith(".") or "/" in domain or "\x00" in domain:
        raise ValueError(f"unsafe domain for a Maildir path: {domain!r}")
    if len(os.fsencode(domain)) > _MAX_COMPONENT:
        raise ValueError(f"domain too long for a directory name: {domain[:40]!r}...")
    return domain


def maildir_filename(queue_id: str, hostname: str, size: int, when: float | None = None) -> str:
    """A unique Maildir file name: ``<sec>.M<usec>P<pid>Q<queue id>.<host>,S=<size>``.

    The spec's modern form (``M`` microseconds, ``P`` process id) with the queue id, unique across
    processes and restarts, in place of qmail's per-process delivery counter ``Q``; uniqueness no
    longer depends on the clock. ``S=`` is the exact file size (Dovecot's ``maildir_stat`` shortcut
    and quota; it re-checks and renames if it is wrong, so it must be exact).
    """
    now = time.time() if when is None else when
    sec = int(now)
    usec = int((now - sec) * 1_000_000)
    return f"{sec}.M{usec}P{os.getpid()}Q{queue_id}.{_escaped_host(hostname)},S={size}"


@functools.lru_cache(maxsize=16)
def _escaped_host(hostname: str) -> str:
    """The host name as a Maildir file name part (one per server: computed once)."""
    return hostname.translate(_HOST_ESCAPES)


class MaildirStore:
    """The Maildirs under ``root``; safe to use from many commit threads at once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._known: set[Path] = set()  # Maildirs complete and durable, checked in this process
        self._lock = threading.Lock()
        self._paths: dict[str, Path] = {}  # maildir_path() by address

    def maildir_path(self, address: str) -> Path:
        """``root/<domain>/<escaped local part>`` for a normalised ``local@domain`` address.

        See :func:`escape_local_part` for the escaping; the mapping is one-to-one.
        """
        path = self._paths.get(address)
        if path is None:
            local, at, domain = address.rpartition("@")
            if not at:
                raise ValueError(f"not an address: {address!r}")
            path = self.root / _check_domain(domain) / escape_local_part(local)
            if len(self._paths) >= _PATHS_MAX:
                self._paths.clear()
            self._paths[address] = path
        return path

    def ensure(self, maildir: Path) -> None:
        """Make sure ``maildir`` with ``tmp/ new/ cur/`` exists and its names are durable.

        The first call per Maildir in this process creates what is missing (mode 0700) and fsyncs
        the Maildir and its parents up to ``root`` even if nothing was created: a previous process
        may have created them and died before its own fsync. Later calls are one set lookup.
        """
        if maildir in self._known:
            return
        with self._lock:  # a second thread must not skip ahead while the first still fsyncs
            if maildir in self._known:
                return
            created = create_directories(maildir)
            for sub in _SUBDIRS:
                created += create_directories(maildir / sub)
            for directory in _directories_to_sync(maildir, self.root, created):
                fsync_directory(directory)
            if not created:
                remove_stale_tmp(maildir)
            self._known.add(maildir)

    def deliver(self, source: Path, maildir: Path, name: str) -> Path:
        """Put the complete, fsync'd file ``source`` into ``maildir/new/name``; return that path.

        A hard link (no data written, one directory entry). The caller fsyncs ``new/`` (once per
        Maildir per message, however many links). On ``EXDEV`` the file is copied instead, see the
        module docstring. Never overwrites: ``name`` is unique, an existing file is an error.
        """
        target = maildir / "new" / name
        try:
            durable.link(source, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            _copy_via_tmp(source, maildir, name)
        return target


# The Maildir specification: a file in tmp/ untouched for 36 hours is a leftover of a crash.
STALE_TMP_SECONDS = 36 * 3600


def remove_stale_tmp(maildir: Path, now: float | None = None) -> int:
    """Delete files in ``maildir/tmp`` older than 36 hours (half-written, never delivered);
    return how many. Younger files may belong to a delivery still in progress."""
    limit = (time.time() if now is None else now) - STALE_TMP_SECONDS
    removed = 0
    with os.scandir(maildir / "tmp") as entries:
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < limit:
                    os.unlink(entry.path)
                    removed += 1
    return removed


def create_directories(path: Path, mode: int = _DIR_MODE) -> list[Path]:
    """``mkdir -p path`` with ``mode``; return the directories created, outermost first.

    The caller fsyncs their parents: a new directory's name is just another directory entry.
    A directory another process made at the same moment is not in the result.
    """
    missing: list[Path] = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    created = []
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            continue
        created.append(directory)
    return created


def _directories_to_sync(maildir: Path, root: Path, created: list[Path]) -> list[Path]:
    """Directories whose entries must reach the disk, deepest first: the Maildir (its ``tmp``,
    ``new``, ``cur``), its parents up to ``root``, and the parent of anything created above."""
    chain = [maildir, *(d for d in maildir.parents if root == d or root in d.parents)]
    wanted = set(chain) | {d.parent for d in created}
    return sorted(wanted, key=lambda p: len(p.parts), reverse=True)


def _copy_via_tmp(source: Path, maildir: Path, name: str) -> None:
    """The Maildir spec's delivery when linking is impossible: write tmp/, fsync, rename to new/.

    Written through :mod:`.durable` (every byte or an error; the partial copy removed on any
    error). A crash mid-copy leaves a file in ``tmp/`` only, invisible to readers; the spec has
    readers remove such files after 36 hours (Dovecot does).
    """
    tmp = maildir / "tmp" / name
    with open(source, "rb") as src:
        durable.copy_file(src, tmp, mode=_FILE_MODE)
    try:
        durable.rename(tmp, maildir / "new" / name)
    except BaseException:
        durable.unlink_all([tmp])
        raise
