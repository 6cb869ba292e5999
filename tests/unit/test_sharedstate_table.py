"""What only the shared table does: several handles (as several workers) on one table, worker
ids, full tables, the crash residue it must tolerate, its file. Real processes:
test_sharedstate_processes.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from taube.sharedstate_layout import FPS
from taube.sharedstate import SharedTable, WorkerIdInUse, create_shared, open_shared, table_path

FROM = "too many connections from your address"
TOO_MANY = "too many connections"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def opened() -> Iterator[list[SharedTable]]:
    """Handles to close at the end of the test."""
    handles: list[SharedTable] = []
    yield handles
    for handle in handles:
        handle.close()


def table(opened: list[SharedTable], data: Path, **sizes: int) -> SharedTable:
    sizes.setdefault("workers", 4)
    handle = create_shared(data, **sizes)
    opened.append(handle)
    return handle


def worker(opened: list[SharedTable], data: Path, worker_id: int, clock: Clock | None = None) -> SharedTable:
    handle = open_shared(data, worker_id=worker_id, clock=clock or Clock())
    opened.append(handle)
    return handle


def test_workers_share_per_client_and_total_limits(opened: list[SharedTable], tmp_path: Path) -> None:
    supervisor = table(opened, tmp_path)
    a, b = worker(opened, tmp_path, 0), worker(opened, tmp_path, 1)
    assert b.open_connection("x", total_limit=9, per_client_limit=3, service="pop3") is None  # pop3 first here
    assert [a.open_connection("x", total_limit=4, per_client_limit=3, service="smtp") for _ in range(2)] == [None, None]
    assert b.open_connection("x", total_limit=4, per_client_limit=3, service="smtp") is None
    assert b.open_connection("x", total_limit=4, per_client_limit=3, service="smtp") == FROM
    assert a.open_connection("y", total_limit=4, per_client_limit=3, service="smtp") is None
    assert b.open_connection("z", total_limit=4, per_client_limit=3, service="smtp") == TOO_MANY
    assert supervisor.connection_count() == 5
    a.close_connection("x", service="smtp")
    assert b.open_connection("x", total_limit=5, per_client_limit=3, service="smtp") is None
    assert b.open_connection("x", total_limit=5, per_client_limit=3, service="smtp") == FROM


def test_a_refusal_keeps_the_count_of_the_other_worker(opened: list[SharedTable], tmp_path: Path) -> None:
    """A worker's first attempt for an address at its limit is refused, and the slot holding the
    other worker's connections stays: the next attempt is refused too."""
    table(opened, tmp_path)
    a, b = worker(opened, tmp_path, 0), worker(opened, tmp_path, 1)
    assert a.open_connection("x", total_limit=9, per_client_limit=1) is None
    assert [b.open_connection("x", total_limit=9, per_client_limit=1) for _ in range(2)] == [FROM, FROM]
    a.close_connection("x")
    assert b.open_connection("x", total_limit=9, per_client_limit=1) is None


def test_failed_logins_on_one_clock_across_handles(opened: list[SharedTable], tmp_path: Path) -> None:
    table(opened, tmp_path)
    clock = Clock(1000.0)
    a, b = worker(opened, tmp_path, 0, clock), worker(opened, tmp_path, 1, clock)
    assert a.auth_failed("x", 10) == 1
    clock.now = 1001
    assert b.auth_failed("x", 10) == 2
    clock.now = 1002
    assert a.auth_failed("x", 10) == 3
    assert b.auth_blocked("x", 10, 3) and not b.auth_blocked("y", 10, 1)
    clock.now = 1010.5
    assert b.auth_failures("x", 10) == 2  # the first aged out for both
    assert a.auth_failures("x", 20) == 3  # a wider window still sees it
    b.auth_succeeded("x")
    assert a.auth_failures("x", 20) == 0


