"""Every write point of one message's way into the spool failing in turn, through the durable
seam (see :mod:`tests.faults`): a failure leaves nothing new on disk, and a short write (or a
zero-length one where no write happens) loses nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from taube.queue.spool import SpoolFile, StorageError, StorageFullError
from tests.faults import ERRORS, FAULTS, FaultyCalls

__all__ = ["check_every_write_point", "files_under", "finish"]


def finish(spooled: SpoolFile, steps: Callable[[SpoolFile], None]) -> str:
    """Run ``steps`` (the edits and the commit) on ``spooled``, aborting it when they raise, as
    the SMTP session does; the queue id."""
    try:
        steps(spooled)
    except BaseException:
        spooled.abort()
        raise
    return spooled.queue_id


def files_under(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` and its content (the SQLite state left out)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and p.name != "taube.db"}


def check_every_write_point(faults: FaultyCalls, root: Path, receive: Callable[[], str],
                            stored: bytes) -> list[tuple[str, str]]:
    """Run ``receive`` (one message into the spool under ``root``, its queue id returned; it
    aborts the spool file on an error) once to learn its write points, then once per point and
    fault. Each message file it leaves must hold ``stored``. Returns the points."""
    faults.arm()
    receive()
    points = list(faults.points)
    for index in range(len(points)):
        write = points[index][0] == "write"
        for fault in FAULTS:
            before = files_under(root)
            faults.arm(index, fault)
            try:
                queue_id = receive()
            except StorageError as e:
                faults.disarm()
                assert fault in ERRORS or (fault == "zero" and write), (index, fault)
                assert isinstance(e, StorageFullError) == (fault in ("enospc", "edquot")), e
                assert files_under(root) == before, (index, fault, points[index])
                continue
            faults.disarm()
            assert fault == "short" or (fault == "zero" and not write), (index, fault)
            new = {k: v for k, v in files_under(root).items() if k not in before}
            assert new and all(v == stored for k, v in new.items() if not k.endswith(".json")), (index, fault)
            assert all(queue_id in k for k in new)
    return points
