"""Durable writes: the one path every file a ``250``, a queue entry or a POP3 ``+OK`` rests on
goes through.

A mail server makes one promise: what it acknowledged is on stable storage, whole. So a file is
written completely or not at all:

- every ``write(2)`` is looped until all bytes are out: a short count is not an error (a signal,
  a nearly full filesystem, a pipe), but ignoring it tears the file (a 100 KB message once sat
  in ``new/`` with its last 11 KB missing); a write that makes no progress is an error, never
  an endless loop;
- the data is fsync'd before its name is published, and the directory that gained or lost the
  name is fsync'd before the acknowledgement (a file's fsync does not cover its name);
- on any error (ENOSPC, EDQUOT, EIO, ...) the partial file is removed, so nothing half written
  is ever left where a reader or the queue could take it for complete.

Postfix's ``vstream`` + ``cleanup`` and qmail's write-fsync-link are the model.

Every system call that changes a file goes through :data:`calls` (a :class:`SystemCalls`),
looked up at each use: a test replaces it (``monkeypatch.setattr(durable, "calls", ...)``) to
make the N-th write short or fail, and so checks every write point of a transaction through
this one seam. Production code never replaces it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "COPY_CHUNK",
    "DirectorySyncs",
    "DurableFile",
    "StorageError",
    "StorageFullError",
    "SystemCalls",
    "calls",
    "copy_file",
    "fsync_directory",
    "fsync_file",
    "is_full",
    "link",
    "rename",
    "replace_file",
    "storage_error",
    "unlink",
    "write_all",
    "write_file",
]

FILE_MODE = 0o600
COPY_CHUNK = 1 << 20
# No space or quota left: RFC 3463 4.3.1 ("452 insufficient system storage") rather than 4.3.0.
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class StorageError(Exception):
    """The message could not be stored; nothing of it is visible. The sender should retry (4xx)."""


class StorageFullError(StorageError):
    """No space or quota left (ENOSPC, EDQUOT): RFC 3463 4.3.1, "452 insufficient storage"."""


def is_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the filesystem or the quota is full."""
    return isinstance(exc, StorageFullError) or (isinstance(exc, OSError) and exc.errno in _FULL)


def storage_error(exc: OSError) -> StorageError:
    """The StorageError for an OSError: StorageFullError when the disk or quota is full."""
    kind = StorageFullError if exc.errno in _FULL else StorageError
    return kind(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))


class SystemCalls:
    """The system calls that change files, as durable writes use them. Plain pass-throughs
    (``os`` is looked up at each call); see the module docstring for why they are one object.
    Opening an existing file or directory and closing a descriptor change nothing but go
    through here too, so that a stand-in always knows which file a descriptor is."""

    def create(self, path: Path, flags: int, mode: int) -> int:
        return os.open(path, flags, mode)

    def open(self, path: Path, flags: int) -> int:
        return os.open(path, flags)

    def close(self, fd: int) -> None:
        os.close(fd)

    def write(self, fd: int, data: memoryview) -> int:
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def rename(self, source: Path, target: Path) -> None:
        os.rename(source, target)

    def link(self, source: Path, target: Path) -> None:
        os.link(source, target)

    def unlink(self, path: Path) -> None:
        os.unlink(path)


calls = SystemCalls()


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write every byte of ``data`` to ``fd`` or raise OSError.

    ``write(2)`` may write less than asked (POSIX allows it for regular files too, e.g. when
    the filesystem fills up mid-write or a signal arrives): write the rest. A write that
    returns 0 for a non-empty buffer makes no progress and never will: an error (EIO), not a
    loop."""
    # Views are released on the way out, error or not: a bytearray still exported cannot be
    # resized, and the caller clears its buffer after a failed write.
    with memoryview(data) as whole, whole.cast("B") as view:
        done, total = 0, len(view)
        while done < total:
            with view[done:] as rest:
                written = calls.write(fd, rest)
            if written <= 0:
                raise OSError(errno.EIO, "write made no progress")
            done += written


def fsync_directory(path: Path) -> None:
    """fsync a directory, making the entries created or removed in it durable.

    fsync of a file does not cover its name: POSIX (and ext4/XFS in practice) only promises a new
    link survives a crash once the directory holding it is fsync'd as well.
    """
    fd = calls.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        calls.fsync(fd)
    finally:
        calls.close(fd)


def fsync_file(path: Path) -> None:
    """fsync a file written earlier, by name (e.g. one staged, to fsync it with others)."""
    fd = calls.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        calls.fsync(fd)
    finally:
        calls.close(fd)


class DurableFile:
    """A new file written in pieces: :meth:`write` (all bytes or OSError), :meth:`sync`,
    :meth:`close`; :meth:`discard` closes and removes it. Used as a context manager, an
    exception inside the block discards it.

    Created exclusively (``O_EXCL``) unless ``replace``: a name that already exists is someone
    else's file, never overwritten. Not thread-safe: one writer at a time."""

    def __init__(self, path: Path, *, mode: int = FILE_MODE, replace: bool = False) -> None:
        self.path = path
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if replace else os.O_EXCL)
        self._fd: int | None = calls.create(path, flags, mode)

    def fileno(self) -> int:
        if self._fd is None:
            raise ValueError(f"{self.path}: file already closed")
        return self._fd

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """All of ``data`` or OSError (the file is then partial: discard it)."""
        write_all(self.fileno(), data)

    def sync(self) -> None:
        """fsync the data (the caller fsyncs the directory once the name is where it belongs)."""
        calls.fsync(self.fileno())

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            calls.close(fd)

    def discard(self) -> None:
        """Close and remove the file; errors are not interesting on this path."""
        with contextlib.suppress(OSError):
            self.close()
        with contextlib.suppress(OSError):
            calls.unlink(self.path)

    def __enter__(self) -> DurableFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is not None:
            self.discard()
        else:
            self.close()