def test_smtp_after_pop_and_mailbox_locks_across_handles(opened: list[SharedTable], tmp_path: Path) -> None:
    table(opened, tmp_path)
    clock = Clock(500.0)
    a, b = worker(opened, tmp_path, 0, clock), worker(opened, tmp_path, 1, clock)
    a.pop_login("192.0.2.1")
    clock.now = 799
    assert b.pop_login_within("192.0.2.1", 300) and not b.pop_login_within("192.0.2.2", 300)
    clock.now = 800
    assert not b.pop_login_within("192.0.2.1", 300)
    assert a.lock_mailbox("alice@example.test") and not b.lock_mailbox("alice@example.test")
    assert b.lock_mailbox("../alice")  # names are digests: no path escapes the lock directory
    a.unlock_mailbox("alice@example.test")
    assert b.lock_mailbox("alice@example.test") and not a.lock_mailbox("alice@example.test")
    b.close()
    assert a.lock_mailbox("alice@example.test")
    assert {p.parent for p in (tmp_path / "state").rglob("*.lock") if "mailbox" in str(p)} == \
        {table_path(tmp_path).parent / "mailbox-locks"}


def test_worker_ids(opened: list[SharedTable], tmp_path: Path) -> None:
    supervisor = table(opened, tmp_path, workers=2)
    a = worker(opened, tmp_path, 0)
    with pytest.raises(WorkerIdInUse):
        open_shared(tmp_path, worker_id=0)
    with pytest.raises(ValueError):
        open_shared(tmp_path, worker_id=2)
    with pytest.raises(WorkerIdInUse):
        supervisor.release_worker(0)
    with pytest.raises(WorkerIdInUse):
        a.release_worker(0)
    with pytest.raises(RuntimeError):  # the supervisor's handle counts no connections
        supervisor.open_connection("x", total_limit=9, per_client_limit=1)
    a.close()
    worker(opened, tmp_path, 0).close()  # free again once closed


def test_a_dead_workers_share_is_released(opened: list[SharedTable], tmp_path: Path) -> None:
    supervisor = table(opened, tmp_path)
    a, b = worker(opened, tmp_path, 0), worker(opened, tmp_path, 1)
    for client in ("x", "x", "y"):
        assert a.open_connection(client, total_limit=9, per_client_limit=2, service="smtp") is None
    assert b.open_connection("x", total_limit=9, per_client_limit=3, service="smtp") is None
    a.close()  # as if it had died: what it counted stays counted
    assert supervisor.connection_count() == 4
    assert b.open_connection("x", total_limit=9, per_client_limit=3, service="smtp") == FROM
    supervisor.release_worker(0)
    assert supervisor.connection_count() == 1
    assert b.open_connection("x", total_limit=9, per_client_limit=3, service="smtp") is None
    b.close_connection("x", service="smtp")
    b.close_connection("x", service="smtp")
    assert supervisor.connection_count() == 0


def test_reopening_a_worker_id_releases_its_share(opened: list[SharedTable], tmp_path: Path) -> None:
    supervisor = table(opened, tmp_path)
    a = worker(opened, tmp_path, 3)
    for _ in range(3):
        assert a.open_connection("x", total_limit=9, per_client_limit=None) is None
    a.close()
    assert supervisor.connection_count() == 3
    worker(opened, tmp_path, 3)
    assert supervisor.connection_count() == 0


def test_a_full_table(opened: list[SharedTable], tmp_path: Path) -> None:
    """One bucket of eight slots: a ninth address is refused unless exempt, which is then
    counted in the total only; a closed address makes room."""
    supervisor = table(opened, tmp_path, connections=8)
    a = worker(opened, tmp_path, 0)
    for i in range(8):
        assert a.open_connection(f"192.0.2.{i}", total_limit=99, per_client_limit=5) is None
    assert a.open_connection("192.0.2.8", total_limit=99, per_client_limit=5) == TOO_MANY
    assert a.open_connection("192.0.2.8", total_limit=99, per_client_limit=None) is None
    assert a.open_connection("192.0.2.8", total_limit=99, per_client_limit=None) is None
    assert a.open_connection("192.0.2.0", total_limit=99, per_client_limit=5) is None  # has its slot
    assert supervisor.connection_count() == 11
    a.close_connection("192.0.2.8")
    a.close_connection("192.0.2.8")
    a.close_connection("192.0.2.1")
    assert supervisor.connection_count() == 8
    assert a.open_connection("192.0.2.9", total_limit=99, per_client_limit=5) is None


