"""What the protocol sessions use, in one object: assembled by the application (``app.py``),
replaced whole on reload, so a connection keeps the settings it started with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Protocol

from ..config import Settings
from ..directory.base import Directory
from ..policy.pipeline import Pipeline
from ..policy.relay import RelayPolicy
from ..queue.bounce import RecipientReport, ReturnContent
from ..queue.spool import Spool
from ..sharedstate import SharedState
from ..store.mailbox import MailboxFactory
from .tls import TLSProvider

if TYPE_CHECKING:
    from ..signing.dkim import Signer

__all__ = ["TLS_HANDSHAKE_TIMEOUT", "QueueControl", "Reports", "Services"]

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


class Reports(Protocol):
    """Delivery status notifications (RFC 3464) the SMTP side sends itself: NOTIFY=SUCCESS for
    local delivery. Blocking (file I/O and fsync): called in a worker thread."""

    def send(self, *, to: str, queue_id: str, arrival: float, reports: Sequence[RecipientReport],
             original: BinaryIO, return_content: ReturnContent, envid: str | None,
             notice: str = "dsn") -> str | None:
        """Build the report and commit it; its queue id, or None when ``to`` cannot receive it."""
        ...


@dataclass(slots=True)
class Services:
    """What the sessions share. ``settings`` is the whole configuration these parts were built
    for: ``app.py`` hands each session the sections it owns from it, the sessions never read it."""

    settings: Settings
    directory: Directory
    relay: RelayPolicy
    spool: Spool
    state: SharedState
    tls: TLSProvider | None
    mailboxes: MailboxFactory  # the maildrops POP3 reads: user address -> mailbox
    pipeline: Pipeline  # the inbound checks every SMTP session runs, in order
    runner: QueueControl | None = None  # the queue runner, when one runs in this process
    reporter: Reports | None = None  # delivery status notifications (local NOTIFY=SUCCESS)
    signer: Signer | None = None  # DKIM signing of mail from trusted and authenticated clients