def write_file(path: Path, data: bytes, *, mode: int = FILE_MODE, replace: bool = False,
               sync: bool = True) -> None:
    """Create ``path`` holding ``data``, fsync'd unless ``sync`` is false (the caller then
    fsyncs it, e.g. together with other files); on any error nothing is left at ``path``.
    The directory is not fsync'd: the caller renames or links the file into place first."""
    with DurableFile(path, mode=mode, replace=replace) as out:
        out.write(data)
        if sync:
            out.sync()


def replace_file(path: Path, data: bytes, *, mode: int = FILE_MODE, staged: Path | None = None,
                 sync_directory: bool = True) -> None:
    """Atomically give ``path`` the content ``data``: write a staged file next to it (by
    default ``<name>.tmp``), fsync it, rename it over ``path``, fsync the directory. A reader
    sees the whole old file or the whole new one; a failure leaves the old one and no staged
    file. ``sync_directory=False``: the caller fsyncs the directory (to group the fsyncs)."""
    staged = staged or path.with_name(path.name + ".tmp")
    write_file(staged, data, mode=mode, replace=True)
    try:
        calls.rename(staged, path)
    except BaseException:
        with contextlib.suppress(OSError):
            calls.unlink(staged)
        raise
    if sync_directory:
        fsync_directory(path.parent)


def copy_file(source: BinaryIO, target: Path, *, mode: int = FILE_MODE) -> None:
    """A new file ``target`` with the rest of ``source``, fsync'd; removed again on any error."""
    with DurableFile(target, mode=mode) as out:
        while chunk := source.read(COPY_CHUNK):
            out.write(chunk)
        out.sync()


def rename(source: Path, target: Path) -> None:
    """``rename(2)`` through the seam (the caller fsyncs both directories)."""
    calls.rename(source, target)


def link(source: Path, target: Path) -> None:
    """``link(2)`` through the seam (the caller fsyncs the target's directory)."""
    calls.link(source, target)


def unlink(path: Path) -> None:
    """``unlink(2)`` through the seam."""
    calls.unlink(path)


def unlink_all(paths: Iterable[Path]) -> None:
    """Best-effort removal on an error path: one failure must not keep the others in place."""
    for path in paths:
        with contextlib.suppress(OSError):
            calls.unlink(path)


class DirectorySyncs:
    """Group commit for directory fsyncs, shared by all commit threads.

    Under load many threads link messages into the same ``new/`` at once, and each needs an
    fsync of that directory that *started after its own link*. One such fsync covers every link
    made before it started, so a caller arriving while one runs waits for the next one instead
    of queueing its own: N concurrent commits cost about two directory fsyncs, not N.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: dict[Path, _SyncGroup] = {}

    def sync(self, path: Path) -> None:
        with self._lock:
            group = self._groups.get(path)
            if group is None:
                group = self._groups[path] = _SyncGroup()
        group.sync(path)


class _SyncGroup:
    __slots__ = ("_cond", "_done", "_running", "_ticket")

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._ticket = 0  # callers so far
        self._done = 0  # every caller up to this ticket is covered by a finished fsync
        self._running = False

    def sync(self, path: Path) -> None:
        with self._cond:
            self._ticket += 1
            mine = self._ticket
            while self._done < mine:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                covers = self._ticket  # every link made before this fsync starts
                ok = False
                self._cond.release()
                try:
                    fsync_directory(path)
                    ok = True
                finally:  # on error the waiters try again themselves
                    self._cond.acquire()
                    self._running = False
                    if ok:
                        self._done = max(self._done, covers)
                    self._cond.notify_all()
