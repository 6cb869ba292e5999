"""One queue runner per data directory: an exclusive ``flock(2)`` on ``<data_dir>/queue/runner.lock``.

Two runners on one queue would both deliver a due message. That happens when a server is killed
(SIGKILL, OOM) while its runner process is stopped or slow to notice: the new server's runner
starts next to the orphan. The lock, held for the runner's whole life, lets only one of them
deliver; the kernel drops it when its holder exits however it dies, so there is nothing stale to
clean up. The file holds the holder's pid, for the log line of a runner that has to wait.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from ..store import durable

__all__ = ["LOCK_NAME", "RunnerLock", "lock_path"]

LOCK_NAME = "runner.lock"


def lock_path(data_dir: Path) -> Path:
    return data_dir / "queue" / LOCK_NAME


class RunnerLock:
    """The runner lock of one data directory; :meth:`try_acquire` never blocks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; True when this object holds it (now or already)."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_CLOEXEC: a flock belongs to the open file, and a child holding a copy would keep
        # the lock after this process is gone.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        with contextlib.suppress(OSError):  # the pid is only for the waiting runner's log line
            os.ftruncate(fd, 0)
            durable.write_all(fd, f"{os.getpid()}\n".encode("ascii"))
        return True

    def holder(self) -> int | None:
        """The pid the current holder wrote, if any (it may be gone by the time it is read)."""
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return int(text) if text.isdigit() else None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the last descriptor of the open file drops the flock
