"""The free-space reserve of the data directory, as Postfix's ``queue_minfree``.

A transaction that starts on a nearly full filesystem will most likely end in ``452`` after the
client sent the whole message; refusing it at ``MAIL FROM`` costs the client nothing and keeps
the last megabytes for the commits already under way (queue envelopes, reports, POP3). RFC 1870
section 6.1: a ``SIZE=`` the server cannot store now is a temporary failure, ``452``.

``statvfs(2)`` is cheap (no disk I/O), but it runs on the event loop for every ``MAIL``: the
figure is kept for at most :data:`MAX_AGE` seconds, so space that comes back is noticed within
that time, without a restart.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["MAX_AGE", "FreeSpace"]

log = logging.getLogger("taube.spool")

MAX_AGE = 1.0  # seconds a measurement is reused


class FreeSpace:
    """Octets an unprivileged process may still write on the filesystem of ``path``."""

    def __init__(self, path: Path, *, max_age: float = MAX_AGE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._measured: tuple[float, int | None] | None = None  # (when, octets or unknown)

    def available(self) -> int | None:
        """``f_bavail * f_frsize`` (blocks free to non-root users), at most :attr:`max_age`
        seconds old; None when it cannot be measured (the commit still fails cleanly then)."""
        now = self._clock()
        with self._lock:
            if self._measured is not None and now - self._measured[0] < self.max_age:
                return self._measured[1]
        try:
            st = os.statvfs(self.path)
            octets: int | None = st.f_bavail * st.f_frsize
        except OSError as e:
            log.warning("cannot measure the free space of %s: %s", self.path, e)
            octets = None
        with self._lock:
            self._measured = (now, octets)
        return octets

    def admits(self, size: int | None, reserve: int) -> bool:
        """Whether a new transaction may start: the free space is at least ``reserve`` octets
        and a declared ``size`` (``MAIL ... SIZE=n``) fits in what lies above the reserve."""
        free = self.available()
        if free is None:
            return True
        if free < reserve:
            return False
        return size is None or size <= free - reserve
