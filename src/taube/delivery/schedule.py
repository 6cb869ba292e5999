"""When queued recipients are tried, tried again, warned about and given up: pure decisions over
plain values and a given ``now`` (no clock, no files), so that each rule is tested with numbers.

RFC 5321 4.5.4.1 asks for retries spaced out (at least 30 minutes, once the first ones failed)
and for giving up only after days (4-5): ``[queue] backoff`` is the list of waits after each
failed attempt, its last value repeating, and ``[queue] lifetime`` the age after which a
recipient still deferred is bounced (Postfix's ``maximal_queue_lifetime``). ``[queue]
delay_warning`` is the age after which the sender hears, once, that the mail is delayed
(RFC 3464 2.3.3 action "delayed"; Postfix's ``delay_warning_time``).
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass

from ..config import QueueSettings
from ..queue.store import PENDING, QueuedRecipient

__all__ = ["MIN_WAIT", "Due", "Schedule", "due", "merge_forced", "scan_wait"]

# The shortest wait of the runner's loop: a next scan already in the past (a clock step, a slow
# scan) must not turn the loop into a busy one.
MIN_WAIT = 0.05
# A last retry is never scheduled sooner than this after an attempt, even when the lifetime
# ends sooner: the attempt that finds the recipient expired then comes after the lifetime.
MIN_LAST_RETRY = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    """The ``[queue]`` retry schedule, in seconds."""

    backoff: tuple[float, ...]  # waits after the 1st, 2nd, ... failed attempt; the last repeats
    lifetime: float
    delay_warning: float  # 0: never

    @classmethod
    def from_settings(cls, queue: QueueSettings) -> Schedule:
        return cls(backoff=tuple(queue.backoff), lifetime=queue.lifetime,
                   delay_warning=queue.delay_warning)

    def wait_after(self, attempts: int) -> float:
        """The wait after the ``attempts``-th failed attempt (1 for the first)."""
        return self.backoff[min(attempts - 1, len(self.backoff) - 1)]

    def expired(self, received_at: float, now: float) -> bool:
        """The message is as old as the lifetime: a recipient not delivered now is bounced."""
        return now - received_at >= self.lifetime

    def next_attempt(self, received_at: float, now: float, attempts: int) -> float:
        """When a recipient deferred by its ``attempts``-th attempt is tried again: after the
        backoff wait, but not past the lifetime, where one last attempt is made."""
        return min(now + self.wait_after(attempts),
                   max(received_at + self.lifetime, now + MIN_LAST_RETRY))

    def delay_warning_due(self, received_at: float, now: float, warned: bool) -> bool:
        """A deferred recipient's sender is owed the one "delayed" notice now."""
        return self.delay_warning > 0 and not warned and now - received_at >= self.delay_warning


@dataclass(frozen=True, slots=True)
class Due:
    """Which recipients of one message are to be tried now, and when the next of the others is."""

    addresses: tuple[str, ...]  # in envelope order
    next_due: float | None  # the earliest next attempt of those still waiting (None: none waits)


def due(recipients: Iterable[QueuedRecipient], now: float, forced: set[str] | None,
        busy: Container[str] = ()) -> Due:
    """The pending recipients whose next attempt has come, or that ``forced`` names (ETRN, a
    flush: None forces them all); those ``busy`` (being delivered now) are left alone."""
    addresses: list[str] = []
    next_due: float | None = None
    for r in recipients:
        if r.status not in PENDING or r.address in busy:
            continue
        if r.next_attempt <= now or forced is None or r.address in forced:
            addresses.append(r.address)
        elif next_due is None or r.next_attempt < next_due:
            next_due = r.next_attempt
    return Due(tuple(addresses), next_due)


def merge_forced(current: set[str] | None, addresses: set[str] | None) -> set[str] | None:
    """Two requests to make a message's recipients due now as one: ``None`` (all of them)
    absorbs any set, sets add up."""
    if current is None or addresses is None:
        return None
    return current | addresses


def scan_wait(next_scan: float, now: float, interval: float) -> float:
    """How long the runner sleeps before it looks again when nothing wakes it: until the next
    scan, at most ``[queue] scan_interval``, at least :data:`MIN_WAIT`."""
    return max(MIN_WAIT, min(interval, next_scan - now))
