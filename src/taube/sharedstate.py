"""State shared between connections, behind one small interface.

Per-client connection counts today; mailbox locks, authentication-failure penalties and the
SMTP-after-POP window join them later. Nothing of this lives in module globals: several worker
processes (SO_REUSEPORT), and later several nodes on one database, must see the same state, so a
second implementation of :class:`SharedState` can replace :class:`LocalState` without touching
the protocol code.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

__all__ = ["LocalState", "SharedState"]


class SharedState(Protocol):
    def open_connection(self, client: str, *, total_limit: int, per_client_limit: int) -> str | None:
        """Count a new connection from ``client``; a reason string if it is over a limit
        (and then it is not counted), else None."""

    def close_connection(self, client: str) -> None: ...

    def connection_count(self) -> int: ...


class LocalState:
    """SharedState for one process: plain counters, no locking needed under one event loop."""

    def __init__(self) -> None:
        self._per_client: Counter[str] = Counter()
        self._total = 0

    def open_connection(self, client: str, *, total_limit: int, per_client_limit: int) -> str | None:
        if self._total >= total_limit:
            return "too many connections"
        if self._per_client[client] >= per_client_limit:
            return "too many connections from your address"
        self._per_client[client] += 1
        self._total += 1
        return None

    def close_connection(self, client: str) -> None:
        self._total -= 1
        self._per_client[client] -= 1
        if self._per_client[client] <= 0:
            del self._per_client[client]

    def connection_count(self) -> int:
        return self._total
