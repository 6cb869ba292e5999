"""The durable-write seam: every byte or an error, fsync'd, nothing partial left behind; and the
free-space reserve measured at MAIL FROM."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest

from taube.store import durable
from taube.store.space import FreeSpace
from tests.faults import ERRORS, FAULTS, FaultyCalls, faults  # noqa: F401 - the fixture

DATA = bytes(range(256)) * 40  # 10 KiB, every octet value


def points_of(faults: FaultyCalls, action) -> list[tuple[str, str]]:
    faults.arm()
    action()
    points = list(faults.points)
    faults.disarm()
    return points


def test_short_writes_are_completed(tmp_path: Path, faults: FaultyCalls) -> None:
    faults.arm(0, "short")
    durable.write_file(tmp_path / "f", DATA)
    assert (tmp_path / "f").read_bytes() == DATA
    writes = [p for p in faults.points if p[0] == "write"]
    assert len(writes) > 2  # it took several write(2) calls


def test_a_write_that_makes_no_progress_is_an_error_not_a_loop(tmp_path: Path, faults: FaultyCalls) -> None:
    faults.arm(1, "zero")  # create, then the first write returns 0
    with pytest.raises(OSError) as info:
        durable.write_file(tmp_path / "f", DATA)
    assert info.value.errno == errno.EIO
    assert list(tmp_path.iterdir()) == []


def test_a_buffer_can_be_cleared_after_a_failed_write(tmp_path: Path, faults: FaultyCalls) -> None:
    """The memoryviews over the caller's bytearray are released even on error (the spool clears
    its buffer right after a failed spill)."""
    buffer = bytearray(DATA)
    faults.arm(1, "eio")
    with pytest.raises(OSError), durable.DurableFile(tmp_path / "f") as out:
        out.write(buffer)
    buffer.clear()
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize("fault", ["enospc", "edquot", "eio"])
def test_write_file_fails_at_every_point_without_leaving_a_file(
        tmp_path: Path, faults: FaultyCalls, fault: str) -> None:
    points = points_of(faults, lambda: durable.write_file(tmp_path / "probe", DATA))
    assert [op for op, _ in points] == ["create", "write", "fsync"]
    for index in range(len(points)):
        faults.arm(index, fault)
        with pytest.raises(OSError) as info:
            durable.write_file(tmp_path / "f", DATA)
        assert info.value.errno == ERRORS[fault]
        assert not (tmp_path / "f").exists()


@pytest.mark.parametrize("fault", FAULTS)
def test_replace_file_is_old_or_new_never_partial(tmp_path: Path, faults: FaultyCalls, fault: str) -> None:
    target = tmp_path / "state"
    target.write_bytes(b"old")
    points = points_of(faults, lambda: durable.replace_file(tmp_path / "probe", DATA))
    assert [op for op, _ in points] == ["create", "write", "fsync", "rename", "fsync"]
    for index in range(len(points)):
        target.write_bytes(b"old")
        faults.arm(index, fault)
        try:
            durable.replace_file(target, DATA)
        except OSError:
            # the rename is the commit point: failing before it keeps the old content, the
            # directory fsync after it can fail with the new content in place (not yet durable)
            assert target.read_bytes() == (b"old" if index < 4 else DATA)
        else:
            assert target.read_bytes() == DATA
        assert sorted(p.name for p in tmp_path.iterdir()) == ["probe", "state"]  # no staged file


def test_replace_file_keeps_the_mode(tmp_path: Path) -> None:
    durable.replace_file(tmp_path / "key", b"secret", mode=0o600)
    assert (tmp_path / "key").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("fault", ["short", "enospc", "eio"])
def test_copy_file_is_complete_or_absent(tmp_path: Path, faults: FaultyCalls, fault: str) -> None:
    big = os.urandom(3 * durable.COPY_CHUNK + 17)
    points = points_of(faults, lambda: durable.copy_file(io.BytesIO(big), tmp_path / "probe"))
    for index in range(len(points)):
        faults.arm(index, fault)
        target = tmp_path / f"copy{index}"
        try:
            durable.copy_file(io.BytesIO(big), target)
        except OSError:
            assert fault != "short" and not target.exists()
        else:
            assert fault == "short" and target.read_bytes() == big


def test_durable_file_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "taken").write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        durable.DurableFile(tmp_path / "taken")
    assert (tmp_path / "taken").read_bytes() == b"someone else's"


def test_storage_errors_tell_full_from_broken() -> None:
    assert isinstance(durable.storage_error(OSError(errno.ENOSPC, "full")), durable.StorageFullError)
    assert isinstance(durable.storage_error(OSError(errno.EDQUOT, "quota")), durable.StorageFullError)
    eio = durable.storage_error(OSError(errno.EIO, "I/O error"))
    assert isinstance(eio, durable.StorageError) and not isinstance(eio, durable.StorageFullError)
    assert durable.is_full(OSError(errno.ENOSPC, "full")) and not durable.is_full(OSError(errno.EIO, "x"))


# -- the free-space reserve ---------------------------------------------------------------------

class _Statvfs:
    def __init__(self, free: int) -> None:
        self.f_bavail, self.f_frsize = free // 4096, 4096


def test_free_space_is_cached_briefly_and_noticed_when_it_returns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    free = [10 * 4096]
    measured: list[str] = []

    def statvfs(path: object) -> _Statvfs:
        measured.append(str(path))
        return _Statvfs(free[0])

    monkeypatch.setattr(os, "statvfs", statvfs)
    space = FreeSpace(tmp_path, max_age=1.0, clock=lambda: now[0])
    assert not space.admits(None, reserve=20 * 4096)
    free[0] = 30 * 4096
    now[0] += 0.5
    assert not space.admits(None, reserve=20 * 4096)  # the measurement is still fresh
    now[0] += 0.6
    assert space.admits(None, reserve=20 * 4096)  # space came back: no restart needed
    assert len(measured) == 2
    # SIZE= must fit in what lies above the reserve
    assert space.admits(10 * 4096, reserve=20 * 4096)
    assert not space.admits(10 * 4096 + 1, reserve=20 * 4096)
    assert space.admits(30 * 4096, reserve=0) and not space.admits(30 * 4096 + 1, reserve=0)


def test_free_space_that_cannot_be_measured_admits(tmp_path: Path) -> None:
    assert FreeSpace(tmp_path / "missing").admits(10**12, reserve=10**12)
