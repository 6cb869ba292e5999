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
