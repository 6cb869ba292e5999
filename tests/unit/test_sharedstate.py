"""The SharedState interface, every test on both backends: LocalState (one process) and the
shared table (worker processes; tests/unit/test_sharedstate_table.py has what only it does)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from taube.sharedstate import LocalState, SharedState, SharedTable, create_shared, open_shared

MakeState = Callable[..., SharedState]


class Clock:
    """An injected clock: the state takes no times from its callers."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["local", "table"])
def make_state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeState]:
    """``make_state(clock=time.time)``: a new state of the backend under test."""
    opened: list[SharedTable] = []

    def make(clock: Callable[[], float] = time.time) -> SharedState:
        if request.param == "local":
            return LocalState(clock)
        data = tmp_path / f"data{len(opened)}"
        opened.append(create_shared(data, workers=2))
        opened.append(open_shared(data, worker_id=0, clock=clock))
        return opened[-1]

    yield make
    for table in opened:
        table.close()


def test_limits_total_and_per_client(make_state: MakeState) -> None:
    state = make_state()
    assert state.open_connection("a", total_limit=3, per_client_limit=2) is None
    assert state.open_connection("a", total_limit=3, per_client_limit=2) is None
    assert state.open_connection("a", total_limit=3, per_client_limit=2) == "too many connections from your address"
    assert state.open_connection("b", total_limit=3, per_client_limit=2) is None
    assert state.open_connection("c", total_limit=3, per_client_limit=2) == "too many connections"
    assert state.connection_count() == 3
    state.close_connection("a")
    assert state.open_connection("c", total_limit=3, per_client_limit=2) is None
    for client in ("a", "b", "c"):
        state.close_connection(client)
    assert state.connection_count() == 0


def test_auth_failures_window_and_reset(make_state: MakeState) -> None:
    clock = Clock(0.0)
    state = make_state(clock)
    counts = []
    for t in (0, 1, 2):
        clock.now = t
        counts.append(state.auth_failed("a", window=10))
    assert counts == [1, 2, 3]
    clock.now = 3
    assert state.auth_blocked("a", window=10, limit=3)
    assert state.auth_failures("a", window=10) == 3
    clock.now = 10.5
    assert not state.auth_blocked("a", window=10, limit=3)  # the first aged out
    assert state.auth_failures("a", window=10) == 2
    state.auth_succeeded("a")
    clock.now = 3
    assert not state.auth_blocked("a", window=10, limit=1)


def test_a_wider_window_counts_older_failures(make_state: MakeState) -> None:
    clock = Clock()
    state = make_state(clock)
    state.auth_failed("a", window=10)
    clock.now += 11
    assert state.auth_failures("a", window=12) == 1
    assert state.auth_failures("a", window=10) == 0


def test_default_clock_is_the_wall_clock(make_state: MakeState) -> None:
    """Monotonic clocks differ between processes; the wall clock is what they share."""
    before = time.time()
    assert before <= make_state().now() <= time.time()


def test_mailbox_lock_and_pop_window(make_state: MakeState) -> None:
    clock = Clock(100.0)
    state = make_state(clock)
    assert state.lock_mailbox("alice@example.test")
    assert not state.lock_mailbox("alice@example.test")
    state.unlock_mailbox("alice@example.test")
    assert state.lock_mailbox("alice@example.test")
    state.pop_login("192.0.2.1")
    clock.now = 399
    assert state.pop_login_within("192.0.2.1", 300)
    assert state.pop_login_within("192.0.2.1", window=300)
    clock.now = 400
    assert not state.pop_login_within("192.0.2.1", 300)
    clock.now = 100
    assert not state.pop_login_within("192.0.2.2", 300)



def test_exempt_client_has_only_the_total_limit(make_state: MakeState) -> None:
    state = make_state()
    for _ in range(3):
        assert state.open_connection("trusted", total_limit=3, per_client_limit=None) is None
    assert state.open_connection("trusted", total_limit=3, per_client_limit=None) == "too many connections"
    assert state.open_connection("other", total_limit=3, per_client_limit=1) == "too many connections"


def test_services_are_counted_apart(make_state: MakeState) -> None:
    """SMTP and POP3 have limits of their own: connections to one never use up the other's."""
    state = make_state()
    for _ in range(3):
        assert state.open_connection("a", total_limit=3, per_client_limit=None, service="smtp") is None
    assert state.open_connection("a", total_limit=3, per_client_limit=None, service="smtp") == "too many connections"
    assert state.open_connection("a", total_limit=3, per_client_limit=2, service="pop3") is None
    assert state.open_connection("a", total_limit=3, per_client_limit=2, service="pop3") is None
    assert state.open_connection("a", total_limit=3, per_client_limit=2, service="pop3") == \
        "too many connections from your address"
    assert state.connection_count() == 5
    state.close_connection("a", service="pop3")
    assert state.open_connection("a", total_limit=3, per_client_limit=2, service="pop3") is None