def test_a_slot_left_counting_nothing_is_taken_again(opened: list[SharedTable], tmp_path: Path) -> None:
    """A process killed after taking a slot and before counting in it leaves a slot with a
    fingerprint and no count: a full bucket takes it again, release_worker frees it."""
    supervisor = table(opened, tmp_path, connections=8)
    a = worker(opened, tmp_path, 0)
    a._acquire()
    try:
        for i in range(8):
            assert a._conn_slot(0, f"dead-{i}") >= 0  # taken, never counted
    finally:
        a._release()
    assert a.open_connection("192.0.2.1", total_limit=99, per_client_limit=1) is None
    assert supervisor.connection_count() == 1
    supervisor.release_worker(1)
    # the seven left without counts were freed; "192.0.2.1" still holds its slot
    assert FPS.unpack_from(a._mm, a._layout.conn_at).count(0) == 7
    assert a.open_connection("192.0.2.1", total_limit=99, per_client_limit=1) == FROM


def test_failed_logins_forget_the_stalest_address_when_full(opened: list[SharedTable], tmp_path: Path) -> None:
    table(opened, tmp_path, clients=8, failure_ring=4)
    clock = Clock(100.0)
    a = worker(opened, tmp_path, 0, clock)
    for i in range(8):
        clock.now = 100 + i
        a.auth_failed(f"192.0.2.{i}", 3600)
    a.auth_failed("192.0.2.0", 3600)  # now the most recent: 192.0.2.1 is the stalest
    clock.now = 200
    assert a.auth_failed("192.0.2.8", 3600) == 1
    assert a.auth_failures("192.0.2.1", 3600) == 0
    assert [a.auth_failures(f"192.0.2.{i}", 3600) for i in (0, 2, 7, 8)] == [2, 1, 1, 1]
    for _ in range(5):
        a.auth_failed("192.0.2.8", 3600)
    assert a.auth_failures("192.0.2.8", 3600) == 4  # at most the ring
    assert a.auth_blocked("192.0.2.8", 3600, 10)  # a limit above the ring blocks at the ring


def test_pop_logins_forget_the_stalest_address_when_full(opened: list[SharedTable], tmp_path: Path) -> None:
    table(opened, tmp_path, clients=8)
    clock = Clock(100.0)
    a = worker(opened, tmp_path, 0, clock)
    for i in range(9):
        clock.now = 100 + i
        a.pop_login(f"192.0.2.{i}")
    assert not a.pop_login_within("192.0.2.0", 3600)
    assert all(a.pop_login_within(f"192.0.2.{i}", 3600) for i in range(1, 9))


def test_long_keys_stay_apart(opened: list[SharedTable], tmp_path: Path) -> None:
    table(opened, tmp_path)
    a = worker(opened, tmp_path, 0)
    one, two = "x" * 100 + "1", "x" * 100 + "2"
    assert a.open_connection(one, total_limit=9, per_client_limit=1) is None
    assert a.open_connection(two, total_limit=9, per_client_limit=1) is None
    assert a.open_connection(one, total_limit=9, per_client_limit=1) == FROM


def test_services_are_one_list_for_every_handle(opened: list[SharedTable], tmp_path: Path) -> None:
    table(opened, tmp_path)
    a, b = worker(opened, tmp_path, 0), worker(opened, tmp_path, 1)
    for i in range(16):
        assert a.open_connection("x", total_limit=9, per_client_limit=1, service=f"s{i}") is None
    assert b.open_connection("x", total_limit=9, per_client_limit=1, service="s15") == FROM
    with pytest.raises(ValueError):
        b.open_connection("x", total_limit=9, per_client_limit=1, service="s16")
    with pytest.raises(ValueError):
        b.open_connection("x", total_limit=9, per_client_limit=1, service="a-name-that-is-long")


def test_a_new_table_starts_empty(opened: list[SharedTable], tmp_path: Path) -> None:
    table(opened, tmp_path)
    a = worker(opened, tmp_path, 0)
    assert a.open_connection("x", total_limit=9, per_client_limit=1) is None
    a.close()
    assert table(opened, tmp_path).connection_count() == 0
    assert list(table_path(tmp_path).parent.glob(".*.tmp")) == []


def test_not_a_table(tmp_path: Path) -> None:
    path = table_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a table at all, but long enough to hold a header" * 2)
    with pytest.raises(ValueError, match="not a taube shared state table"):
        open_shared(tmp_path, worker_id=0)
    with pytest.raises(FileNotFoundError):
        open_shared(tmp_path / "elsewhere", worker_id=0)
