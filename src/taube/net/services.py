"""What the protocol sessions use, in one object: assembled by the application (``app.py``),
replaced whole on reload, so a connection keeps the settings it started with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..config import Settings
from ..delivery.reports import Reporter
from ..directory.base import Directory
from ..policy.pipeline import Pipeline
from ..policy.relay import RelayPolicy
from ..queue.spool import Spool
from ..sharedstate import SharedState
from ..store.mailbox import MailboxFactory
from .tls import TLSProvider

__all__ = ["TLS_HANDSHAKE_TIMEOUT", "QueueControl", "Services"]

TLS_HANDSHAKE_TIMEOUT = 30.0  # STARTTLS/STLS and implicit TLS


class QueueControl(Protocol):
    """What the SMTP side may ask of the queue runner (ETRN, RFC 1985)."""

    def flush(self, domain: str | None, *, subdomains: bool = False) -> int:
        """Make every pending recipient in ``domain`` (all domains: None; with ``subdomains``
        also those below it) due now and wake the runner; the number of messages concerned."""
        ...

    def wake(self, queue_id: str | None = None) -> None:
        """Look at the queue now: at the entry ``queue_id`` just committed, or all of it.
        Safe from any thread."""
        ...


@dataclass(slots=True)
class Services:
    settings: Settings
    directory: Directory
    relay: RelayPolicy
    spool: Spool
    state: SharedState
    tls: TLSProvider | None
    mailboxes: MailboxFactory  # the maildrops POP3 reads: user address -> mailbox
    runner: QueueControl | None = None  # the queue runner, when one runs in this process
    reporter: Reporter | None = None  # delivery status notifications (local NOTIFY=SUCCESS)
    # The inbound checks; None: the site's own rules alone (policy.local), built per session.
    pipeline: Pipeline | None = None
