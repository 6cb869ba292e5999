"""The SQLite files in which checks keep state that every process serving SMTP shares
(greylisting triples, rate counters): one file under ``data_dir`` per kind of state, each
process with its own connection to it.

WAL mode lets readers go on while one process writes (SQLite's "Write-Ahead Logging"), and the
busy timeout makes a writer wait for another process's write instead of failing at once. Every
method of a :class:`StateDB` blocks: the checks call them from a thread pool of their own, never
on the event loop. One connection per object, used by one thread at a time (a lock), so that
one object may serve a whole pool.

Old rows are purged now and then by whichever process is writing, in batches of a bounded
size, so that no decision ever waits for a purge of the whole table.

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
    A subclass says how to purge (:meth:`_purge`) and how often (``purge_interval``)."""

    purge_interval: float = 600.0

    def __init__(self, path: Path, schema: str, *, synchronous: Literal["NORMAL", "OFF"],
                 busy_timeout: float, clock: Callable[[], float]) -> None:
        self.path = Path(path)
        self.clock = clock
        self._lock = threading.Lock()
        self._next_purge = 0.0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _make_private(self.path)
        # isolation_level=None: no implicit transactions; a statement commits by itself, and a
        # subclass that needs several statements says BEGIN IMMEDIATE.
        self._db = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute(f"PRAGMA synchronous = {synchronous}")
        self._db.executescript(schema)

    def close(self) -> None:
        with self._lock:
            self._db.close()

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
            self._purge(now)
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
