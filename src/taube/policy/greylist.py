"""Greylisting as a :class:`~taube.policy.pipeline.Check`: a sender that has not been seen
before is asked to come back later, as Postgrey and Postfix's policy servers do.

The key is the triple (client network, envelope sender, recipient): the client's IPv4 /24 or
IPv6 /64, since large senders retry from another address of the same farm; the sender and the
recipient lower-cased. A triple seen for the first time gets ``451 4.7.1 Greylisted, try again
later`` at RCPT and its first sighting is recorded; a retry before ``greylist_delay`` has passed
gets the same answer without moving the first sighting; a retry after the delay passes, and the
triple is then remembered, each use renewing it, until it has not been seen for
``greylist_expiry``. A triple that never passed is forgotten after :data:`RETRY_WINDOW` (or the
expiry, if shorter), as Postgrey's ``--retry-window``: the many one-shot spam attempts do not
fill the database for 35 days.

Bounces (the null sender) are greylisted like any other mail, as Postgrey does: a real MTA
retries its bounces, spam with a forged ``<>`` does not.

Greylisting answers at RCPT only, before DATA: the message is transferred once, for the
recipients that passed, and the greylisted ones are retried by the client later. Nothing is
ever stored twice because of it.

Exempt: clients in ``trusted_networks``, authenticated clients and clients on a DNS allow list
(:func:`taube.policy.dnsbl.dnswl_listed`).

The state is SQLite in WAL mode (``<data_dir>/greylist.db``): it survives restarts, and every
process that serves SMTP opens its own connection to the same file; each decision is one
``BEGIN IMMEDIATE`` transaction, so concurrent processes neither corrupt nor double-count a
triple (the second waits up to :data:`BUSY_TIMEOUT`). Look-ups run in this module's own small
thread pool (:data:`WORKERS`), off the event loop, as :mod:`taube.policy.local` does for the
directory. The clock is the wall clock (the state outlives the process); tests inject their own. When the
file cannot be opened or written (data_dir read-only or full), the client is let through and the
fault logged: greylisting is a filter, and deferring every sender until the file is fixed would
lose mail.
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
from typing import Literal

from ..proto.replies import Reply
from .dnsbl import dnswl_listed
from .pipeline import Check, Context, Verdict
from .relay import client_address
from .statedb import StateDB

__all__ = ["BUSY_TIMEOUT", "DEADLINE", "GREYLISTED", "RETRY_WINDOW", "Decision", "Greylist", "GreylistDB",
           "client_network"]

log = logging.getLogger("taube.policy.greylist")

GREYLISTED = Reply(code=451, enhanced="4.7.1", text="Greylisted, try again later")

RETRY_WINDOW = 2 * 86400.0
"""How long a triple that never passed is kept (Postgrey's ``--retry-window`` default)."""

BUSY_TIMEOUT = 5.0
"""Seconds one decision waits for another process's write (SQLite busy_timeout)."""

DEADLINE = BUSY_TIMEOUT + 1.0
"""Seconds a session waits for its decision, a wait for a free thread included; past it the
client is let through (fail open) and the fault logged."""

PURGE_INTERVAL = 600.0
"""Seconds between two purges of forgotten triples by one process."""

PURGE_BATCH = 1000
"""Triples removed by one purge at most: its cost stays bounded however large the table."""

MAX_FIELD = 512
"""Octets of an address kept in the key: more than RFC 5321 allows a path (256, 4.5.3.1.3)."""

# Directory-like look-ups: quick, and a handful of threads suffice even while one waits on
# another process's write lock.
WORKERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="taube-greylist")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS triples (
    network    TEXT NOT NULL,
    sender     TEXT NOT NULL,
    recipient  TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen  REAL NOT NULL,
    passed     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (network, sender, recipient)
);
CREATE INDEX IF NOT EXISTS triples_last_seen ON triples (last_seen);
"""


def client_network(client_ip: str) -> str:
    """The greylisting network of an address: IPv4 /24, IPv6 /64 (an IPv4-mapped address is
    its IPv4 address); anything else is kept as given."""
    ip = client_address(client_ip)
    if ip is None:
        return client_ip[:MAX_FIELD]
    prefix = 24 if ip.version == 4 else 64
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


@dataclass(frozen=True, slots=True)
class Decision:
    """One triple's fate: ``new`` (first sighting, greylisted), ``early`` (retried before the
    delay, greylisted), ``passed``. ``first_seen`` is when the triple was first seen (this
    time, for a new one); ``wait`` the seconds still to wait (0 when passed)."""

    outcome: Literal["new", "early", "passed"]
    first_seen: float
    wait: float = 0.0

    @property
    def greylisted(self) -> bool:
        return self.outcome != "passed"


class GreylistDB(StateDB):
    """The triples in SQLite (see the module docstring and :class:`StateDB`)."""

    purge_interval = PURGE_INTERVAL

    @property
    def purge_batch(self) -> int:  # type: ignore[override]
        """:data:`PURGE_BATCH`, read when used."""
        return PURGE_BATCH

    def __init__(self, path: Path, *, delay: float, expiry: float,
                 clock: Callable[[], float] = time.time) -> None:
        # NORMAL: a power loss may forget the last decisions, and a forgotten triple only means
        # one more 451.
        super().__init__(path, _SCHEMA, synchronous="NORMAL", busy_timeout=BUSY_TIMEOUT,
                         clock=clock)
        self.delay = float(delay)
        self.expiry = float(expiry)

    def check(self, network: str, sender: str, recipient: str) -> Decision:
        """Record this attempt of the triple and decide (one transaction)."""
        key = (network[:MAX_FIELD], sender.lower()[:MAX_FIELD], recipient.lower()[:MAX_FIELD])
        with self._lock:
            now = self.clock()
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")  # the write lock first: no two processes both insert
            try:
                row = db.execute("SELECT first_seen, last_seen, passed FROM triples "
                                 "WHERE network = ? AND sender = ? AND recipient = ?",
                                 key).fetchone()
                decision = self._decide(row, now)
                if decision.outcome == "new":
                    db.execute("INSERT OR REPLACE INTO triples VALUES (?, ?, ?, ?, ?, 0)",
                               (*key, now, now))
                else:
                    db.execute("UPDATE triples SET last_seen = ?, passed = ? WHERE network = ? "
                               "AND sender = ? AND recipient = ?",
                               (now, int(decision.outcome == "passed"), *key))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._purge_now_and_then(now)
        return decision

    def _decide(self, row: tuple[float, float, int] | None, now: float) -> Decision:
        if row is not None:
            first_seen, last_seen, passed = row
            kept = self.expiry if passed else min(self.expiry, RETRY_WINDOW)
            # A clock that went back (the wall clock) must not make a triple immortal.
            if now - last_seen <= kept and now >= first_seen:
                if passed or now - first_seen >= self.delay:
                    return Decision("passed", first_seen)
                return Decision("early", first_seen, self.delay - (now - first_seen))
        return Decision("new", now, self.delay)

    def _purge(self, now: float) -> int:
        # Forgotten triples, at most PURGE_BATCH, oldest first through the last_seen index.
        cursor = self._connection().execute(
            "DELETE FROM triples WHERE rowid IN (SELECT rowid FROM triples WHERE last_seen < ? "
            "AND (passed = 0 OR last_seen < ?) ORDER BY last_seen LIMIT ?)",
            (now - min(self.expiry, RETRY_WINDOW), now - self.expiry, PURGE_BATCH))
        return cursor.rowcount

    def count(self) -> int:
        """The triples stored."""
        with self._lock:
            return int(self._connection().execute("SELECT count(*) FROM triples").fetchone()[0])


class Greylist(Check):
    """The greylisting check: ``rcpt`` answers ``451 4.7.1`` for a triple not yet passed.

    ``db``: the state (:meth:`open` makes it from the settings); ``trusted``: whether an
    address is in ``trusted_networks``. Reads ``ctx.client_ip``, ``ctx.user``,
    ``ctx.tx.sender``, ``ctx.tx.rcpt.address`` and the DNSWL fact in ``ctx.notes``."""

    name = "greylist"

    def __init__(self, db: GreylistDB, trusted: Callable[[str], bool]) -> None:
        self.db = db
        self.trusted = trusted

    @classmethod
    def open(cls, data_dir: Path, *, delay: float, expiry: float, trusted: Callable[[str], bool],
             clock: Callable[[], float] = time.time) -> Greylist:
        """The check on ``<data_dir>/greylist.db`` (``[checks] greylist_delay``, ``_expiry``)."""
        return cls(GreylistDB(Path(data_dir) / "greylist.db", delay=delay, expiry=expiry,
                              clock=clock), trusted)

    def close(self) -> None:
        self.db.close()

    async def rcpt(self, ctx: Context) -> Verdict:
        rcpt, sender = ctx.tx.rcpt, ctx.tx.sender
        if rcpt is None or sender is None:
            return Verdict.cont()
        if ctx.user is not None or self.trusted(ctx.client_ip) or await dnswl_listed(ctx):
            return Verdict.cont()
        network = client_network(ctx.client_ip)
        try:
            async with asyncio.timeout(DEADLINE):
                decision = await asyncio.get_running_loop().run_in_executor(
                    WORKERS, self.db.check, network, sender, rcpt.address)
        except TimeoutError:
            log.error("greylist database %s: no answer within %g s; <%s> -> <%s> from %s not "
                      "greylisted", self.db.path, DEADLINE, sender, rcpt.address, ctx.client_ip)
            return Verdict.cont()
        except sqlite3.Error as exc:
            # Fail open: a broken or unwritable file (data_dir read-only or full) must not
            # defer all mail from outside until senders give up; greylisting is a filter.
            log.error("greylist database %s: %s; <%s> -> <%s> from %s not greylisted",
                      self.db.path, exc, sender, rcpt.address, ctx.client_ip)
            return Verdict.cont()
        if decision.greylisted:
            return Verdict.tempfail(GREYLISTED, f"greylisted ({decision.outcome}) {network} "
                                                f"<{sender}> -> <{rcpt.address}>, retry in "
                                                f"{decision.wait:.0f}s")
        return Verdict.cont()
