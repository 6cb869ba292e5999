"""POP3 mailbox locks across processes: an exclusive ``flock(2)`` on one file per maildrop.

RFC 1939 section 8 lets one POP3 session at a time hold a maildrop. With several worker
processes the lock has to be seen by all of them; a flock is, and the kernel drops it when its
holder exits however it dies, so a worker killed in the middle of a session leaves no stale lock
behind (no pid files to check, no timeouts to guess).

A flock belongs to the open file description, not to the process: two sessions of one process
open the file each for itself and exclude each other as two processes do. A forked child shares
its parent's descriptions, so it closes its copies at once (:func:`_after_fork`): it must not keep
a parent's mailbox locked after the parent is gone. (Closing a copy does not release the lock;
only closing the last descriptor of the description, or ``LOCK_UN``, does.)

The lock files stay: removing one while another process has it open but not yet locked would let
two sessions lock two different files of the same name.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import weakref
from pathlib import Path

__all__ = ["MailboxLocks", "try_lock_file"]

_open_lock_sets: weakref.WeakSet[MailboxLocks] = weakref.WeakSet()


class MailboxLocks:
    """The mailbox locks taken through one handle, in ``directory`` (created if missing)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._held: dict[str, int] = {}  # mailbox -> descriptor holding its flock
        _open_lock_sets.add(self)

    def path(self, mailbox: str) -> Path:
        """The lock file of ``mailbox``: named after its digest, so that no name (an address
        with "/" or "..", a name too long for the file system) can point anywhere else."""
        return self.directory / (hashlib.blake2b(mailbox.encode("utf-8", "surrogateescape"),
                                                 digest_size=16).hexdigest() + ".lock")

    def lock(self, mailbox: str) -> bool:
        """Take ``mailbox``'s lock without waiting; False if any session holds it."""
        if mailbox in self._held:
            return False
        fd = try_lock_file(self.path(mailbox))
        if fd is None:
            return False
        self._held[mailbox] = fd
        return True

    def unlock(self, mailbox: str) -> None:
        fd = self._held.pop(mailbox, None)
        if fd is not None:
            os.close(fd)  # the last descriptor of the open file: the flock goes with it

    def close(self) -> None:
        """Release every lock taken through this handle."""
        _open_lock_sets.discard(self)
        for mailbox in list(self._held):
            self.unlock(mailbox)

    def _forked(self) -> None:
        """In a forked child: let go of the parent's copies without releasing its locks."""
        held, self._held = self._held, {}
        for fd in held.values():
            os.close(fd)


def try_lock_file(path: Path) -> int | None:
    """A new descriptor of ``path`` (created if missing) holding its exclusive flock, or None
    if someone holds the lock; never waits."""
    # O_CLOEXEC: a program started from here must not inherit (and so keep) the lock.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _after_fork() -> None:
    for locks in list(_open_lock_sets):
        locks._forked()


os.register_at_fork(after_in_child=_after_fork)
