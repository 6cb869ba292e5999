"""Per-client rate limits as a :class:`~taube.policy.pipeline.Check`, like Postfix's anvil
(``smtpd_client_connection_rate_limit``, ``_message_rate_limit``, ``_recipient_rate_limit``).

``[smtp] max_connection_rate``, ``max_message_rate`` and ``max_recipient_rate`` count new
connections, MAIL commands and RCPT commands per client and minute; 0 switches a limit off,
clients in ``trusted_networks`` are never counted. A client is an IPv4 address, or an IPv6 /64:
an end site gets at least a /64 (RFC 6177) and a client may take a new address of it for every
connection, which counted per address would never meet a limit (as greylisting's networks).
Postfix's anvil counted per address until 3.8, which added smtpd_client_ipv6_prefix_length to
count IPv6 clients per network (its default /84 is kinder to providers that put several
customers in one /64; here the /64 matches greylisting and what one site may hold). Over the
limit:

* connect: ``421 4.7.0 Error: too many connections from <ip>`` (and the connection is closed);
* MAIL: ``450 4.7.1 Error: too many messages from <ip>``;
* RCPT: ``450 4.7.1 Error: too many recipients from <ip>``.

The window is anvil's: a fixed 60-second window per client and counter that opens at the first
event counted and closes 60 seconds later; the next event after that opens a new one at zero.
Every attempt counts, refused ones too, as anvil counts them: a client that keeps hammering
stays refused until its window ends. (A sliding window would need a timestamp per event; this
needs one row per client and counter.)

The counters are shared by every process that serves SMTP on one ``data_dir``: one SQLite file,
``<data_dir>/rates.db``, in WAL mode, each process with its own connection. One event is one
``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` statement, atomic in SQLite, so two processes
never lose or double-count an event. The counters are ephemeral, so ``synchronous = OFF``: a
power loss may forget the last minute, which is harmless, and no event waits for the disk.
Its cost, measured with ``bench/policy_state.py`` on the project's 2-core machine while other
work ran on it: about 70 microseconds per event (the statement and its commit), 0.2 to 0.5 ms
with the hop through the thread pool (:data:`WORKERS`) that keeps it off the event loop, and
about 0.25 ms per event when two processes count into the file at once: small beside one SMTP
command's round trip.

If the counters cannot be reached (a locked or broken file), the event is let through and the
fault logged: Postfix's smtpd also goes on without limits when anvil does not answer.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..proto.replies import Reply
from .pipeline import Check, Context, Verdict
from .relay import client_address
from .statedb import StateDB

if TYPE_CHECKING:
    from ..config import SMTPSettings

__all__ = ["DEADLINE", "IPV6_PREFIX", "WINDOW", "Kind", "RateCheck", "RateCounter", "RateLimits"]

log = logging.getLogger("taube.policy.rates")

Kind = Literal["connection", "message", "recipient"]

# Each kind's limit in RateLimits, also the word in its refusal ("too many messages").
_LIMITS: dict[Kind, str] = {"connection": "connections", "message": "messages",
                            "recipient": "recipients"}

WINDOW = 60.0
"""Seconds of one counting window (anvil_rate_time_unit)."""

IPV6_PREFIX = 64
"""The IPv6 network counted as one client (see the module docstring)."""

BUSY_TIMEOUT = 2.0
"""Seconds one event waits for another process's write before it is let through."""

DEADLINE = BUSY_TIMEOUT + 1.0
"""Seconds a session waits for one event to be counted, a wait for a free thread included;
past it the event is let through uncounted and the fault logged."""

PURGE_BATCH = 1000
"""Rows of closed windows removed at most per purge: bounded work, however many clients."""

# Counting is one short statement: two threads keep it off the event loop without letting a
# burst of connections queue many threads on SQLite's one write lock.
WORKERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="taube-rates")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rates (
    kind   TEXT NOT NULL,
    client TEXT NOT NULL,
    start  REAL NOT NULL,
    count  INTEGER NOT NULL,
    PRIMARY KEY (kind, client)
);
CREATE INDEX IF NOT EXISTS rates_start ON rates (start);
"""

# One event, atomically: a new row; or the row's window still open: one more; or closed (or the
# clock went back by more than a window): a new window that starts now with this event. An event
# a little before the window's start counts in it: another process may have opened the window
# with a time read a moment later (each reads the clock before it waits for the file's write
# lock), and starting over then would lose that process's events. SET's right-hand sides all
# see the row as it was.
_HIT = """
INSERT INTO rates (kind, client, start, count) VALUES (?1, ?2, ?3, 1)
ON CONFLICT (kind, client) DO UPDATE SET
    count = CASE WHEN abs(?3 - start) >= ?4 THEN 1 ELSE count + 1 END,
    start = CASE WHEN abs(?3 - start) >= ?4 THEN ?3 ELSE start END
