"""The SQLite state files of the checks (policy/statedb.py), through both of their kinds (the
greylisting triples, the rate counters): who may read them."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from taube.policy.greylist import GreylistDB
from taube.policy.rates import RateCounter
from taube.policy.statedb import StateDB
from tests.clock import Clock


def greylist(path: Path) -> GreylistDB:
    return GreylistDB(path, delay=300.0, expiry=86400.0, clock=Clock())


def rates(path: Path) -> RateCounter:
    return RateCounter(path, clock=Clock())


def use(db: StateDB) -> None:
    """One decision: the file and its WAL files exist afterwards."""
    if isinstance(db, GreylistDB):
        db.check("192.0.2.0/24", "s@example.org", "r@example.net")
    else:
        assert isinstance(db, RateCounter)
        db.hit("message", "192.0.2.1")


KINDS = [pytest.param(greylist, id="greylist"), pytest.param(rates, id="rates")]


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that lets everyone read new files, as many a service manager sets."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def modes(directory: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}


@pytest.mark.usefixtures("open_umask")
@pytest.mark.parametrize("make", KINDS)
def test_the_files_are_for_the_server_alone(tmp_path: Path,
                                            make: Callable[[Path], StateDB]) -> None:
    """They hold client addresses, senders and recipients: mode 0600, the WAL files too
    (SQLite gives them the database file's mode)."""
    db = make(tmp_path / "state.db")
    use(db)
    found = modes(tmp_path)
    db.close()
    assert set(found) == {"state.db", "state.db-wal", "state.db-shm"}
    assert set(found.values()) == {0o600}


@pytest.mark.usefixtures("open_umask")
@pytest.mark.parametrize("make", KINDS)
def test_a_file_others_could_read_is_made_private(tmp_path: Path,
                                                  make: Callable[[Path], StateDB]) -> None:
    """A file made by an earlier version (0644) is 0600 from the next start on."""
    first = make(tmp_path / "state.db")
    use(first)
    first.close()
    for path in tmp_path.iterdir():
        path.chmod(0o644)
    again = make(tmp_path / "state.db")
    use(again)
    found = modes(tmp_path)
    again.close()
    assert set(found.values()) == {0o600}
