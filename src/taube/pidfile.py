"""``<data_dir>/taube.pid``: how the ``taube`` command finds the running server (to wake its
queue runner with SIGUSR1 after ``taube queue flush`` / ``retry``)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .store import durable

__all__ = ["pid_path", "remove_pid", "running_pid", "write_pid"]


def pid_path(data_dir: Path) -> Path:
    return data_dir / "taube.pid"


def write_pid(data_dir: Path) -> None:
    """Record this process: written whole, fsync'd and renamed into place (store/durable.py)."""
    path = pid_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    durable.replace_file(path, f"{os.getpid()}\n".encode("ascii"), mode=0o644,
                         staged=path.with_suffix(".pid.tmp"))


def remove_pid(data_dir: Path) -> None:
    """Remove the file if it names this process."""
    if running_pid(data_dir) == os.getpid():
        with contextlib.suppress(OSError):
            pid_path(data_dir).unlink()


def running_pid(data_dir: Path) -> int | None:
    """The pid of the server using ``data_dir`` if it is alive, else None (a stale file left
    by a crash names a process that is gone, or one that is not a taube server)."""
    try:
        pid = int(pid_path(data_dir).read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    args = cmdline.split(b"\0")
    serving = b"serve" in args and any(a.endswith(b"taube") for a in args)
    return pid if serving else None