RETURNING count
"""


def _client_key(client_ip: str) -> str:
    """Who is counted: an IPv4 address, or an IPv6 client's /64 (see the module docstring);
    one spelling each (an IPv4-mapped IPv6 address counts as its IPv4 address)."""
    ip = client_address(client_ip)
    if ip is None:
        return client_ip[:256]
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/{IPV6_PREFIX}", strict=False))
    return str(ip)


class RateCounter(StateDB):
    """Events per client and kind in fixed windows, in SQLite (see the module docstring and
    :class:`StateDB`): a second object on the same file (another process) shares the counts."""

    def __init__(self, path: Path, *, window: float = WINDOW,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(path, _SCHEMA, synchronous="OFF", busy_timeout=BUSY_TIMEOUT, clock=clock)
        self.window = float(window)
        self.purge_interval = self.window

    @property
    def purge_batch(self) -> int:  # type: ignore[override]
        """:data:`PURGE_BATCH`, read when used."""
        return PURGE_BATCH

    def hit(self, kind: Kind, client_ip: str) -> int:
        """Count one event now; the events in the client's current window, this one included."""
        with self._lock:
            now = self.clock()
            # fetchall: step the statement to its end, so that its implicit transaction commits
            # now and the write lock is not held until the cursor is collected.
            (row,) = self._connection().execute(
                _HIT, (kind, _client_key(client_ip), now, self.window)).fetchall()
            self._purge_now_and_then(now)
        return int(row[0])

    def count(self, kind: Kind, client_ip: str) -> int:
        """The events in the client's current window (0 when it is closed)."""
        with self._lock:
            row = self._connection().execute("SELECT start, count FROM rates WHERE kind = ? AND client = ?",
                                   (kind, _client_key(client_ip))).fetchone()
            now = self.clock()
        if row is None or abs(now - row[0]) >= self.window:
            return 0
        return int(row[1])

    def _purge(self, now: float) -> int:
        # Closed windows, at most PURGE_BATCH, oldest first through the start index.
        cursor = self._connection().execute(
            "DELETE FROM rates WHERE rowid IN (SELECT rowid FROM rates WHERE start <= ? "
            "ORDER BY start LIMIT ?)", (now - self.window, PURGE_BATCH))
        return cursor.rowcount


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimits:
    """Events per client and minute; 0: no limit (``[smtp] max_*_rate``)."""

    connections: int = 0
    messages: int = 0
    recipients: int = 0

    @classmethod
    def from_settings(cls, smtp: SMTPSettings) -> RateLimits:
        return cls(connections=smtp.max_connection_rate, messages=smtp.max_message_rate,
                   recipients=smtp.max_recipient_rate)

    @property
    def enabled(self) -> bool:
        return bool(self.connections or self.messages or self.recipients)


class RateCheck(Check):
    """The limits at connect, MAIL and RCPT (see the module docstring). ``trusted``: whether an
    address is in ``trusted_networks``. Reads ``ctx.client_ip`` only."""

    name = "rates"

    def __init__(self, limits: RateLimits, counter: RateCounter,
                 trusted: Callable[[str], bool]) -> None:
        self.limits = limits
        self.counter = counter
        self.trusted = trusted

    @classmethod
    def open(cls, data_dir: Path, limits: RateLimits, trusted: Callable[[str], bool], *,
             clock: Callable[[], float] = time.time) -> RateCheck:
        """The check on ``<data_dir>/rates.db``."""
        return cls(limits, RateCounter(Path(data_dir) / "rates.db", clock=clock), trusted)

    def close(self) -> None:
        self.counter.close()

    async def _limit(self, kind: Kind, ctx: Context) -> Verdict:
        """Count this event of ``kind``; the refusal if the client is over its limit."""
        limit = getattr(self.limits, _LIMITS[kind])
        if limit <= 0 or self.trusted(ctx.client_ip):
            return Verdict.cont()
        try:
            async with asyncio.timeout(DEADLINE):
                count = await asyncio.get_running_loop().run_in_executor(
                    WORKERS, self.counter.hit, kind, ctx.client_ip)
        except TimeoutError:
            log.error("rate counters %s: no answer within %g s; %s from %s not counted",
                      self.counter.path, DEADLINE, kind, ctx.client_ip)
            return Verdict.cont()
        except sqlite3.Error as exc:
            log.error("rate counters %s: %s; %s from %s not counted", self.counter.path, exc,
                      kind, ctx.client_ip)
            return Verdict.cont()
        if count <= limit:
            return Verdict.cont()
        code, enhanced = (421, "4.7.0") if kind == "connection" else (450, "4.7.1")
        return Verdict.tempfail(
            Reply(code=code, enhanced=enhanced,
                  text=f"Error: too many {_LIMITS[kind]} from {ctx.client_ip}"),
            f"{kind} rate over {limit}/min")

    async def connect(self, ctx: Context) -> Verdict:
        return await self._limit("connection", ctx)

    async def mail(self, ctx: Context) -> Verdict:
        return await self._limit("message", ctx)

    async def rcpt(self, ctx: Context) -> Verdict:
        return await self._limit("recipient", ctx)
