"""State shared between connections, behind one small interface.

Per-client connection counts, mailbox locks, authentication failures and the SMTP-after-POP
window. Nothing of this lives in module globals: several worker processes (SO_REUSEPORT), and
later several nodes on one database, must see the same state, so the protocol code sees only
:class:`SharedState`, with one of two implementations:

- :class:`LocalState`: plain dictionaries, for a server of one process (``workers = 1``) and tests;
- :class:`~taube.sharedstate_table.SharedTable`: a table in a file every process maps, under a
  lock the kernel releases when its holder dies, so that every limit holds across workers.

The life of a shared table:

1. the supervisor, once, before it starts any worker: ``table = create_shared(data_dir,
   workers=N)`` (a new, empty table; anything counted by an earlier run is gone with it);
2. each worker process, after it was started: ``state = open_shared(data_dir, worker_id=i)``,
   ``0 <= i < N``, one live process per id (another gets :class:`WorkerIdInUse`), the handle
   passed to the listeners and sessions as any SharedState;
3. when the supervisor reaps a dead worker: ``table.release_worker(i)`` (the connections it had
   open are no longer counted), then it may start the replacement, which opens with the same id
   (opening clears a dead predecessor's share too, should the supervisor not have);
4. SIGHUP changes nothing here; the limits are arguments of every call, read at each accept.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from .sharedstate_layout import create_table
from .sharedstate_table import SharedTable, WorkerIdInUse

__all__ = ["LocalState", "SharedState", "SharedTable", "WorkerIdInUse", "create_shared",
           "open_shared", "table_path"]


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


def table_path(data_dir: Path) -> Path:
    """Where the shared table of the server on ``data_dir`` is (the worker id locks and the
    mailbox locks are next to it)."""
    return data_dir / "state" / "shared.table"


def create_shared(data_dir: Path, *, workers: int, connections: int = 65536, clients: int = 16384,
                  failure_ring: int = 32) -> SharedTable:
    """Make a new, empty shared table for ``workers`` worker processes and return the
    supervisor's handle on it (no worker id: it opens no connections, it releases dead
    workers' ones). ``connections``: room for this many (service, client address) pairs with
    connections open at once (keep it well above the services' ``max_connections`` together:
    a pair that finds no room is refused); ``clients``: addresses whose failed logins, and as
    many whose POP3 logins, are remembered (more push out the stalest); ``failure_ring``:
    failures remembered per address (a ``max_failures`` above it blocks at it)."""
    path = table_path(data_dir)
    create_table(path, workers=workers, connections=connections, clients=clients, ring=failure_ring)
    return SharedTable(path, worker_id=None)


def open_shared(data_dir: Path, *, worker_id: int,
                clock: Callable[[], float] = time.time) -> SharedTable:
    """Worker ``worker_id``'s handle on the table :func:`create_shared` made for ``data_dir``;
    ``clock``: wall-clock seconds (a test passes its own, the same to every handle)."""
    return SharedTable(table_path(data_dir), worker_id=worker_id, clock=clock)
