"""Fault injection at the one durable-write seam (``taube.store.durable.calls``).

:class:`FaultyCalls` stands in for the real system calls and counts every *write point* (a
file created, a write, an fsync, a rename, a link, an unlink). Armed with :meth:`FaultyCalls.arm`,
the N-th point from then on fails in one of the ways storage fails:

``short``   from that point on every write writes only part of its buffer (at most half, at
            most 4 KiB): not an error, the caller must loop
``zero``    that point, if it is a write, returns 0 (no progress: must become an error, never
            an endless loop); any other point is not affected
``enospc``  OSError ENOSPC (a full disk)
``edquot``  OSError EDQUOT (a full quota)
``eio``     OSError EIO (the device failed)

A test first runs a scenario with nothing armed to learn its points (:attr:`FaultyCalls.points`),
then runs it again once per point and fault. Thread-safe: the server commits in worker threads.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from taube.store import durable

__all__ = ["ERRORS", "FAULTS", "FaultyCalls", "faults"]

FAULTS = ("short", "zero", "enospc", "edquot", "eio")
ERRORS = {"enospc": errno.ENOSPC, "edquot": errno.EDQUOT, "eio": errno.EIO}


class FaultyCalls(durable.SystemCalls):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: dict[int, Path] = {}  # fd -> the file create() made
        self.points: list[tuple[str, str]] = []  # (operation, path) since the last arm/reset
        self._target: int | None = None
        self._where: str | None = None
        self._fault: str | None = None
        self._short = False
        self.fired: tuple[str, str] | None = None  # the point that failed

    def arm(self, index: int | None = None, fault: str | None = None, *,
            where: str | None = None) -> None:
        """Start counting from zero; with ``index``, make that point fail with ``fault``; with
        ``where``, every point whose path contains it (a full filesystem or quota there)."""
        assert fault is None or fault in FAULTS, fault
        with self._lock:
            self.points = []
            self._target, self._fault, self._short, self.fired = index, fault, False, None
            self._where = where

    def disarm(self) -> None:
        self.arm()

    def _point(self, operation: str, path: object) -> str | None:
        """Count one point; the fault to apply to it, if any."""
        with self._lock:
            index = len(self.points)
            self.points.append((operation, str(path)))
            if self._where is not None and self._where in str(path):
                self.fired = self.points[-1]
                return self._fault
            if self._target == index:
                self.fired = self.points[-1]
                if self._fault == "short":
                    self._short = True
                    return None
                return self._fault
            return None

    def _fail(self, fault: str | None, path: object) -> None:
        if fault in ERRORS:
            code = ERRORS[fault]
            raise OSError(code, os.strerror(code), str(path))

    # --- the seam ---------------------------------------------------------------------------
    def create(self, path: Path, flags: int, mode: int) -> int:
        self._fail(self._point("create", path), path)
        fd = super().create(path, flags, mode)
        with self._lock:
            self._paths[fd] = path
        return fd

    def open(self, path: Path, flags: int) -> int:  # not a write point: only names the fd
        fd = super().open(path, flags)
        with self._lock:
            self._paths[fd] = path
        return fd

    def close(self, fd: int) -> None:
        with self._lock:
            self._paths.pop(fd, None)
        super().close(fd)

    def write(self, fd: int, data: memoryview) -> int:
        path = self._paths.get(fd, f"fd {fd}")
        fault = self._point("write", path)
        if fault == "zero":
            return 0
        self._fail(fault, path)
        if self._short and len(data) > 1:
            # Part of the buffer, as write(2) may do near a full filesystem.
            return super().write(fd, data[: max(1, min(len(data) // 2, 4096))])
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        path = self._paths.get(fd, f"fd {fd}")
        self._fail(self._point("fsync", path), path)
        super().fsync(fd)

    def rename(self, source: Path, target: Path) -> None:
        self._fail(self._point("rename", target), target)
        super().rename(source, target)

    def link(self, source: Path, target: Path) -> None:
        self._fail(self._point("link", target), target)
        super().link(source, target)

    def unlink(self, path: Path) -> None:
        self._fail(self._point("unlink", path), path)
        super().unlink(path)


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultyCalls]:
    """The durable seam replaced by a :class:`FaultyCalls`, nothing armed yet."""
    calls = FaultyCalls()
    monkeypatch.setattr(durable, "calls", calls)
    yield calls
