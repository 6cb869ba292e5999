"""Connection counting behind the SharedState interface."""

from __future__ import annotations

from taube.sharedstate import LocalState


def test_limits_total_and_per_client() -> None:
    state = LocalState()
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


def test_auth_failures_window_and_reset() -> None:
    state = LocalState()
    assert [state.auth_failed("a", t, window=10) for t in (0, 1, 2)] == [1, 2, 3]
    assert state.auth_blocked("a", 3, window=10, limit=3)
    assert not state.auth_blocked("a", 10.5, window=10, limit=3)  # the first two aged out
    state.auth_succeeded("a")
    assert not state.auth_blocked("a", 3, window=10, limit=1)


def test_mailbox_lock_and_pop_window() -> None:
    state = LocalState()
    assert state.lock_mailbox("alice@example.test")
    assert not state.lock_mailbox("alice@example.test")
    state.unlock_mailbox("alice@example.test")
    assert state.lock_mailbox("alice@example.test")
    state.pop_login("192.0.2.1", now=100)
    assert state.pop_login_within("192.0.2.1", now=399, window=300)
    assert not state.pop_login_within("192.0.2.1", now=400, window=300)
    assert not state.pop_login_within("192.0.2.2", now=100, window=300)


def test_exempt_client_has_only_the_total_limit() -> None:
    state = LocalState()
    for _ in range(3):
        assert state.open_connection("trusted", total_limit=3, per_client_limit=None) is None
    assert state.open_connection("trusted", total_limit=3, per_client_limit=None) == "too many connections"
    assert state.open_connection("other", total_limit=3, per_client_limit=1) == "too many connections"


def test_services_are_counted_apart():
    """SMTP and POP3 have limits of their own: connections to one never use up the other's."""
    state = LocalState()
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
