"""The SQLite files in which checks keep state that every process serving SMTP shares
(greylisting triples, rate counters): one file under ``data_dir`` per kind of state, each
process with its own connection to it.

WAL mode lets readers go on while one process writes (SQLite's "Write-Ahead Logging"), and the
busy timeout makes a writer wait for another process's write instead of failing at once. Every
method of a :class:`StateDB` blocks: the checks call them from a thread pool of their own, never
on the event loop. One connection per object, used by one thread at a time (a lock), so that
one object may serve a whole pool.

Old rows are purged now and then by whichever process is writing, in batches of a bounded
size, so that no decision ever waits for a purge of the whole table; a batch that comes back
full is followed by another at the next decision, so that the purge keeps up however fast rows
are made.

The files hold client addresses, senders and recipients: they are the server's alone (mode
0600, whatever the umask; SQLite gives its -wal and -shm files the database file's mode), and
a file an earlier version left readable by others is made private when it is opened.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Literal

__all__ = ["StateDB"]

log = logging.getLogger("taube.policy.statedb")

_PRIVATE = 0o600  # read and write for the server's user only


class StateDB(ABC):
    """One state file: ``schema`` (idempotent SQL) applied at opening; ``synchronous`` "NORMAL"
    (a power loss may forget the last commits, never corrupt the file) or "OFF" (for counters
    that mean nothing after a minute); ``clock``: wall-clock seconds, the same in every process.
    A subclass says how to purge (:meth:`_purge`), how many rows one purge removes at most
    (``purge_batch``) and how often (``purge_interval``), and reaches the file through
    :meth:`_connection`.

    A file that cannot be opened (data_dir read-only or full, the file not ours) does not stop
    the server: the error is logged, every method raises :class:`sqlite3.Error` (the checks let
    mail through), and the next use tries to open it again."""

    purge_interval: float = 600.0
    purge_batch: int = 1000

    def __init__(self, path: Path, schema: str, *, synchronous: Literal["NORMAL", "OFF"],
                 busy_timeout: float, clock: Callable[[], float]) -> None:
        self.path = Path(path)
        self.clock = clock
        self._lock = threading.Lock()
        self._next_purge = 0.0
        self._schema = schema
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._db: sqlite3.Connection | None = None
        self._closed = False
        try:
            self._connection()
        except sqlite3.Error as exc:
            log.error("%s: %s; mail is let through unchecked until it can be opened",
                      self.path, exc)

    def _connection(self) -> sqlite3.Connection:
        """(lock held, or before any thread has the object) The open connection, opened now
        if it is not yet. sqlite3.Error when it cannot be, OSError included."""
        if self._db is not None:
            return self._db
        if self._closed:
            raise sqlite3.ProgrammingError(f"{self.path} is closed")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _make_private(self.path)
        except OSError as exc:
            raise sqlite3.OperationalError(f"cannot create the file: {exc}") from exc
        # isolation_level=None: no implicit transactions; a statement commits by itself, and a
        # subclass that needs several statements says BEGIN IMMEDIATE.
        db = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None,
                             check_same_thread=False)
        try:
            db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(f"PRAGMA synchronous = {self._synchronous}")
            db.executescript(self._schema)
        except BaseException:
            db.close()
            raise
        self._db = db
        return db

    def close(self) -> None:
        """Close the file; no use opens it again."""
        with self._lock:
            self._closed = True
            if self._db is not None:
                self._db.close()
                self._db = None

    def purge(self) -> int:
        """Remove one bounded batch of old rows now; how many went."""
        with self._lock:
            return self._purge(self.clock())

    @abstractmethod
    def _purge(self, now: float) -> int:
        """(lock held) Remove at most one batch of rows that are old at ``now``; how many."""

    def _purge_now_and_then(self, now: float) -> None:
        """(lock held) Purge when ``purge_interval`` has passed since this object's last purge.
        A failure is logged: the caller's decision stands, the next purge tries again."""
        if now < self._next_purge:
            return
        self._next_purge = now + self.purge_interval
        try:
            if self._purge(now) >= self.purge_batch:
                self._next_purge = now  # more to go: the next decision takes another batch
        except sqlite3.Error as exc:
            log.warning("%s: purge failed: %s", self.path, exc)


def _make_private(path: Path) -> None:
    """Create ``path`` with mode 0600 if it is missing (before SQLite would, with the umask's
    mode), and take every permission for others from it and its WAL files."""
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT, _PRIVATE))
    for each in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = stat.S_IMODE(each.stat().st_mode)
            if mode & 0o077:
                each.chmod(mode & 0o700)
        except FileNotFoundError:
            continue
        except OSError as exc:  # not ours to change: say so, and go on
            log.warning("%s: cannot make it private (mode 0600): %s", each, exc)
