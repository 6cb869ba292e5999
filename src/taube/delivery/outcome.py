"""What one delivery attempt did for a recipient: the value an attempt (:mod:`.attempt`) hands to
the bookkeeping (:mod:`.bookkeeping`), with the RFC 3463 status and the remote reply kept for the
DSN (RFC 3464 2.3.4 Status, 2.3.6 Diagnostic-Code, 2.3.5 Remote-MTA)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Outcome", "RouteFailure", "as_temporary"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What one attempt did for one recipient."""

    kind: Literal["sent", "deferred", "bounced"]
    status: str  # RFC 3463
    text: str  # for the log and last_error: the reply or the problem
    diagnostic: str | None  # DSN Diagnostic-Code, "smtp; 550 5.1.1 ..." (None: text as X-Taube)
    remote_mta: str | None
    relay: str  # "mx.example.org[192.0.2.1]:25" or "none"


class RouteFailure(Exception):
    """No transaction was possible for a destination now: DNS or every host failed. Every
    recipient waiting for it shares :attr:`outcome`."""

    def __init__(self, *, temporary: bool, status: str, text: str, diagnostic: str | None = None,
                 remote_mta: str | None = None, relay: str = "none") -> None:
        super().__init__(text)
        self.outcome = Outcome(kind="deferred" if temporary else "bounced", status=status,
                               text=text, diagnostic=diagnostic, remote_mta=remote_mta, relay=relay)


def as_temporary(status: str) -> str:
    """A status for a failure that is retried: a 5.x.x of a whole attempt (a greeting, a lost
    connection) becomes 4.x.x, as the recipient is deferred, not bounced."""
    return "4" + status[1:] if status.startswith("5") else status
