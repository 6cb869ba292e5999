"""The SQLite state files of the checks (policy/statedb.py), through both of their kinds (the
greylisting triples, the rate counters): who may read them, and what the checks do when the
file cannot be opened or their threads are all taken."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from taube.policy import greylist as greylist_module
from taube.policy import rates as rates_module
from taube.policy.greylist import GREYLISTED, Greylist, GreylistDB
from taube.policy.pipeline import Context, Pipeline, Recipient, Verdict
from taube.policy.rates import RateCheck, RateCounter, RateLimits
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


def test_greylisting_that_cannot_open_its_file_lets_mail_through(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """data_dir unwritable (here: a file where the directory should be): the server still
    starts, each decision lets the client through with a log line, never a traceback or a
    refusal, and greylisting works again once the file can be made."""
    data_dir = tmp_path / "data"
    data_dir.write_text("not a directory")
    grey = Greylist.open(data_dir, delay=300.0, expiry=86400.0, trusted=lambda ip: False,
                         clock=Clock())
    assert asyncio.run(attempt(grey)) == Verdict.cont()
    assert "greylist" in caplog.text and str(data_dir) in caplog.text
    data_dir.unlink()
    data_dir.mkdir()
    assert asyncio.run(attempt(grey)).reply == GREYLISTED
    grey.close()


def test_rate_counters_that_cannot_open_their_file_count_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data_dir = tmp_path / "data"
    data_dir.write_text("not a directory")
    check = RateCheck.open(data_dir, RateLimits(messages=1), lambda ip: False, clock=Clock())
    assert [asyncio.run(mail(check)).refused for _ in range(3)] == [False] * 3
    assert "rate counters" in caplog.text
    data_dir.unlink()
    data_dir.mkdir()
    assert [asyncio.run(mail(check)).refused for _ in range(2)] == [False, True]
    check.close()


async def attempt(check: Greylist) -> Verdict:
    ctx = Context(client_ip="192.0.2.1")
    ctx.tx.sender = "s@example.org"
    ctx.tx.rcpt = Recipient(address="r@example.net", local="r", domain="example.net")
    return await Pipeline([check]).rcpt(ctx)


async def mail(check: RateCheck) -> Verdict:
    return await Pipeline([check]).mail(Context(client_ip="192.0.2.1"))


@pytest.mark.parametrize("kind", ["greylist", "rates"])
def test_a_decision_waits_for_a_thread_only_so_long(
        tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Every worker thread is held (another process's write lock, a slow disk): the session
    has its answer by the check's deadline, the client let through with a log line, instead of
    queueing behind the others without end."""
    module = greylist_module if kind == "greylist" else rates_module
    pool = ThreadPoolExecutor(max_workers=1)
    release = threading.Event()
    pool.submit(release.wait, 5)  # the only thread, taken
    monkeypatch.setattr(module, "WORKERS", pool)
    monkeypatch.setattr(module, "DEADLINE", 0.2)
    check: Greylist | RateCheck
    if kind == "greylist":
        check = Greylist.open(tmp_path, delay=300.0, expiry=86400.0, trusted=lambda ip: False,
                              clock=Clock())
    else:
        check = RateCheck.open(tmp_path, RateLimits(messages=1), lambda ip: False, clock=Clock())
    try:
        started = time.monotonic()
        verdict = asyncio.run(attempt(check) if isinstance(check, Greylist) else mail(check))
        elapsed = time.monotonic() - started
    finally:
        release.set()
        pool.shutdown(wait=True)
        check.close()
    assert verdict == Verdict.cont() and elapsed < 0.2 + 1.0
    assert "no answer within" in caplog.text


def test_purging_keeps_up_with_a_flood_of_new_rows(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Each purge removes one bounded batch; when a batch comes back full, the next decision
    purges again instead of waiting a whole interval, so that rows made faster than one batch
    per interval (a spam run's one-shot triples, clients rotating through an IPv6 /64) cannot
    grow the file without end."""
    monkeypatch.setattr(greylist_module, "PURGE_BATCH", 3)
    clock = Clock()
    db = GreylistDB(tmp_path / "g.db", delay=300.0, expiry=86400.0, clock=clock)
    for i in range(10):
        db.check("192.0.2.0/24", "s@example.org", f"old{i}@example.net")  # never pass
    clock.now += greylist_module.RETRY_WINDOW + greylist_module.PURGE_INTERVAL
    for i in range(4):
        db.check("198.51.100.0/24", "s@example.org", f"new{i}@example.net")
    assert db.count() == 4
    db.close()
