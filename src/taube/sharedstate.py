"""State shared between connections, behind one small interface.

Per-client connection counts, mailbox locks, authentication failures and the SMTP-after-POP
window. Nothing of this lives in module globals: several worker
processes (SO_REUSEPORT), and later several nodes on one database, must see the same state, so a
second implementation of :class:`SharedState` can replace :class:`LocalState` without touching
the protocol code.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Protocol

__all__ = ["LocalState", "SharedState"]


class SharedState(Protocol):
    """Times are the implementation's own (:meth:`now`; the wall clock by default), so that
    processes, whose monotonic clocks differ, agree on every window; callers pass durations."""

    def open_connection(self, client: str, *, total_limit: int, per_client_limit: int | None,
                        service: str = "") -> str | None:
        """Count a new connection from ``client`` to ``service`` ("smtp", "pop3": each has its
        own limits, counted apart); a reason string if it is over a limit (and then it is not
        counted), else None. ``per_client_limit`` None: exempt (trusted networks), only
        ``total_limit`` applies."""

    def close_connection(self, client: str, *, service: str = "") -> None: ...

    def connection_count(self) -> int:
        """Open connections, all services together."""

    def now(self) -> float:
        """The state's own clock (seconds, the same in every process that shares the state):
        every time stored or compared here is taken from it, never from a caller."""

    def auth_failed(self, client: str, window: float) -> int:
        """Record a failed login from ``client`` now; its failures within the last ``window``
        seconds."""

    def auth_failures(self, client: str, window: float) -> int:
        """The failures recorded for ``client`` within the last ``window`` seconds."""

    def auth_blocked(self, client: str, window: float, limit: int) -> bool:
        """True while ``client`` has ``limit`` or more failures within the last ``window``."""

    def auth_succeeded(self, client: str) -> None: ...

    def lock_mailbox(self, mailbox: str) -> bool:
        """Take the POP3 lock of ``mailbox`` (RFC 1939 8: one session at a time); False if held."""

    def unlock_mailbox(self, mailbox: str) -> None: ...

    def pop_login(self, client: str) -> None:
        """Remember a successful POP3 login from ``client`` now (SMTP-after-POP)."""

    def pop_login_within(self, client: str, window: float) -> bool:
        """True if ``client`` logged in over POP3 less than ``window`` seconds ago (by the
        state's own clock: a caller's clock means nothing in another process)."""


# Addresses with recent failures that one process remembers; past it the stalest are forgotten
# (a botnet of many addresses is not stopped by per-address counting anyway).
MAX_TRACKED_CLIENTS = 100_000


class LocalState:
    """SharedState for one process: plain counters, no locking needed under one event loop.
    ``clock``: seconds, the wall clock by default (a test passes its own)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._per_client: Counter[tuple[str, str]] = Counter()  # (service, client)
        self._totals: Counter[str] = Counter()  # per service
        self._failures: dict[str, deque[float]] = {}
        self._locked: set[str] = set()
        self._pop_logins: dict[str, float] = {}

    def open_connection(self, client: str, *, total_limit: int, per_client_limit: int | None,
                        service: str = "") -> str | None:
        key = (service, client)
        if self._totals[service] >= total_limit:
            return "too many connections"
        if per_client_limit is not None and self._per_client[key] >= per_client_limit:
            return "too many connections from your address"
        self._per_client[key] += 1
        self._totals[service] += 1
        return None

    def close_connection(self, client: str, *, service: str = "") -> None:
        key = (service, client)
        self._totals[service] -= 1
        self._per_client[key] -= 1
        if self._per_client[key] <= 0:
            del self._per_client[key]

    def connection_count(self) -> int:
        return sum(self._totals.values())

    def now(self) -> float:
        return self._clock()

    def _recent(self, client: str, now: float, window: float) -> deque[float]:
        times = self._failures.get(client)
        if times is None:
            return deque()
        while times and times[0] <= now - window:
            times.popleft()
        if not times:
            del self._failures[client]
        return times

    def auth_failed(self, client: str, window: float) -> int:
        now = self._clock()
        times = self._recent(client, now, window)
        if not times:
            if len(self._failures) >= MAX_TRACKED_CLIENTS:
                del self._failures[next(iter(self._failures))]  # the longest-known address
            self._failures[client] = times
        times.append(now)
        return len(times)

    def auth_failures(self, client: str, window: float) -> int:
        return len(self._recent(client, self._clock(), window))

    def auth_blocked(self, client: str, window: float, limit: int) -> bool:
        return self.auth_failures(client, window) >= limit

    def auth_succeeded(self, client: str) -> None:
        self._failures.pop(client, None)

    def lock_mailbox(self, mailbox: str) -> bool:
        if mailbox in self._locked:
            return False
        self._locked.add(mailbox)
        return True

    def unlock_mailbox(self, mailbox: str) -> None:
        self._locked.discard(mailbox)

    def pop_login(self, client: str) -> None:
        if client not in self._pop_logins and len(self._pop_logins) >= MAX_TRACKED_CLIENTS:
            del self._pop_logins[next(iter(self._pop_logins))]
        self._pop_logins.pop(client, None)  # re-insert: the dict stays oldest first
        self._pop_logins[client] = self._clock()

    def pop_login_within(self, client: str, window: float) -> bool:
        when = self._pop_logins.get(client)
        return when is not None and self._clock() - when < window
